"""``sppdet data``: bring a dataset into VOC layout (import), look it over (check), see it (show)."""

from __future__ import annotations

import click
from rich.table import Table

from cli.common import library_errors, plain, progress_bar, quiet_option, stderr_console, stdout_console
from sppdet.data.importers import FORMATS
from sppdet.errors import ConfigError


def _parse_ratios(ctx, param, value: str | None):
    from sppdet.data.stratify import parse_ratios
    if value is None:
        return None
    try:
        return parse_ratios(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix(f"--split-ratios {value!r}: ")) from None


def _line(text: str) -> None:
    stdout_console.print(text, markup=False, highlight=False, soft_wrap=True)


@click.group("data")
def data():
    """Import, check and show datasets in Pascal VOC layout.

    import converts COCO, YOLO, labelme or VOC-beside-the-image annotations into the layout
    every other command reads; check reports per-class statistics, broken files and what
    sppdet train would choose for the data; show draws the ground truth on the images.

    Example: sppdet data import coco/instances.json data/mine --format coco && sppdet data check data/mine
    """


@data.command("import")
@click.argument("src", type=click.Path(exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="coco: an instances JSON file; yolo: a folder with images/ and labels/ and data.yaml "
                   "or classes.txt; labelme: a folder of labelme JSON files; voc-flat: a folder of VOC "
                   "XML files each beside its image.")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="coco only: the folder of the images (default: the JSON's folder, its images/, "
                   "../images or ../<name> for annotations/instances_<name>.json, whichever holds them).")
@click.option("--split-ratios", default=None, callback=_parse_ratios, metavar="TRAIN,VAL,TEST",
              help="Shares of train, val and test, stratified by class [default: 0.6,0.2,0.2]. Giving "
                   "them also replaces a split the source ships (train/val/test folders).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the split; the same data and seed give the same split.")
