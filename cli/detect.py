"""``sppdet detect``: the trained detector on new images: annotated copies, COCO JSON, tables.

The detector comes from ``--workdir`` or from a ``--model`` file (``sppdet export``), never both.
With ``--model``, ``--score-threshold``, ``--nms``, ``--top-k`` and ``--tta`` default to the settings
saved in the file; with ``--workdir``, to their listed defaults and the views ``sppdet train`` chose.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource
from rich.table import Table
from rich.text import Text

from cli.common import (check_executor_options, device_option, executor_option, library_errors, method_option,
                        progress_bar, quiet_option, stderr_console, stdout_console, tta_option, workdir_option)
from sppdet.config import DEFAULT_SCORE_THRESHOLD, DetectConfig
from sppdet.workdir.methods import DEFAULT_METHOD
from sppdet.workdir.records import recorded_views
from sppdet.workdir.store import WorkDir

if TYPE_CHECKING:
    from sppdet.stages.detect import ImageResult

ROWS_PER_IMAGE = 10


def _table(result: ImageResult, classes: tuple[str, ...]) -> Table:
    table = Table()
    table.add_column("class")
    table.add_column("score", justify="right")
    table.add_column("box (x1, y1, x2, y2)", justify="right")
    for box, score, label in list(zip(result.boxes, result.scores, result.labels))[:ROWS_PER_IMAGE]:
        table.add_row(Text(classes[label - 1]), f"{score:.3f}", ", ".join(f"{v:.1f}" for v in box))
    if len(result.scores) > ROWS_PER_IMAGE:
        table.add_row(f"... {len(result.scores) - ROWS_PER_IMAGE} more", "", "")
    return table


@click.command("detect")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE|DIR|GLOB|@LIST...")
@workdir_option
@click.option("--model", "model_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Use this .sppdet file (sppdet export) instead of a work directory; its saved "
                   "settings are the defaults. Nothing is cached.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the annotated images (default: WORKDIR/detections, or ./detections with --model).")
@click.option("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD, show_default=True,
              help="Keep (draw and write) detections scoring at least this; 0 is the SVMs' "
                   "decision boundary, -1 keeps the low scores AP evaluation wants.")
@click.option("--nms", type=click.FloatRange(0.0, 1.0), default=0.3, show_default=True,
              help="Per-class NMS IoU threshold (paper: 0.3).")
@click.option("--top-k", type=click.IntRange(min=1), default=100, show_default=True,
              help="Detections kept per class per image (paper: 100).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="COCO-style results file (default: OUT/detections.json).")
@click.option("--save-txt", is_flag=True,
              help="Also write YOLO label files with scores: OUT/labels/<image>.txt.")
@click.option("--save-xml", is_flag=True,
              help="Also write Pascal VOC XML files (labelling tools open them): OUT/xml/<image>.xml.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Also write every detection to this CSV (image,class,score,x1,y1,x2,y2).")
@click.option("--classes", "keep_classes", default=None, metavar="NAME[,NAME...]",
              help="Keep only these classes' detections (default: all).")
@tta_option("Test-time augmentation: average each window's SVM scores and box deltas over the "
            "image and these views of it (one more conv pass per view and new image).")
@method_option
@device_option
@executor_option
@quiet_option
@click.pass_context
def detect(ctx, inputs, workdir, model_file, out_dir, score_threshold, nms, top_k, json_path, save_txt, save_xml,
           csv_path, keep_classes, tta, method, device, executor, ray_address, quiet):
    """Detect objects in new images with the work directory's trained detector.

    IMAGE|DIR|GLOB|@LIST: image files, folders (their images), quoted patterns such as
    "photos/**/*.jpg", or @images.txt: a file listing any of those, one per line (relative to
    its folder; # starts a comment). Proposals and conv features are cached in the work directory, so running
    again on the same images is fast. Writes an annotated copy of each image into OUT and every
    detection to a COCO-style JSON (image_id = file stem, bbox = [x, y, w, h] in 0-based pixels).
    An unreadable image is reported and skipped (exit code 1). --model runs a file written by
    sppdet export instead, with no work directory. --executor ray detects batches of images as
    tasks on a Ray cluster (for large folders).

    Example: sppdet detect photos/*.jpg --out detections/ --score-threshold 0.5
    """
    from sppdet.stages.detect import ImageDetector, detect_files, expand_inputs
    check_executor_options(executor, ray_address)
    given = {name for name in ("workdir", "score_threshold", "nms", "top_k", "method")
             if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    if model_file and "workdir" in given:
        raise click.UsageError("--model and --workdir: give one; a model file needs no work directory")
    out = Path(out_dir) if out_dir else (Path("detections") if model_file else WorkDir(workdir).root / "detections")
    json_file = Path(json_path) if json_path else out / "detections.json"
    with library_errors():
        if model_file:
            from sppdet.workdir.export import read_model
            source = read_model(model_file)
            saved = source.defaults
            config = DetectConfig(nms=nms if "nms" in given else saved.nms,
                                  top_k=top_k if "top_k" in given else saved.top_k,
                                  score_threshold=score_threshold if "score_threshold" in given
                                  else saved.score_threshold, tta=saved.tta if tta is None else tta)
            method = method if "method" in given else None
        else:
            source = workdir
            if tta is None:
                tta = recorded_views(WorkDir(workdir)) if method == DEFAULT_METHOD else ()
            config = DetectConfig(nms=nms, top_k=top_k, score_threshold=score_threshold, tta=tta)
        paths = expand_inputs(inputs)
        detector = ImageDetector(source, config, device, method)
        with progress_bar(len(paths), "detect", quiet=quiet) as advance:
            run = detect_files(detector, paths, out, json_file, advance,
                               keep_classes=[c.strip() for c in keep_classes.split(",") if c.strip()]
                               if keep_classes else None,
                               save_txt=save_txt, save_xml=save_xml, csv_path=csv_path,
                               executor=executor, ray_address=ray_address)
    for result in run.results:
        stdout_console.print(f"{result.path}: {len(result.scores)} detections", markup=False,
                             highlight=False, soft_wrap=True)
        if len(result.scores):
            stdout_console.print(_table(result, run.classes))
    for error in run.errors:
        stderr_console.print(f"Error: {error.message}", markup=False, highlight=False, soft_wrap=True)
    per_image = run.seconds_per_image or 0.0
    stdout_console.print(
        f"{len(run.results)} of {len(paths)} images in {run.seconds:.2f} s ({per_image:.3f} s per image, "
        f"{run.computed} computed, {len(run.results) - run.computed} from the cache); annotated "
        f"images: {out}; JSON: {json_file}", markup=False, highlight=False, soft_wrap=True)
    if run.errors:
        ctx.exit(1)
