"""The text of BENCHMARKS.md from the benchmarks' JSON: markdown tables and the generated reading.

Pure functions of the JSON that ``benchmarks/report.py`` collects (no I/O), so the page can be
re-rendered from saved results and tested on fixed inputs. Every comparison the reading states
("SPP-net is X points below R-CNN", "within 2 points", "5 scales add Y") is computed here from the
numbers of the same run, so it cannot go stale; the paper's figures are SPEC.md's
"Published numbers" (VOC 2007 test, ZF-5 on a GPU).

mAP is shown in percent with one decimal, as the paper's tables; the JSON holds fractions.
"""

from __future__ import annotations

from typing import Sequence

METHODS = ("spp_1", "spp_demo", "spp_5", "rcnn")
#: The methods of the paper's timing table (``sppdet bench speed``).
SPEED_METHODS = ("spp_1", "spp_5", "rcnn")
COLUMNS = ("pool5", "fc7", "ftfc7", "ftfc7 bb")
PARTS = ("conv", "pool", "fc", "svm", "total")
#: SPP-net within this many mAP points of R-CNN counts as "about as accurate" (issue 6: 1-2 points).
TOLERANCE = 2.0

#: Paper, VOC 2007 test mAP (%); None where the paper gives no number.
PAPER_MAP = {
    "SPP-net ZF-5, 1 scale": {"pool5": 43.0, "fc7": None, "ftfc7": 54.5, "ftfc7 bb": 58.0},
    "SPP-net ZF-5, 5 scales": {"pool5": 44.9, "fc7": None, "ftfc7": 55.2, "ftfc7 bb": 59.2},
    "R-CNN ZF-5 (same pre-trained model)": {"pool5": None, "fc7": None, "ftfc7": 55.1, "ftfc7 bb": 59.2},
    "R-CNN AlexNet": {"pool5": 44.2, "fc7": None, "ftfc7": 54.2, "ftfc7 bb": 58.5},
}
#: Our method key -> the paper's row it reproduces (R-CNN: the same-pre-trained-model comparison);
#: the demo's scales have no paper row.
PAPER_ROW = {"spp_1": "SPP-net ZF-5, 1 scale", "spp_5": "SPP-net ZF-5, 5 scales",
             "rcnn": "R-CNN ZF-5 (same pre-trained model)"}
LABEL = {"spp_1": "1 scale", "spp_demo": "the demo's scales", "spp_5": "5 scales"}
SHORT = {"spp_1": "SPP 1 scale", "spp_demo": "SPP demo scales", "spp_5": "SPP 5 scales", "rcnn": "R-CNN"}
#: Paper, seconds per image on a GPU, proposals excluded (ZF-5), and its stated speed-ups.
PAPER_TIMING = {"spp_1": {"conv": 0.053, "fc": 0.089, "total": 0.142},
                "spp_5": {"conv": 0.293, "fc": 0.089, "total": 0.382},
                "rcnn": {"conv": 14.37, "fc": 0.089, "total": 14.46}}
PAPER_SPEEDUP = {"speedup_conv_1": 270.0, "speedup_total_1": 102.0,
                 "speedup_conv_5": 49.0, "speedup_total_5": 38.0}
#: Issue 6 goals on this CPU.
GOAL_CONV_1, GOAL_TOTAL_1 = 100.0, 20.0
#: Images of Pascal VOC 2007 per split (voc2007_estimate.py projects both).
VOC2007_IMAGES = {"trainval": 5011, "test": 4952}
#: Datasets and node counts of the Ray projection.
PROJECTED_IMAGES = {"VOC 2007": sum(VOC2007_IMAGES.values()), "COCO train2017": 118287}
PROJECTED_NODES = (1, 10, 100)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """A markdown table; ``right[i]`` right-aligns column i (default: every column but the first)."""
    right = right if right is not None else [False] + [True] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None) -> str:
    """mAP fraction -> percent with one decimal; "–" for a missing value."""
    return "–" if value is None else f"{100 * value:.1f}"


def points(a: float, b: float) -> float:
    """a - b in mAP points (fractions in, points out), rounded to the shown precision."""
    return round(100 * a - 100 * b, 1)


def signed(d: float) -> str:
    """A difference in points with its sign: +1.2, -0.5, 0.0."""
    return f"{d:+.1f}" if d else "0.0"


def relation(d: float) -> str:
    """"1.2 points below" / "0.3 points above" / "level with" for a difference d in points."""
    if d == 0:
        return "level with"
    return f"{abs(d):.1f} points {'below' if d < 0 else 'above'}"


def method_names(settings: dict) -> dict[str, str]:
    """Display names of the ablation's methods, with their settings."""
    return {"spp_1": f"SPP-net, 1 scale ({settings['scale_1']})",
            "spp_demo": f"SPP-net, the demo's scales ({','.join(map(str, settings.get('scales_demo', [])))})",
            "spp_5": f"SPP-net, 5 scales ({','.join(map(str, settings['scales_5']))})",
            "rcnn": f"R-CNN (crops {settings['rcnn_crop']} px, context {settings['rcnn_context']} px)"}


