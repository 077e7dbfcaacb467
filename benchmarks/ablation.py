"""Accuracy ablations on the demo dataset: the paper's table for SPP 1 scale, SPP 5 scales and R-CNN,
the pyramid levels, and the proposal recall (issue 6 section 3).

Columns (VOC07 11-point mAP on the demo's test split, from ``sppdet eval --json``):
    pool5      SVMs on the pooled conv5 windows (``train-svm --layer pool5``)
    fc7        SVMs on fc7 of the pretrained head, not fine-tuned (``finetune --epochs 0``)
    ftfc7      SVMs on fc7 of the fine-tuned head (the demo's ``finetune``, ``train-svm --layer fc7``)
    ftfc7 bb   the same plus box regression (``train-bbox``); the other columns use ``--no-bbox-reg``
Rows (``--methods``):
    spp_1      SPP-net at one scale, ``--scale`` (default 448, within the demo's scales)
    spp_demo   SPP-net at the demo's own scales (272,384,544,768,1088), when they are not that one scale
    spp_5      SPP-net at five scales: the paper's 480:576:688:864:1200 with 688 mapped to ``--scale``
    rcnn       R-CNN (``--method rcnn``, below)
then pool5 SVMs on the spp_1 features with pyramid levels {1,2,3,6} (the spp_1 pool5 cell), {6}
and {1} (``train-svm --levels``); and the recall of the cached proposals of both splits at IoU
0.5 and 0.7 for the first 50, 100, 200 and all proposals of each image
(``sppdet.models.selective_search.proposal_recall``). Why 448 for one scale and not 896: five scales around 896
reach 1,563 px and would cost ~4x the conv time (minutes on 2 cores); around 448 they span
313-781, the paper's 1:2.5 range.

How it runs: every row is a ``sppdet`` command, invoked in this process through the click group
(``cli.main.cli``, exactly what the console script runs, without a 6 s torch import per command),
on the demo's work directory, so every cache is shared and each setting gets its own hashed folder.
The demo (``benchmarks/demo.py``) runs first when the work directory holds no trained detector.
The stage options come from the demo itself (its stage list: backbone, scales, SVM layer, ...),
so the ablation follows any change there, except two that are not the paper's recipes and are left
out of every row: the SVMs' ``--augment-positives`` (which R-CNN's cached vectors could not follow)
and the test-time views (``--tta``). Each command rewrites its stage's record in
``config.json``, so rows run one after another and each mAP is read right after its own ``eval``.
Last, the demo's own extract, finetune, train-svm and train-bbox run again (cache hits) and its
eval is repeated: the work directory is left as the demo left it, and the JSON says whether that
mAP equals the demo's (``matches_demo``).

R-CNN setting: crops of the pretrained trunk's largest input size (``sppdet pretrain`` trains the
trunk on warped crops of each of its ``sizes`` in turn, with R-CNN's 16 px of context at 224 scaled
to it), which is the paper's R-CNN: windows warped to the network's pretraining input (224, the
larger of the paper's multi-size pair 224 / 180) with 16 px of context. Not the smaller size: on
the demo's val split the larger crop scored R-CNN higher, and the baseline should be its best.
``--rcnn-crop`` overrides it. Every proposal is warped, as in the paper; no cap.

Deviations from the paper, stated in the output: a tiny trunk trained from scratch on the demo's
training split instead of ImageNet ZF-5; the multi-scale scale choice uses the features' target,
96 px on a side for a trunk pretrained on 64 and 96 px crops (1.5 x its main crop side,
``sppdet.stages.extract``), not the paper's 224 px, the side of its ImageNet crops.

``--split val`` scores every row on the validation split instead, SVMs and box regressors trained
on the train split: the numbers to choose changes by (issue 20), so that the test rows are read once.

Usage: python benchmarks/ablation.py [--workdir sppdet-work] [--images 400] [--json FILE] [--split test|val]
                                     [--methods spp_1,spp_demo,spp_5,rcnn] [--scale N] [--rcnn-crop N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

import demo
import report_text
from cli.main import cli
from sppdet.data.voc import VocDataset
from sppdet.workdir.caches import load_proposals, proposals_dir
from sppdet.models.selective_search import proposal_recall
from sppdet.models.crops import CONTEXT, CROP_SIZE
from sppdet.fileio import atomic_write_text
from sppdet.workdir.store import WorkDir
from sppdet.stages.train_svm import STAGE as SVM_STAGE

METHODS = report_text.METHODS
PAPER_SCALES = (480, 576, 688, 864, 1200)
ONE_SCALE = 448  # px, the spp_1 row's scale and the centre of the spp_5 row's five
PAPER_SCALE = 688
LEVEL_ROWS = ((1, 2, 3, 6), (6,), (1,))
TOP_N = (50, 100, 200, None)  # None: every cached proposal
RECALL_IOU = (0.5, 0.7)


def option_value(argv: list[str], name: str) -> str | None:
    """The value after ``name`` in ``argv``, or None."""
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def with_option(argv: list[str], name: str, value: str) -> list[str]:
    """``argv`` with ``name value`` replaced, or appended when absent."""
    if name in argv[:-1]:
        at = argv.index(name)
        return [*argv[:at + 1], value, *argv[at + 2:]]
    return [*argv, name, value]


def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name`` and its value."""
    if name not in argv[:-1]:
        return list(argv)
    at = argv.index(name)
    return [*argv[:at], *argv[at + 2:]]


