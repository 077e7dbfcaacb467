"""SPP windows against R-CNN crops of the same objects, as the trunk's classifiers see them (issue 20).

The trunk of ``sppdet pretrain`` learned from warped crops (R-CNN's input); SPP-net pools the same
object from the whole image's conv5 map. For every non-difficult ground-truth object of a split
(default: val, never the test split unless asked), this pools the object both ways with the work
directory's trunk:

- spp: its window pooled from the cached features (``WindowSource.pool``: the scale nearest the
  scale-choice target, projected, pyramid-pooled), as every SPP stage reads it;
- rcnn: the box warped to a crop of the pretraining's largest side with its context
  (``sppdet.models.crops.rcnn_pooled``), the trunk run on the crop, the whole map pooled, as
  ``sppdet pretrain`` trained and ``extract --method rcnn`` computes;

and reports, per way: the top-1 accuracy of the pretraining classifier (the head trained with the
trunk on crops; "objects only" ignores the background logit) and of the fine-tuned head (trained
on SPP windows of the training split) on the object's class; the mean L2 norm and share of
non-zero values of the pooled vectors; and the cosine similarity of the two vectors of the same
object, per pyramid level. Objects are also grouped by the scale SPP pools them at.

    .venv/bin/python benchmarks/pooled_stats.py --workdir sppdet-work [--split val] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
import torch

from sppdet.data.images import load_bgr
from sppdet.models.crops import CROP_SIZE, rcnn_pooled
from spp_scales import routed_objects
from sppdet.ops.spp import LEVELS
from sppdet.stages.pretrain import load_pretrained
from sppdet.workdir.caches import features_dir, features_info
from sppdet.workdir.records import SELECTION_RECORD
from sppdet.workdir.store import WorkDir
from sppdet.workdir.trained import finetuned_head, rebuild_trunk
from sppdet.workdir.window_source import WindowSource


def _logits(head, pooled: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return head.eval()(torch.from_numpy(np.ascontiguousarray(pooled, np.float32))).numpy()


def _level_slices(channels: int, levels=LEVELS) -> list[tuple[int, slice]]:
    slices, start = [], 0
    for n in levels:
        slices.append((n, slice(start, start + channels * n * n)))
        start += channels * n * n
    return slices


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def compare(work: WorkDir, split: str) -> dict:
    """The figures of the module docstring for ``split`` of ``work``, as a dict."""
    source = WindowSource(work, split)
    folder = features_dir(work)
    info = features_info(folder)
    trunk = rebuild_trunk(work, folder, info)
    classifier, _, record = load_pretrained(work)
    crop_side = max(int(s) for s in record["config"]["sizes"])
    context = record["config"]["context"] * crop_side / CROP_SIZE  # as pretraining warps its crops
    tuned, _ = finetuned_head(work, source.feature_hash, source.dim)
    found = defaultdict(list)
    for image_id, boxes, labels, _, _, routed in routed_objects(source, info.config.scales, info.config.target):
        pooled = {"spp": np.asarray(source.pool(image_id, boxes), np.float32),
                  "rcnn": rcnn_pooled(trunk, load_bgr(source.dataset.image_path(image_id)), boxes,
                                      source.levels, crop_side, context)}
        found["label"].append(labels)
        found["scale"].append(np.asarray(info.config.scales)[routed])
        for way, vectors in pooled.items():
            found[f"{way}.vectors"].append(vectors)
            found[f"{way}.pretrain"].append(_logits(classifier.head, vectors))
            found[f"{way}.tuned"].append(_logits(tuned, vectors))
    data = {key: np.concatenate(value) for key, value in found.items()}
    labels, scales = data["label"], data["scale"]
    summary = {"split": split, "objects": int(len(labels)), "crop_side": crop_side,
               "target": int(info.config.target), "ways": {}, "cosine_by_level": {}, "by_scale": []}
    for way in ("spp", "rcnn"):
        vectors, pre, ft = data[f"{way}.vectors"], data[f"{way}.pretrain"], data[f"{way}.tuned"]
        summary["ways"][way] = {
            "pretrain_top1": float((pre.argmax(1) == labels).mean()),
            "pretrain_top1_objects_only": float((pre[:, 1:].argmax(1) + 1 == labels).mean()),
            "tuned_top1": float((ft.argmax(1) == labels).mean()),
            "norm": float(np.linalg.norm(vectors, axis=1).mean()),
            "nonzero": float((vectors != 0).mean())}
    spp, rcnn = data["spp.vectors"], data["rcnn.vectors"]
    summary["cosine"] = float(_cosine(spp, rcnn).mean())
    for n, part in _level_slices(info.channels, source.levels):
        summary["cosine_by_level"][f"{n}x{n}"] = float(_cosine(spp[:, part], rcnn[:, part]).mean())
    for scale in sorted(set(scales.tolist())):
        rows = scales == scale
        summary["by_scale"].append({
            "scale": int(scale), "objects": int(rows.sum()),
            "spp_pretrain_top1": float((data["spp.pretrain"][rows].argmax(1) == labels[rows]).mean()),
            "rcnn_pretrain_top1": float((data["rcnn.pretrain"][rows].argmax(1) == labels[rows]).mean()),
            "spp_tuned_top1": float((data["spp.tuned"][rows].argmax(1) == labels[rows]).mean()),
            "rcnn_tuned_top1": float((data["rcnn.tuned"][rows].argmax(1) == labels[rows]).mean()),
            "cosine": float(_cosine(spp[rows], rcnn[rows]).mean())})
    return summary


def markdown(summary: dict) -> str:
    """The summary as markdown tables."""
    lines = [f"{summary['objects']} objects of {summary['split']}; crops of {summary['crop_side']} px, "
             f"SPP target {summary['target']} px", "",
             "| way | pretrain top-1 | pretrain top-1 (objects only) | fine-tuned top-1 | mean norm | non-zero |",
             "|---|---:|---:|---:|---:|---:|"]
    for way, row in summary["ways"].items():
        lines.append(f"| {way} | {row['pretrain_top1']:.3f} | {row['pretrain_top1_objects_only']:.3f} | "
                     f"{row['tuned_top1']:.3f} | {row['norm']:.1f} | {row['nonzero']:.3f} |")
    levels = ", ".join(f"{level} {value:.3f}" for level, value in summary["cosine_by_level"].items())
    lines += ["", f"cosine(spp, rcnn) of the same object: {summary['cosine']:.3f} (by level: {levels})", "",
              "| scale | objects | spp pretrain | rcnn pretrain | spp fine-tuned | rcnn fine-tuned | cosine |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in summary["by_scale"]:
        lines.append(f"| {row['scale']} | {row['objects']} | {row['spp_pretrain_top1']:.3f} | "
                     f"{row['rcnn_pretrain_top1']:.3f} | {row['spp_tuned_top1']:.3f} | "
                     f"{row['rcnn_tuned_top1']:.3f} | {row['cosine']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="sppdet-work")
    parser.add_argument("--split", default=None, help="default: the val split sppdet train chose on")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = WorkDir(args.workdir)
    split = args.split or work.config().get("stages", {}).get(SELECTION_RECORD, {}).get("val_split", "val")
    summary = compare(work, split)
    print(markdown(summary))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