def accuracy_table(ablation: dict, with_paper: bool = True) -> str:
    """The paper's ablation table: one row per method, columns pool5 / fc7 / ftfc7 / ftfc7 bb
    (mAP %), then the paper's rows in italics."""
    names = method_names(ablation["settings"])
    rows = [[names[m], *(pct(ablation["mAP"][m][c]) for c in COLUMNS)] for m in METHODS if m in ablation["mAP"]]
    if with_paper:
        rows += [[f"*paper: {name}*", *("–" if v is None else f"*{v:.1f}*" for v in (row[c] for c in COLUMNS))]
                 for name, row in PAPER_MAP.items()]
    return md_table(["method", *COLUMNS], rows)


def bins(levels: str) -> int:
    """Bins of a pyramid written "1,2,3,6"."""
    return sum(int(n) ** 2 for n in levels.split(","))


def ordered_levels(ablation: dict) -> list[tuple[str, float]]:
    """(levels, mAP) pairs, most bins first (the full pyramid leads)."""
    return sorted(ablation["levels"].items(), key=lambda item: -bins(item[0]))


def levels_table(ablation: dict) -> str:
    """pool5-SVM mAP per pyramid (SPP 1 scale)."""
    rows = [[f"{{{key}}}", bins(key), pct(value)] for key, value in ordered_levels(ablation)]
    return md_table(["pyramid levels (pool5 SVMs, SPP-net 1 scale)", "bins", "mAP"], rows)


def recall_table(ablation: dict) -> str:
    """Proposal recall per split and number of proposals kept per image."""
    rows = []
    for split in sorted(ablation["recall"], key=lambda s: (s != "trainval", s)):
        entry = ablation["recall"][split]
        for top in sorted(entry["recall"], key=lambda n: float("inf") if n == "all" else int(n)):
            recall = entry["recall"][top]
            kept = f"all ({entry['proposals_per_image']:.0f} on average)" if top == "all" else f"first {top}"
            rows.append([split, entry["images"], entry["gt_boxes"], kept, f"{recall['0.5']:.3f}",
                         f"{recall['0.7']:.3f}"])
    return md_table(["split", "images", "objects", "proposals per image", "recall @ IoU 0.5",
                     "recall @ IoU 0.7"], rows)


def speed_table(speed: dict) -> str:
    """The paper's timing table: seconds per image per part for SPP 1 / 5 scales and R-CNN, the
    speed-ups, and the paper's GPU numbers."""
    rows = [[part, *(f"{speed[m][part]:.4f}" for m in SPEED_METHODS)] for part in PARTS]
    rows.append(["proposals (not in total)", *(f"{speed[m]['proposals']:.3f}" for m in SPEED_METHODS)])
    for part in ("conv", "total"):
        rows.append([f"**speed-up vs R-CNN, {part}**", f"**{speed[f'speedup_{part}_1']:.0f}x**",
                     f"**{speed[f'speedup_{part}_5']:.0f}x**", "1x"])
    for part in ("conv", "fc", "total"):
        rows.append([f"*paper (GPU): {part}*", *(f"*{PAPER_TIMING[m][part]:.3f}*" for m in SPEED_METHODS)])
    for part in ("conv", "total"):
        rows.append([f"*paper: speed-up, {part}*", f"*{PAPER_SPEEDUP[f'speedup_{part}_1']:.0f}x*",
                     f"*{PAPER_SPEEDUP[f'speedup_{part}_5']:.0f}x*", "*1x*"])
    return md_table(["seconds per image", "SPP-net 1 scale", "SPP-net 5 scales", "R-CNN"], rows)


def demo_table(demo: dict) -> str:
    """Seconds per demo stage and the total."""
    rows = [[name, f"{seconds:.1f}"] for name, seconds in demo["seconds"].items()]
    rows.append(["**total**", f"**{demo['total_seconds']:.1f}**"])
    return md_table(["stage", "seconds"], rows)


def datasets_section(datasets: dict) -> list[str]:
    """The section on ``sppdet train`` with no flags on the scenery datasets
    (``benchmarks/datasets.py``)."""
    rows = []
    for r in datasets["results"]:
        svm = r["chosen"]["svm"]
        chosen = (f"{svm['layer']}, C {svm['C']:g}, copies {','.join(svm['augment_positives']) or 'none'}, "
                  f"views {','.join(r['chosen']['tta']) or 'none'}")
        rows.append([f"scenery {r['look']}", str(r["images"]), pct(r["val_mAP"]), pct(r["test_mAP"]),
                     f"{r['seconds']['train']:.0f}", f"{r['seconds']['eval']:.0f}", chosen])
    return ["## Any dataset, default settings",
            "`benchmarks/datasets.py`: for each look of `sppdet scenery` (not the demo's generator), "
            "`sppdet scenery D --look LOOK`, then `sppdet train --data D` with no other flag (val carved "
            "from trainval: these datasets have no val.txt), then `sppdet eval --split test` once. mAP in %.",
            md_table(["dataset", "images", "val mAP", "test mAP", "train s", "eval s", "chosen on val"],
                     rows, right=[False, True, True, True, True, True, False])]