def five_scales(scale: int) -> tuple[int, ...]:
    """The paper's five scales with 688 mapped to ``scale``: round(scale * s / 688)."""
    return tuple(int(round(scale * s / PAPER_SCALE)) for s in PAPER_SCALES)


def rcnn_crop(work: WorkDir, override: int | None) -> tuple[int, int]:
    """(crop side, context px) for R-CNN: ``override``, else the pretrained trunk's crop size
    (the largest of its record's ``sizes``), else R-CNN's 224; context 16 px at 224, scaled to the
    crop."""
    config = work.config().get("stages", {}).get("pretrain", {}).get("config", {})
    size = override or int(max(config.get("sizes") or [CROP_SIZE]))
    return size, int(round(config.get("context", CONTEXT) * size / CROP_SIZE))


class Runner:
    """Runs ``sppdet`` commands in this process on one work directory and logs each one."""

    def __init__(self, work: Path, label: str):
        self.work, self.label = work, label
        self.log: list[dict] = []
        os.environ["SPPDET_WORKDIR"] = str(work)
        (work / "ablation").mkdir(parents=True, exist_ok=True)

    def __call__(self, argv: list[str]) -> None:
        line = ("sppdet " + " ".join(argv)).replace(str(self.work), self.label)
        print(f"\n== {line}", flush=True)
        start = time.perf_counter()
        try:
            code = cli.main(args=[*argv, "--quiet"], prog_name="sppdet", standalone_mode=False)
        except click.ClickException as exc:
            sys.exit(f"ablation: `{line}` failed: {exc.format_message()}")
        if code:
            sys.exit(f"ablation: `{line}` exited with {code}")
        self.log.append({"command": line, "seconds": round(time.perf_counter() - start, 2)})

    def evaluate(self, name: str, method: str, bbox_reg: bool, split: str = "test") -> float:
        """Run ``sppdet eval`` on ``split``; its mAP."""
        path = self.work / "ablation" / f"{name}.json"
        self(["eval", "--split", split, "--json", str(path), "--method", method,
              *([] if bbox_reg else ["--no-bbox-reg"])])
        return float(json.loads(path.read_text())["mAP"])


def demo_stage(name: str, work: Path) -> list[str]:
    """The demo's argument list for stage ``name`` (its own options, so the ablation follows it)."""
    return dict(demo.stages(work, work / "synth", 0))[name]


#: Scored split -> the split the SVMs and box regressors train on (fine-tuning always uses the
#: demo's own, the train split).
TRAIN_SPLIT = {"test": "trainval", "val": "train"}