@click.option("--copy", is_flag=True, help="Copy the images (default: hard links, copies across file systems).")
@click.option("--resplit", is_flag=True, help="Ignore the split the source ships and stratify with the ratios.")
@quiet_option
def import_command(src, out, fmt, images_dir, split_ratios, seed, copy, resplit, quiet):
    """Convert a COCO, YOLO, labelme or VOC-flat dataset SRC into a new VOC-layout dataset OUT.

    Writes OUT/JPEGImages (hard links to the images, --copy to copy), OUT/Annotations (VOC XML;
    COCO's iscrowd becomes difficult), and OUT/ImageSets/Main/train, val, test and trainval:
    the source's own train/val/test folders when it has them, else a split stratified by class.
    Image ids are the file names made safe; boxes are clipped to the image and empty ones
    dropped (both counted). OUT must be new or empty; a failure leaves nothing behind.

    Example: sppdet data import yolo-set data/mine --format yolo && sppdet train --data data/mine
    """
    from sppdet.data.voc_import import import_dataset
    with library_errors():
        with progress_bar(None, "import", quiet=quiet) as advance:
            summary = import_dataset(fmt, src, out, ratios=split_ratios, seed=seed, copy=copy,
                                     images_dir=images_dir, resplit=resplit, progress=advance)
    table = Table(title=f"sppdet data import ({fmt}): {summary.images} images")
    for column in ("class", "objects", "difficult"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, count in summary.objects.items():
        table.add_row(plain(name), str(count), str(summary.difficult.get(name, 0)))
    table.add_row("all", str(sum(summary.objects.values())), str(sum(summary.difficult.values())), style="bold")
    stdout_console.print(table)
    _line("splits: " + ", ".join(f"{name} {count}" for name, count in summary.splits.items())
          + f" ({summary.split_rule})")
    notes = [f"{summary.negatives} image(s) without objects", f"{summary.clipped} box(es) clipped to the image",
             f"{summary.dropped} empty box(es) dropped", f"{summary.converted} image(s) converted to JPEG",
             f"{summary.copied} image(s) copied, {summary.images - summary.copied} hard-linked"]
    notes += [f"skipped {count} {reason}" for reason, count in summary.skipped.items()]
    _line("; ".join(notes))
    _line(f"dataset: {summary.root}")
    _line(f"next: sppdet data check {summary.root}")


def _train_rows(root) -> tuple[str, list[tuple[str, str, str]]]:
    """(the split line, rows of the data-driven settings) ``sppdet train`` would use, or
    (the reason it would refuse the dataset, [])."""
    from sppdet.errors import SppdetError
    from sppdet.training.preview import preview_train_settings
    try:
        splits, settings = preview_train_settings(root)
    except SppdetError as exc:
        return f"sppdet train would refuse this dataset: {exc}", []
    rows = [row for row in settings.rows() if row[2].startswith("data") or row[0] == "extract.target"]
    return splits.describe(), rows


@data.command("check")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the report (and what sppdet train would choose) to this JSON file.")
@quiet_option
def check(dataset, json_file, quiet):
    """Report what a VOC-layout dataset holds and what is wrong with it; exit 1 on errors.

    Per class: objects, images, object side (sqrt(w*h)) percentiles 10/50/90, tiny (< 16 px),
    truncated and difficult objects. Errors: unreadable or missing files, images that cannot be
    decoded or differ in size from their annotation, boxes outside the image or without area.
    Notes: duplicate images (same bytes), images without objects. Last, the splits and the
    data-driven settings sppdet train would choose (proposal size, pretraining epochs, scales).

    Example: sppdet data check data/mine --json check.json
    """
    from sppdet.data.check import check_dataset
    from sppdet.fileio import atomic_write_json, to_jsonable
    with library_errors():
        with progress_bar(None, "check", quiet=quiet) as advance:
            report = check_dataset(dataset, progress=advance)
        split_line, rows = _train_rows(report.root)
        if json_file:
            atomic_write_json(json_file, {
                "dataset": {**to_jsonable(report), "errors": report.errors},
                "train": {"splits": split_line, "settings": {name: {"value": value, "from": source}
                                                             for name, value, source in rows}}})
    classes = Table(title=f"sppdet data check: {report.images} images "
                          f"({', '.join(f'{k} {v}' for k, v in report.splits.items()) or 'no split files'})")
    for column in ("class", "objects", "images", "side p10", "p50", "p90", "tiny", "truncated", "difficult"):
        classes.add_column(column, justify="left" if column == "class" else "right")
    for entry in report.classes:
        classes.add_row(plain(entry.name), str(entry.objects), str(entry.images), f"{entry.side_p10:.0f}",
                        f"{entry.side_p50:.0f}", f"{entry.side_p90:.0f}", str(entry.tiny), str(entry.truncated),
                        str(entry.difficult))
    stdout_console.print(classes)
    issues = Table(title="issues")
    for column in ("issue", "count", "first"):
        issues.add_column(column, justify="right" if column == "count" else "left")
    for kind, problems in (("unreadable files", report.unreadable_files), ("missing files", report.missing),
                           ("corrupt images", report.corrupt), ("size mismatches", report.size_mismatch),
                           ("boxes outside the image", report.outside), ("boxes without area", report.empty_boxes)):
        issues.add_row(f"error: {kind}" if problems else kind, str(len(problems)),
                       plain(problems[0].message) if problems else "",
                       style="red" if problems else None)
    issues.add_row("duplicate images (same bytes)", str(len(report.duplicates)),
                   plain(", ".join(report.duplicates[0])) if report.duplicates else "",
                   style="yellow" if report.duplicates else None)
    issues.add_row("images without objects", str(len(report.without_objects)),
                   plain(report.without_objects[0]) if report.without_objects else "")
    stdout_console.print(issues)
    train = Table(title="sppdet train would choose")
    for column in ("setting", "value", "from"):
        train.add_column(column)
    for name, value, source in rows:
        train.add_row(plain(name), plain(value), plain(source))
    if rows:
        stdout_console.print(train)
    _line(split_line)
    if report.errors:
        stderr_console.print(f"error: {report.errors} problem(s) found in {report.root}; the table above names "
                             "the first of each kind" + (f", {json_file} lists them all" if json_file else ""),
                             markup=False, highlight=False, soft_wrap=True)
        raise click.exceptions.Exit(1)


@data.command("show")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for the drawn images.")
@click.option("--split", default="trainval", show_default=True, help="Split to draw (ImageSets/Main/<split>.txt).")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Draw the first N images of the split (0: all).")
@quiet_option
def show(dataset, out, split, limit, quiet):
    """Draw the ground-truth boxes and class names of a split's images into a folder.

    One JPEG per image, named after its id; each class keeps one colour, difficult objects are
    dashed and labelled (difficult).

    Example: sppdet data show data/mine --out gt-images --limit 50
    """
    from sppdet.data.voc import VocDataset
    from sppdet.vis.ground_truth import write_ground_truth
    with library_errors():
        voc = VocDataset(dataset, split)
        count = min(limit, len(voc)) if limit else len(voc)
        with progress_bar(count, f"show {split}", quiet=quiet) as advance:
            written = write_ground_truth(voc, out, limit=limit, progress=advance)
    _line(f"wrote {len(written)} image(s) to {out}")