def memory_tables(memory: dict) -> str:
    """Peak resident memory per stage and training-set size; feature-cache bytes per image."""
    rows = [[r["stage"], r["images"], f"{r['peak_rss_mb']:.0f}", f"{r['above_startup_mb']:.0f}",
             f"{r['seconds']:.1f}"] for r in memory["rows"]]
    first = md_table(["stage", "training images", "peak RSS (MB)", "above start-up (MB)", "seconds"], rows)
    cache = memory["cache"]
    scales = str(memory["settings"]["scales"]).split(",")
    cache_rows = [[scale, " x ".join(f"{v:g}" for v in shape), f"{size:,.0f}"]
                  for scale, shape, size in zip(scales, cache["map_shape_mean_per_scale"],
                                                cache["map_bytes_per_image_per_scale"])]
    cache_rows.append(["all scales (file on disk)", "", f"{cache['file_bytes_per_image']:,.0f}"])
    return first + "\n\n" + md_table(["scale", "conv5 map (C x H x W, mean)", "bytes per image"], cache_rows)


def conv_table(conv: dict) -> str:
    """bench_conv: one-pass conv against 2,000 warped windows per backbone."""
    rows = [[r["backbone"], f"{r['spp_conv_s']:.3f}", f"{r['rcnn_conv_s']:.1f}", f"**{r['speedup']:.0f}x**",
             f"{r['mac_ratio']:.0f}x"] for r in conv["rows"]]
    return md_table(["backbone (full width, random weights)", "one-pass conv (s)",
                     "R-CNN conv, 2,000 windows (s)", "speed-up", "conv MAC ratio"], rows)


def spp_table(spp: dict) -> str:
    """bench_spp: spp_pool against torchvision roi_pool per thread count."""
    rows = [[r["threads"], f"{r['spp_pool_ms']:.1f}", f"{r['roi_pool_ms']:.1f}", f"**{r['ratio']:.2f}**"]
            for r in spp["results"]]
    return md_table(["torch threads", "spp_pool (ms)", "roi_pool x 4 levels (ms)", "ours / roi_pool"], rows)


def eval_table(evaluation: dict) -> str:
    """bench_eval: VOC evaluation time at VOC 2007 test scale ([wall, CPU] seconds)."""
    labels = {"evaluate_voc07_2_s": "evaluate voc07, VOC-like (~2.4 objects/image)",
              "evaluate_area_2_s": "evaluate area, VOC-like",
              "evaluate_voc07_20_s": "evaluate voc07, crowded (~20 objects/image)",
              "evaluate_area_20_s": "evaluate area, crowded",
              "write_results_s": "write devkit results files (a tenth)",
              "read_results_s": "read devkit results files (a tenth)"}
    rows = [[label, f"{evaluation[key][0]:.2f}", f"{evaluation[key][1]:.2f}"]
            for key, label in labels.items() if key in evaluation]
    return md_table([f"task ({evaluation['images']:,} images x {evaluation['classes']} classes x "
                     f"{evaluation['per_class']} detections)", "wall s", "CPU s"], rows)


def gain_sentence(name: str, m: dict, ours: tuple[str, str], paper: tuple[str, str]) -> str:
    """What one step (``ours`` = (before, after) columns) adds per method, against the paper's
    gain over ``paper`` = (before, after) (the paper has no fc7-without-fine-tuning column)."""
    gains = {k: points(m[k][ours[1]], m[k][ours[0]]) for k in METHODS if k in m}
    published = {k: round(PAPER_MAP[PAPER_ROW[k]][paper[1]] - PAPER_MAP[PAPER_ROW[k]][paper[0]], 1)
                 for k in gains if k in PAPER_ROW and PAPER_MAP[PAPER_ROW[k]][paper[0]] is not None}
    losing = [SHORT[k] for k, g in gains.items() if g <= 0]
    verdict = ("it adds points for every method, as in the paper" if not losing
               else f"it adds nothing for {', '.join(losing)}, unlike the paper")
    return (f"{name} ({ours[0]} -> {ours[1]}): " + ", ".join(f"{SHORT[k]} {signed(g)}" for k, g in gains.items())
            + f" points (paper, {paper[0]} -> {paper[1]}: "
            + ", ".join(f"{SHORT[k]} {signed(v)}" for k, v in published.items()) + f"); {verdict}.")


def val_ablation_section(val: dict) -> list[str]:
    """The ablation's rows scored on the validation split (``ablation.py --split val``): the
    numbers changes are chosen by, with one sentence on SPP-net against R-CNN there."""
    m = val["mAP"]
    lines = [
        "The same rows scored on the demo's val split (`benchmarks/ablation.py --split val`: SVMs and box "
        "regressors trained on the train split, fine-tuning as above). Changes to sppdet are chosen on "
        "these; the test table above is read once per `make bench`.",
        accuracy_table(val, with_paper=False),
    ]
    if "rcnn" in m and "spp_demo" in m:
        d = points(m["spp_demo"]["ftfc7 bb"], m["rcnn"]["ftfc7 bb"])
        lines.append(f"On val, SPP-net at the demo's scales is {relation(d)} R-CNN (ftfc7 bb: "
                     f"{pct(m['spp_demo']['ftfc7 bb'])} vs {pct(m['rcnn']['ftfc7 bb'])}).")
    return lines