def method_rows(run: Runner, key: str, extract: list[str], levels_rows: bool, split: str = "test") -> dict:
    """The four columns of one row (``key``: spp_1, spp_5 or rcnn, whose features ``extract``
    computes) scored on ``split`` ("test", or "val" with SVMs trained on train), and the pyramid
    rows when ``levels_rows``."""
    method = "rcnn" if key == "rcnn" else "spp"
    flag = ["--method", "rcnn"] if method == "rcnn" else []
    train_split = TRAIN_SPLIT[split]
    for each in (train_split, split):
        run(with_option(extract, "--split", each))
    finetune = [*demo_stage("finetune", run.work), *flag]
    svm = with_option(without_option([*demo_stage("train-svm", run.work), *flag], "--augment-positives"),
                      "--layer", "fc7")
    svm = with_option(svm, "--split", train_split)
    pool5 = with_option(svm, "--layer", "pool5")
    suffix = "" if split == "test" else f"-{split}"
    rows, levels = {}, {}
    run(pool5)
    rows["pool5"] = run.evaluate(f"{key}-pool5{suffix}", method, False, split)
    if levels_rows:
        levels[",".join(map(str, LEVEL_ROWS[0]))] = rows["pool5"]
        for chosen in LEVEL_ROWS[1:]:
            name = ",".join(map(str, chosen))
            run(with_option(pool5, "--levels", name))
            levels[name] = run.evaluate(f"{key}-pool5-levels{name}{suffix}", method, False, split)
    run(with_option(finetune, "--epochs", "0"))
    run(svm)
    rows["fc7"] = run.evaluate(f"{key}-fc7{suffix}", method, False, split)
    run(finetune)
    run(svm)
    rows["ftfc7"] = run.evaluate(f"{key}-ftfc7{suffix}", method, False, split)
    run(with_option([*demo_stage("train-bbox", run.work), *flag], "--split", train_split))
    rows["ftfc7 bb"] = run.evaluate(f"{key}-ftfc7-bb{suffix}", method, True, split)
    return {"mAP": rows, "levels": levels}


def recall_table(work: WorkDir, splits: tuple[str, str]) -> dict:
    """Per split of ``splits`` (training, scored): proposals per image and recall at each IoU for
    the first N proposals of each image (non-difficult boxes,
    ``sppdet.models.selective_search.proposal_recall``)."""
    folder = proposals_dir(work)
    result = {}
    for split in splits:
        dataset = VocDataset(work.data_root(), split, check_images=False)
        gts, proposals = [], []
        for image_id in dataset.image_ids:
            annotation = dataset.annotation(image_id)
            gts.append(annotation.boxes[~annotation.difficult])
            proposals.append(load_proposals(folder, image_id))
        rows = {}
        for top in TOP_N:
            recall = proposal_recall(gts, [p[:top] for p in proposals], RECALL_IOU)
            rows["all" if top is None else str(top)] = {str(t): float(r) for t, r in zip(RECALL_IOU, recall)}
        result[split] = {"images": len(proposals), "proposals_per_image": float(np.mean([len(p) for p in proposals])),
                         "gt_boxes": int(sum(len(g) for g in gts)), "recall": rows}
    return result


def ensure_demo(work: Path, images: int) -> None:
    """Run ``benchmarks/demo.py`` on ``work`` unless it already holds a trained detector."""
    if WorkDir(work).config().get("stages", {}).get(SVM_STAGE) and (work / "demo-times.json").is_file():
        return
    print(f"== no trained detector in {work}: running the demo first", flush=True)
    script = Path(__file__).with_name("demo.py")
    result = subprocess.run([sys.executable, str(script), "--workdir", str(work), "--images", str(images)])
    if result.returncode != 0:
        sys.exit(f"ablation: the demo failed (exit {result.returncode})")


def restore_demo(run: Runner, score: bool = True) -> float | None:
    """Re-run the demo's training stages (cache hits) and, when ``score``, its own eval (test
    views included); that mAP, else None (a val ablation does not read the test split)."""
    for name in ("extract trainval", "extract test", "finetune", "train-svm", "train-bbox"):
        run(demo_stage(name, run.work))
    if not score:
        return None
    path = run.work / "ablation" / "demo.json"
    run(with_option(without_option(demo_stage("eval", run.work), "--plots"), "--json", str(path)))
    return float(json.loads(path.read_text())["mAP"])