def accuracy_reading(ablation: dict) -> list[str]:
    """Sentences comparing the ablation with the paper, each computed from the numbers."""
    m = ablation["mAP"]
    lines = []
    if "rcnn" in m:
        for spp in ("spp_1", "spp_demo", "spp_5"):
            if spp not in m:
                continue
            d = points(m[spp]["ftfc7 bb"], m["rcnn"]["ftfc7 bb"])
            paper = ""
            if spp in PAPER_ROW:
                published = PAPER_MAP[PAPER_ROW[spp]]["ftfc7 bb"] - PAPER_MAP[PAPER_ROW["rcnn"]]["ftfc7 bb"]
                paper = f"; paper: {relation(round(published, 1))}"
            if abs(d) <= TOLERANCE:
                verdict = f"within {TOLERANCE:g} points, so the paper's \"as accurate as R-CNN\" holds here"
            elif d < 0:
                verdict = f"more than {TOLERANCE:g} points, so the paper's \"as accurate as R-CNN\" does not hold here"
            else:
                verdict = f"SPP-net is ahead by more than {TOLERANCE:g} points, more than the paper found"
            lines.append(f"SPP-net at {LABEL[spp]} is {relation(d)} R-CNN with the same trunk (ftfc7 bb: "
                         f"{pct(m[spp]['ftfc7 bb'])} vs {pct(m['rcnn']['ftfc7 bb'])}{paper}): {verdict}.")
    if "spp_1" in m and "spp_5" in m:
        d_bb = points(m["spp_5"]["ftfc7 bb"], m["spp_1"]["ftfc7 bb"])
        d_pool = points(m["spp_5"]["pool5"], m["spp_1"]["pool5"])
        one, five = PAPER_MAP[PAPER_ROW["spp_1"]], PAPER_MAP[PAPER_ROW["spp_5"]]
        paper_bb, paper_pool = round(five["ftfc7 bb"] - one["ftfc7 bb"], 1), round(five["pool5"] - one["pool5"], 1)
        verdict = "5 scales >= 1 scale, as in the paper" if d_bb >= 0 else "5 scales lose here, unlike the paper"
        lines.append(f"Five scales against one: {signed(d_bb)} points with ftfc7 bb and {signed(d_pool)} with "
                     f"pool5 (paper: {signed(paper_bb)} and {signed(paper_pool)}); {verdict}.")
    lines.append(gain_sentence("Fine-tuning", m, ("fc7", "ftfc7"), ("pool5", "ftfc7")))
    lines.append(gain_sentence("Box regression", m, ("ftfc7", "ftfc7 bb"), ("ftfc7", "ftfc7 bb")))
    if ablation.get("levels"):
        levels = ablation["levels"]
        full = levels.get("1,2,3,6")
        others = {k: v for k, v in ordered_levels(ablation) if k != "1,2,3,6"}
        if full is not None and others:
            beaten = [k for k, v in others.items() if points(full, v) <= 0]
            verdict = ("the full pyramid beats every single level, as the paper argues" if not beaten else
                       "the full pyramid does not beat " + ", ".join(f"{{{k}}}" for k in beaten) + " here")
            lines.append("Pyramid (pool5 SVMs): {1,2,3,6} " + pct(full) + " against " + ", ".join(
                f"{{{k}}} {pct(v)} ({signed(points(full, v))})" for k, v in others.items()) + f"; {verdict}.")
    return lines


def speed_reading(speed: dict) -> list[str]:
    """Sentences on the speed-ups against the paper and the issue's goals."""
    conv1, total1 = speed["speedup_conv_1"], speed["speedup_total_1"]
    conv5, total5 = speed["speedup_conv_5"], speed["speedup_total_5"]
    goals = []
    goals.append(f"conv >= {GOAL_CONV_1:.0f}x at 1 scale: {'met' if conv1 >= GOAL_CONV_1 else 'not met'}")
    goals.append(f"total >= {GOAL_TOTAL_1:.0f}x: {'met' if total1 >= GOAL_TOTAL_1 else 'not met'}")
    spp = speed["spp_1"]
    largest = max(("conv", "pool", "fc", "svm"), key=lambda p: spp[p])
    share = 100 * spp[largest] / spp["total"]
    return [
        f"Speed-up over R-CNN at 1 scale: {conv1:.0f}x for conv, {total1:.0f}x in total (paper, GPU: "
        f"{PAPER_SPEEDUP['speedup_conv_1']:.0f}x and {PAPER_SPEEDUP['speedup_total_1']:.0f}x); at 5 scales "
        f"{conv5:.0f}x and {total5:.0f}x (paper: {PAPER_SPEEDUP['speedup_conv_5']:.0f}x and "
        f"{PAPER_SPEEDUP['speedup_total_5']:.0f}x). Issue goals: {'; '.join(goals)}.",
        f"SPP-net's 1-scale time here is mostly {largest} ({share:.0f}% of {spp['total']:.3f} s); the "
        f"paper's is mostly fc (0.089 of 0.142 s with 4096-wide fc layers on a GPU).",
    ]


def memory_reading(memory: dict) -> list[str]:
    """Whether each stage's memory above start-up stays flat as the training set grows."""
    lines = []
    for stage in dict.fromkeys(r["stage"] for r in memory["rows"]):
        rows = sorted((r for r in memory["rows"] if r["stage"] == stage), key=lambda r: r["images"])
        low, high = rows[0], rows[-1]
        growth = high["above_startup_mb"] - low["above_startup_mb"]
        flat = growth <= max(50.0, 0.25 * max(low["above_startup_mb"], 1.0))
        lines.append(f"{stage}: {low['above_startup_mb']:.0f} MB above start-up at {low['images']} images, "
                     f"{high['above_startup_mb']:.0f} MB at {high['images']} ({growth:+.0f} MB): "
                     + ("flat, it streams." if flat else "it grows with the training set."))
    return lines


def setting_notes(results: dict) -> list[str]:
    """Why absolute numbers differ from the paper: the settings of this run, stated from its JSON."""
    ablation, speed = results["ablation"], results["speed"]
    images = {split: entry["images"] for split, entry in ablation["recall"].items()}
    return [
        "Absolute mAP is not comparable with the paper's: the paper's trunk is ZF-5 pre-trained on "
        "ImageNet and tested on VOC 2007 (20 classes, 4,952 test images); here the trunk "
        f"({ablation['settings']['backbone']}) is trained from scratch by `sppdet pretrain` on the demo's "
        f"{images.get('trainval', '?')} training images of synthetic shapes and tested on its "
        f"{images.get('test', '?')} test images. The differences between rows are the comparison.",
        "R-CNN warps each window to the trunk's largest pre-training crop size "
        f"({ablation['settings']['rcnn_crop']} px, "
        f"{ablation['settings']['rcnn_context']} px of context), as the paper's R-CNN warps to its network's "
        "224 px input: the trunk learned on such crops, which favours R-CNN's features over SPP-net's "
        "whole-image ones, as ImageNet pre-training does in the paper.",
        f"Speed is measured on this machine's CPU ({speed['settings']['torch_threads']} torch thread(s)) with "
        f"the demo's trained model ({speed['settings']['model']}), {speed['settings']['proposals']} windows "
        f"per image and the paper's scales; R-CNN's conv is timed on {speed['settings']['rcnn_windows_timed']} "
        "windows per image and scaled. The paper times a GPU with full-width ZF-5 and 4096-wide fc layers.",
    ]


def join(values: Sequence) -> str:
    """1, 2, 3"""
    return ", ".join(map(str, values))


def bullets(lines: Sequence[str]) -> str:
    """Markdown bullet list."""
    return "\n".join(f"- {line}" for line in lines)


def faults_section(faults: dict) -> list[str]:
    """The fault suite's table (``benchmarks/faults.py``): per case, tried, survived, files lost."""
    rows = [[c["case"], "skipped: " + c["skipped"] if c["skipped"] else str(c["tried"]),
             "" if c["skipped"] else str(c["survived"]), "" if c["skipped"] else str(c["files_lost"])]
            for c in faults["cases"]]
    tried = sum(c["tried"] for c in faults["cases"])
    survived = sum(c["survived"] for c in faults["cases"])
    lost = sum(c["files_lost"] for c in faults["cases"])
    return ["## Faults",
            f"`benchmarks/faults.py` ({faults['images']} synth images, {faults['trials']} kill trials per "
            "stage at random moments of its reference run, start-up included, seed "
            f"{faults['seed']}): each case breaks a run of the real `sppdet` commands, then compares the work "
            "directory with an uninterrupted run; a case survives when nothing hung, nothing printed a "
            "traceback, a failure was one error line, no temporary file was left and the re-run gave the "
            f"uninterrupted run's files byte for byte. In all: {survived} of {tried} survived, "
            f"{lost} files lost.",
            md_table(["case", "tried", "survived", "files lost"], rows, right=[False, True, True, True])]


def step_command(run: dict, name: str, fallback: str) -> str:
    """The command line step ``name`` ran with in ``run``, else ``fallback``."""
    return next((s["command"] for s in run.get("steps", []) if s["name"] == name), fallback)