def run_ablation(work: Path, methods: tuple[str, ...], scale: int | None = None, crop_override: int | None = None,
                 label: str = "", split: str = "test") -> dict:
    """Every row of the ablation (module docstring) on the demo work directory ``work`` (written
    ``label`` in the logged commands; default: its path), scored on ``split``: "test" (SVMs
    trained on trainval) or "val" (SVMs trained on train), where changes are chosen."""
    run = Runner(work, label or str(work))
    extract = demo_stage("extract trainval", work)
    demo_scales = tuple(int(v) for v in option_value(extract, "--scales").split(","))
    scale = scale or ONE_SCALE
    scales_5 = five_scales(scale)
    crop, context = rcnn_crop(WorkDir(work), crop_override)
    extracts = {
        "rcnn": [*without_option(without_option(extract, "--scales"), "--precision"), "--method", "rcnn",
                 "--crop-size", str(crop),
                 "--context", str(context)],
        "spp_5": with_option(extract, "--scales", ",".join(map(str, scales_5))),
        "spp_1": with_option(extract, "--scales", str(scale)),
        "spp_demo": extract,
    }
    if demo_scales == (scale,):
        methods = tuple(m for m in methods if m != "spp_demo")
    results, levels, seconds = {}, {}, {}
    for key in ("rcnn", "spp_5", "spp_1", "spp_demo"):
        if key not in methods:
            continue
        start = time.perf_counter()
        rows = method_rows(run, key, extracts[key], levels_rows=key == "spp_1", split=split)
        seconds[key] = round(time.perf_counter() - start, 1)
        results[key] = rows["mAP"]
        levels.update(rows["levels"])
    again = restore_demo(run, score=split == "test")
    demo_map = json.loads((work / "demo-times.json").read_text()).get("mAP") if again is not None else None
    return {
        "benchmark": "ablation", "split": split, "mAP": results, "levels": levels,
        "recall": recall_table(WorkDir(work), (TRAIN_SPLIT[split], split)),
        "settings": {"scale_1": scale, "scales_demo": list(demo_scales), "scales_5": list(scales_5),
                     "rcnn_crop": crop, "rcnn_context": context,
                     "backbone": " ".join(option_value(extract, o) and f"{o} {option_value(extract, o)}"
                                          for o in ("--backbone", "--width")),
                     "demo_svm_layer": option_value(demo_stage("train-svm", work), "--layer") or "fc7",
                     "demo_svm_augment": option_value(demo_stage("train-svm", work), "--augment-positives"),
                     "demo_tta": option_value(demo_stage("eval", work), "--tta"),
                     "demo_precision": option_value(demo_stage("extract trainval", work), "--precision"),
                     "workdir": str(work), "torch_threads_env": os.environ.get("OMP_NUM_THREADS")},
        "demo_mAP": demo_map, "demo_mAP_again": again,
        "matches_demo": None if demo_map is None else abs(again - demo_map) < 1e-9,
        "seconds": seconds, "commands": run.log,
    }


def format_tables(result: dict) -> str:
    """The ablation's markdown tables (mAP in %, as the paper) from :func:`run_ablation`'s dict."""
    parts = [report_text.accuracy_table(result), report_text.recall_table(result)]
    if result["levels"]:
        parts.insert(1, report_text.levels_table(result))
    return "\n\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.environ.get("SPPDET_WORKDIR", "sppdet-work"))
    parser.add_argument("--images", type=int, default=400, help="demo images, if the demo must run")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--scale", type=int, default=None,
                        help="the single scale of spp_1, the centre of spp_5 (default: the demo's smallest)")
    parser.add_argument("--rcnn-crop", type=int, default=None,
                        help="R-CNN crop side (default: the largest crop side the trunk was pretrained on)")
    parser.add_argument("--split", choices=sorted(TRAIN_SPLIT), default="test",
                        help="scored split: test (SVMs on trainval), or val (SVMs on train) to choose changes by")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = parser.parse_args()
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"--methods: unknown {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    work = Path(args.workdir).resolve()
    ensure_demo(work, args.images)
    start = time.perf_counter()
    result = run_ablation(work, methods, args.scale, args.rcnn_crop, args.workdir, args.split)
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    print("\n" + format_tables(result) + "\n")
    print(json.dumps(result))
    if args.json_path:  # key order kept: it is the order of the rows
        atomic_write_text(args.json_path, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