def duration(seconds: float) -> str:
    """A wall time in the unit that reads best: 45 s, 12 min, 3.4 h, 2.1 days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def voc_section(voc: dict, command: str) -> list[str]:
    """``benchmarks/voc2007_estimate.py``: seconds per image of each per-image step of the VOC 2007
    recipe and the hours and disk they project to."""
    seconds, hours = voc["seconds_per_image"], voc["hours"]
    # the script writes both dicts in the same step order: propose, extract, pool + fc
    rows = [[step, f"{s:.3f}", f"{h:.1f} h"] for (step, s), h in zip(seconds.items(), hours.values())]
    rows.append(["**per-image steps, in all**", "", f"**{sum(hours.values()):.1f} h**"])
    rows.append(["feature cache on disk (float16 conv5 maps, trainval + test)", "",
                 f"{voc['feature_cache_gb']:.0f} GB"])
    test, total = VOC2007_IMAGES["test"], sum(VOC2007_IMAGES.values())
    return [f"## Pascal VOC 2007 with {voc['backbone']}: projected cost",
            f"`{command}`: seconds per image of each per-image step of the README's VOC 2007 recipe "
            f"({voc['backbone']} at full width, random weights: timing does not depend on them; scales "
            f"{join(voc['scales'])}; {voc['precision']} on {voc['device']}, {voc['torch_threads']} torch thread(s)) "
            f"on a VOC-sized {voc['image_hw'][1]} x {voc['image_hw'][0]} image, multiplied by VOC 2007's image "
            f"counts: proposals and features for all {total:,} images (proposals one process per core, "
            f"{voc['cpu_cores']} cores), pooling and the fc head over 2,000 windows for the {test:,} test images. "
            "A lower bound for the whole chain: finetune, train-svm and train-bbox are not projected.",
            md_table(["step", "seconds per image", "VOC 2007"], rows)]


def ray_rates(ray: dict) -> tuple[str, dict]:
    """The Ray row the projection uses (the most CPUs, "ray 2" by default): (its name, the row)."""
    rays = [row for row in ray["rows"] if row["executor"].startswith("ray ")]
    best = max(rays, key=lambda row: int(row["executor"].split()[1]))
    return best["executor"], best


def ratio_words(ratio: float) -> str:
    """0.8 -> "20% slower", 1.5 -> "50% faster", 1.0 -> "as fast"."""
    change = round(100 * (ratio - 1))
    return "as fast" if change == 0 else f"{abs(change)}% {'faster' if change > 0 else 'slower'}"


def ray_reading(ray: dict) -> list[str]:
    """What the ratio of the Ray row to the local rows means: Ray's overhead (against the same
    number of local processes) and its gain from a second process (against one)."""
    rows = {row["executor"]: row for row in ray["rows"]}
    name, best = ray_rates(ray)
    n = name.split()[1]
    one, same = rows.get("local 1"), rows.get(f"local {n}")
    lines = []
    if one is not None and same is not None and same is not one:
        r_same = best["propose_images_per_s"] / same["propose_images_per_s"]
        r_one = best["propose_images_per_s"] / one["propose_images_per_s"]
        lines.append(f"Propose, {name} / local {n} = {r_same:.2f} ({ratio_words(r_same)}): the same {n} processes, "
                     "so this is Ray's overhead against a local pool (task submission, results through its object "
                     f"store, its workers' start-up within {ray['images']} images); {name} / local 1 = {r_one:.2f} "
                     f"({ratio_words(r_one)}): what Ray gains from running {n} processes instead of one, net of "
                     "that overhead.")
    if one is not None:
        r_one = best["extract_images_per_s"] / one["extract_images_per_s"]
        lines.append(f"Extract, {name} / local 1 = {r_one:.2f} ({ratio_words(r_one)}): the local extract runs in "
                     f"one process whatever the pool size, so this is Ray's gain from {n} processes net of its "
                     "overhead (the trunk shipped to each task, worker start-up).")
    single = rows.get("ray 1")
    if one is not None and single is not None and single is not best:
        lines.append(f"Ray 1 / local 1 (one process each) isolates the overhead: propose "
                     f"{single['propose_images_per_s'] / one['propose_images_per_s']:.2f}, extract "
                     f"{single['extract_images_per_s'] / one['extract_images_per_s']:.2f}.")
    return lines


def ray_projection(ray: dict, voc: dict | None, cores: int) -> list[str]:
    """Wall time of proposals and features for VOC 2007 and COCO train2017 on 1, 10 and 100 nodes
    like this one, linear in the node count, from the Ray row's per-image rates; features at the
    recipe's settings (the voc step's vgg16 at five scales) when that step ran."""
    name, best = ray_rates(ray)
    rows = {row["executor"]: row for row in ray["rows"]}
    propose = best["propose_images_per_s"]
    settings = ray.get("settings", {})
    measured = (f"{settings.get('backbone', 'zf5')} width {settings['width']:g} at scale {settings['scale']}"
                if settings else "bench_ray's trunk")
    extract_key = next((k for k in (voc or {}).get("seconds_per_image", {}) if k.startswith("extract")), None)
    if extract_key is not None and "local 1" in rows:
        gain = best["extract_images_per_s"] / rows["local 1"]["extract_images_per_s"]
        one_process = voc["seconds_per_image"][extract_key]
        extract = gain / one_process
        extract_note = (f"features at the recipe's settings: {name}'s extract gain over local 1 ({gain:.2f}x, "
                        f"{measured}) applied to the voc step's one-process time for {voc['backbone']} at scales "
                        f"{join(voc['scales'])} ({one_process:.2f} s per image), {gain:.2f} / {one_process:.2f} = "
                        f"{extract:.4f} img/s per node")
    else:
        extract = best["extract_images_per_s"]
        extract_note = (f"features at {name}'s measured rate, {extract:.2f} img/s per node ({measured}, not the "
                        "recipe's trunk and scales: the voc step did not run)")
    table = []
    for dataset, images in PROJECTED_IMAGES.items():
        for nodes in PROJECTED_NODES:
            p, e = images / (nodes * propose), images / (nodes * extract)
            table.append([dataset, f"{images:,}", str(nodes), duration(p), duration(e), duration(p + e)])
    last, images = list(PROJECTED_IMAGES.items())[-1]
    nodes = PROJECTED_NODES[-1]
    return [
        f"Projection: wall time of `propose` and `extract` on N nodes of this machine's kind ({cores} cores each, "
        f"running {name}'s configuration), images / (N x rate per node): proposals at {name}'s measured "
        f"{propose:.2f} img/s per node; {extract_note}. E.g. {last} on {nodes} nodes: {images:,} / "
        f"({nodes} x {propose:.2f}) = {images / (nodes * propose):,.0f} s of proposals, {images:,} / ({nodes} x "
        f"{extract:.4f}) = {images / (nodes * extract):,.0f} s of features.",
        md_table(["dataset", "images", "nodes", "proposals", "features", "both"], table),
        "An idealised linear projection: every node as fast as this one, no shared-filesystem, network or "
        "scheduling limits, Ray's start paid once. The measured rates include the workers' start-up over only "
        f"{ray['images']} images, which a long run spreads over many more.",
    ]


def ray_section(ray: dict, voc: dict | None, cores: int, command: str) -> list[str]:
    """``benchmarks/bench_ray.py``: images per second of propose and extract, local against Ray on
    this machine, what the ratio means, and the projection to many nodes; or why it did not run."""
    title = "## Ray on one machine (issue 19)"
    if ray.get("skipped"):
        return [title, f"Not measured: {ray['skipped']}; `{command}` did not run."]
    rows = [[r["executor"], f"{r['propose_images_per_s']:.2f}", f"{r['extract_images_per_s']:.2f}",
             f"{r['start_s']:.1f}" if r["executor"].startswith("ray ") else "–"] for r in ray["rows"]]
    settings = ray.get("settings", {})
    extract = (f"extract with random {settings.get('backbone', 'zf5')} weights of width {settings['width']:g} "
               f"at scale {settings['scale']}" if settings else "extract with random zf5 weights")
    return [title,
            f"`{command}`: {ray['images']} synth images, both stages from empty caches per configuration: "
            "local N runs propose in a pool of N processes (extract in one process); ray N runs both as Ray tasks "
            f"on a local Ray of N CPUs, one thread each; {extract}. Ray's start is timed apart; its workers' "
            "start-up counts in the rates.",
            md_table(["executor", "propose img/s", "extract img/s", "Ray start s"], rows),
            bullets(ray_reading(ray)),
            *ray_projection(ray, voc, cores)]


def page(results: dict, machine: dict, run: dict) -> str:
    """The whole of BENCHMARKS.md. ``results``: the JSON of each step (demo, speed, ablation, spp,
    conv, eval, memory; datasets, faults, voc and ray when the run had them); ``machine``: cpu,
    cores, memory_gb, system, python, packages, threads, load; ``run``: date, fresh, command, steps
    [{name, command, seconds, skipped?}], total_seconds, figure (path relative to the page)."""
    demo, speed, ablation = results["demo"], results["speed"], results["ablation"]
    steps = md_table(["step", "command", "seconds"],
                     [[s["name"] + (f" (beside {s['beside']})" if s.get("beside") else "")
                       + (f" (skipped: {s['skipped']})" if s.get("skipped") else ""), f"`{s['command']}`",
                       f"{s['seconds']:.0f}"] for s in run["steps"]]
                     + [["**total**", "", f"**{run['total_seconds']:.0f}**"]], right=[False, False, True])
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    caches = ("from scratch (`--fresh`: the bench work directory was emptied first)" if run["fresh"] else
              "reusing the caches of an earlier run (no `--fresh`): the demo's stage times are cache hits")
    settings = speed["settings"]
    ablation_commands = "\n".join(f"{c['command']}  # {c['seconds']:.1f} s" for c in ablation["commands"])
    demo_match = {True: "equals", False: "does not equal", None: "was not compared with"}[ablation.get("matches_demo")]
    layer = ablation["settings"].get("demo_svm_layer", "fc7")
    demo_extras = "".join(
        f", {label} {ablation['settings'][key]}" for key, label in
        (("demo_svm_augment", "positives with copies"), ("demo_tta", "test-time views"),
         ("demo_precision", "extraction in")) if ablation["settings"].get(key))
    sections = [
        "# sppdet benchmarks",
        f"Generated by `{run['command']}` on {run['date']}, {caches}. Every number on this page comes from "
        "that one run; `make bench` rewrites the page and its figure, so do not edit it by hand.",
        "## Machine",
        bullets([f"CPU: {machine['cpu']}, {machine['cores']} cores available to this process; "
                 f"{machine['memory_gb']:.0f} GB RAM; no GPU used",
                 f"System: {machine['system']}; Python {machine['python']}; {packages}",
                 f"Torch threads: OMP_NUM_THREADS={machine['threads']}",
                 f"Load average (1 min) at the start and the end: {machine['load'][0]:.2f}, {machine['load'][1]:.2f} "
                 "(above 0 means other processes shared the cores; times are then upper bounds, while "
                 "ratios measured side by side in one process hold)"]),
        "## Commands",
        f"`{run['command']}` ran these steps one after another"
        + (", except those marked \"beside\", which ran side by side on separate cores (neither is a timing "
           "the page compares):" if any(s.get("beside") for s in run["steps"]) else ":"),
        steps,
        "## Speed: SPP-net against R-CNN (the paper's timing table)",
        f"`sppdet bench speed`: {settings['images']} test images of the demo (mean size "
        f"{' x '.join(f'{v:g}' for v in settings['image_hw_mean'])}), {settings['proposals']} windows each "
        f"(selective search found {settings['selective_search_boxes_mean']:.0f} per image, random boxes fill up the "
        f"rest), the same windows and model for all three; SPP scales {join(settings['scales_1'])} and "
        f"{join(settings['scales_5'])}, R-CNN crops {settings['rcnn_crop']} px with {settings['rcnn_context']} px of "
        "context. Seconds per image; proposals excluded from the total, as in the paper.",
        speed_table(speed),
        f"![Seconds per image, SPP-net against R-CNN, here and in the paper]({run['figure']})",
        "Conv alone on full-width trunks (`benchmarks/bench_conv.py`): one pass over a 688 x 917 image "
        "against 2,000 windows warped to 224 x 224.",
        conv_table(results["conv"]),
        "Pyramid pooling against torchvision's `roi_pool` on the same bins (`benchmarks/bench_spp.py`, "
        f"{results['spp']['windows']} windows on a {' x '.join(map(str, results['spp']['map']))} map):",
        spp_table(results["spp"]),
        "## Accuracy: the paper's ablation table on the demo dataset",
        "`benchmarks/ablation.py`: VOC07 11-point mAP (%) on the demo's test split. pool5: SVMs on the pooled "
        "conv5 windows; fc7: SVMs on fc7 of the pre-trained head, not fine-tuned; ftfc7: after fine-tuning "
        "fc6-fc7 (conv frozen); bb: plus box regression. The paper's rows (VOC 2007 test) in italics.",
        accuracy_table(ablation),
        *(val_ablation_section(results["ablation_val"]) if results.get("ablation_val") else []),
        levels_table(ablation) if ablation.get("levels") else "",
        "Proposal recall (selective search, the demo's settings; non-difficult objects):",
        recall_table(ablation),
        f"After the ablation, the demo's own stages run again (cache hits) and its eval gives "
        f"{pct(ablation.get('demo_mAP_again'))}, which {demo_match} the demo's mAP ({pct(ablation.get('demo_mAP'))}): "
        "the rows did not disturb each other's caches.",
        "## The demo (`make demo`)",
        f"`benchmarks/demo.py`, {demo['images']} images; "
        + (f"val mAP {pct(demo['val_mAP'])} (the score `sppdet train` chose its settings by, models trained on "
           "train), " if demo.get("val_mAP") is not None else "")
        + f"test mAP {pct(demo['mAP'])} (VOC07; {layer} SVMs and box "
        f"regression at scales {join(ablation['settings'].get('scales_demo', []))}{demo_extras}).",
        demo_table(demo),
        *(datasets_section(results["datasets"]) if results.get("datasets") else []),
        *(faults_section(results["faults"]) if results.get("faults") else []),
        "## Memory and disk",
        "`benchmarks/bench_memory.py`: peak resident memory of each training stage in a fresh process "
        f"(start-up baseline `sppdet --version`: {results['memory']['baseline_rss_mb']:.0f} MB), and the "
        "feature cache (float16) per image.",
        memory_tables(results["memory"]),
        "## VOC evaluation speed",
        "`benchmarks/bench_eval.py`: synthetic detections at VOC 2007 test scale.",
        eval_table(results["eval"]),
        *(voc_section(results["voc"], step_command(run, "voc", "python benchmarks/voc2007_estimate.py"))
          if results.get("voc") else []),
        *(ray_section(results["ray"], results.get("voc"), results["ray"].get("settings", {}).get(
            "cpus", machine["cores"]), step_command(run, "ray", "python benchmarks/bench_ray.py"))
          if results.get("ray") else []),
        "## Reading: where this run matches the paper and where it does not",
        bullets(accuracy_reading(ablation) + speed_reading(speed) + memory_reading(results["memory"])),
        "Why the settings differ:",
        bullets(setting_notes(results)),
        "<details><summary>Every sppdet command of the ablation, in order</summary>\n\n```\n"
        + ablation_commands + "\n```\n</details>",
    ]
    return "\n\n".join(part for part in sections if part) + "\n"
