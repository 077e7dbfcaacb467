"""BENCHMARKS.md's generated text (benchmarks/report_text.py) and the ablation's pure helpers, on
fixed JSON inputs: the tables hold the given numbers, and every verdict of the reading flips with
the numbers it is computed from."""

from __future__ import annotations

import argparse
import copy
import json

import pytest

import report_text  # benchmarks/ is on pytest's pythonpath (pyproject.toml)

SETTINGS = {"scale_1": 448, "scales_demo": [448, 896], "scales_5": [313, 375, 448, 563, 781], "rcnn_crop": 64,
            "rcnn_context": 5, "backbone": "--backbone zf5 --width 0.25", "demo_svm_layer": "pool5"}
ABLATION = {
    "mAP": {"rcnn": {"pool5": 0.40, "fc7": 0.45, "ftfc7": 0.50, "ftfc7 bb": 0.53},
            "spp_5": {"pool5": 0.42, "fc7": 0.44, "ftfc7": 0.49, "ftfc7 bb": 0.52},
            "spp_1": {"pool5": 0.41, "fc7": 0.43, "ftfc7": 0.48, "ftfc7 bb": 0.515},
            "spp_demo": {"pool5": 0.47, "fc7": 0.44, "ftfc7": 0.46, "ftfc7 bb": 0.47}},
    "levels": {"1,2,3,6": 0.41, "6": 0.39, "1": 0.30},
    "recall": {"trainval": {"images": 240, "gt_boxes": 700, "proposals_per_image": 301.4,
                            "recall": {"50": {"0.5": 0.78, "0.7": 0.65}, "all": {"0.5": 0.97, "0.7": 0.91}}},
               "test": {"images": 160, "gt_boxes": 470, "proposals_per_image": 340.6,
                        "recall": {"50": {"0.5": 0.72, "0.7": 0.63}, "all": {"0.5": 0.96, "0.7": 0.93}}}},
    "settings": SETTINGS, "demo_mAP": 0.49, "demo_mAP_again": 0.49, "matches_demo": True,
    "commands": [{"command": "sppdet train-svm --layer pool5", "seconds": 4.1}],
}
SPEED = {
    "spp_1": {"conv": 0.09, "pool": 0.08, "fc": 0.05, "svm": 0.001, "total": 0.221, "proposals": 1.1},
    "spp_5": {"conv": 0.70, "pool": 0.14, "fc": 0.05, "svm": 0.001, "total": 0.891, "proposals": 1.1},
    "rcnn": {"conv": 20.25, "pool": 0.08, "fc": 0.05, "svm": 0.001, "total": 20.381, "proposals": 1.1},
    "speedup_conv_1": 225.0, "speedup_total_1": 92.2, "speedup_conv_5": 28.9, "speedup_total_5": 22.9,
    "settings": {"images": 5, "image_hw_mean": [397.5, 448.5], "proposals": 2000,
                 "selective_search_boxes_mean": 583.0, "scales_1": [688], "scales_5": [480, 576, 688, 864, 1200],
                 "rcnn_crop": 224, "rcnn_context": 16, "rcnn_windows_timed": 200, "torch_threads": 1,
                 "device": "cpu", "model": "trained: work"},
}
MEMORY = {"baseline_rss_mb": 400.0, "settings": {"scales": "448"},
          "rows": [{"stage": "finetune", "images": 100, "peak_rss_mb": 600, "above_startup_mb": 200, "seconds": 9},
                   {"stage": "finetune", "images": 400, "peak_rss_mb": 610, "above_startup_mb": 210, "seconds": 30},
                   {"stage": "train-svm", "images": 100, "peak_rss_mb": 700, "above_startup_mb": 300, "seconds": 9},
                   {"stage": "train-svm", "images": 400, "peak_rss_mb": 1500, "above_startup_mb": 1100,
                    "seconds": 40}],
          "cache": {"images": 400, "file_bytes_per_image": 125000.0, "map_bytes_per_image_per_scale": [124000.0],
                    "map_shape_mean_per_scale": [[64, 28, 31]], "proposals_per_image": 300.0}}


def with_map(method: str, column: str, value: float) -> dict:
    ablation = copy.deepcopy(ABLATION)
    ablation["mAP"][method][column] = value
    return ablation


def test_md_table_aligns_numbers_right():
    assert report_text.md_table(["a", "b"], [["x", 1]]) == "| a | b |\n|---|---:|\n| x | 1 |"


def test_accuracy_table_rows_in_paper_order_in_percent():
    lines = report_text.accuracy_table(ABLATION).splitlines()
    assert lines[0] == "| method | pool5 | fc7 | ftfc7 | ftfc7 bb |"
    assert lines[2] == "| SPP-net, 1 scale (448) | 41.0 | 43.0 | 48.0 | 51.5 |"
    assert lines[3] == "| SPP-net, the demo's scales (448,896) | 47.0 | 44.0 | 46.0 | 47.0 |"
    assert lines[4] == "| SPP-net, 5 scales (313,375,448,563,781) | 42.0 | 44.0 | 49.0 | 52.0 |"
    assert lines[5] == "| R-CNN (crops 64 px, context 5 px) | 40.0 | 45.0 | 50.0 | 53.0 |"
    assert "| *paper: SPP-net ZF-5, 1 scale* | *43.0* | – | *54.5* | *58.0* |" in lines
    assert len(report_text.accuracy_table(ABLATION, with_paper=False).splitlines()) == 6


def test_levels_and_recall_tables():
    levels = report_text.levels_table(ABLATION).splitlines()
    assert levels[2:] == ["| {1,2,3,6} | 50 | 41.0 |", "| {6} | 36 | 39.0 |", "| {1} | 1 | 30.0 |"]
    recall = report_text.recall_table(ABLATION)
    assert "| test | 160 | 470 | all (341 on average) | 0.960 | 0.930 |" in recall
    assert recall.splitlines()[2] == "| trainval | 240 | 700 | first 50 | 0.780 | 0.650 |"
    assert recall.index("| trainval | 240 | 700 | all") < recall.index("| test | 160 | 470 | first 50")


@pytest.mark.parametrize("rcnn_bb, expected", [
    (0.530, "SPP-net at 1 scale is 1.5 points below R-CNN with the same trunk (ftfc7 bb: 51.5 vs 53.0; "
            "paper: 1.2 points below): within 2 points"),
    (0.540, "is 2.5 points below R-CNN"),
    (0.515, "is level with R-CNN"),
    (0.480, "is 3.5 points above R-CNN"),
])
def test_spp_against_rcnn_sentence(rcnn_bb, expected):
    first = report_text.accuracy_reading(with_map("rcnn", "ftfc7 bb", rcnn_bb))[0]
    assert expected in first
    if rcnn_bb == 0.540:
        assert "more than 2 points, so the paper's \"as accurate as R-CNN\" does not hold here" in first
    if rcnn_bb == 0.480:
        assert "ahead by more than 2 points" in first


def test_demo_scales_are_compared_without_a_paper_figure():
    demo = report_text.accuracy_reading(ABLATION)[1]
    assert demo.startswith("SPP-net at the demo's scales is 6.0 points below R-CNN with the same trunk "
                           "(ftfc7 bb: 47.0 vs 53.0): more than 2 points")


def test_scales_sentence_flips():
    lines = report_text.accuracy_reading(ABLATION)
    assert "Five scales against one: +0.5 points with ftfc7 bb and +1.0 with pool5 (paper: +1.2 and +1.9); " \
           "5 scales >= 1 scale, as in the paper." in lines
    worse = report_text.accuracy_reading(with_map("spp_5", "ftfc7 bb", 0.50))
    assert any("-1.5 points with ftfc7 bb" in line and "unlike the paper" in line for line in worse)


def test_gain_sentences_name_the_methods_that_lose():
    lines = report_text.accuracy_reading(ABLATION)
    fine = next(line for line in lines if line.startswith("Fine-tuning"))
    assert fine.startswith("Fine-tuning (fc7 -> ftfc7): SPP 1 scale +5.0, SPP demo scales +2.0, SPP 5 scales +5.0, "
                           "R-CNN +5.0 points")
    assert "(paper, pool5 -> ftfc7: SPP 1 scale +11.5, SPP 5 scales +10.3)" in fine
    assert fine.endswith("as in the paper.")
    losing = report_text.accuracy_reading(with_map("rcnn", "ftfc7 bb", 0.49))
    box = next(line for line in losing if line.startswith("Box regression"))
    assert "R-CNN -1.0" in box and "it adds nothing for R-CNN, unlike the paper" in box


def test_pyramid_sentence_flips():
    lines = report_text.accuracy_reading(ABLATION)
    assert any("{6} 39.0 (+2.0)" in line and "beats every single level" in line for line in lines)
    ablation = copy.deepcopy(ABLATION)
    ablation["levels"]["6"] = 0.45
    assert any("does not beat {6}" in line for line in report_text.accuracy_reading(ablation))


def test_speed_reading_goals():
    first, second = report_text.speed_reading(SPEED)
    assert "225x for conv, 92x in total" in first and "conv >= 100x at 1 scale: met" in first
    slow = copy.deepcopy(SPEED)
    slow["speedup_conv_1"], slow["speedup_total_1"] = 80.0, 15.0
    assert "conv >= 100x at 1 scale: not met; total >= 20x: not met" in report_text.speed_reading(slow)[0]
    assert "mostly conv (41% of 0.221 s)" in second


def test_memory_reading_flat_or_growing():
    finetune, svm = report_text.memory_reading(MEMORY)
    assert finetune.endswith("(+10 MB): flat, it streams.")
    assert svm.endswith("(+800 MB): it grows with the training set.")


def page_inputs() -> tuple[dict, dict, dict]:
    """(results, machine, run) of an older run: the steps every run has, none of report.NEWER."""
    demo = {"seconds": {"synth": 15.0, "eval": 11.0}, "total_seconds": 26.0, "mAP": 0.515, "images": 400}
    results = {"demo": demo, "speed": SPEED, "ablation": ABLATION, "memory": MEMORY,
               "spp": {"windows": 2000, "map": [256, 43, 58],
                       "results": [{"threads": 1, "spp_pool_ms": 268.6, "roi_pool_ms": 741.9, "ratio": 0.362}]},
               "conv": {"rows": [{"backbone": "zf5", "spp_conv_s": 0.9, "rcnn_conv_s": 160.0, "speedup": 177.8,
                                  "mac_ratio": 158.0}]},
               "eval": {"images": 5000, "classes": 20, "per_class": 100, "evaluate_voc07_2_s": [2.6, 2.3]}}
    machine = {"cpu": "Some CPU", "cores": 2, "memory_gb": 24.0, "system": "Linux", "python": "3.11.7",
               "packages": {"torch": "2.15.0"}, "threads": "1", "load": [0.5, 1.5]}
    run = {"date": "2026-11-22", "fresh": True, "command": "make bench", "total_seconds": 1500.0,
           "figure": "benchmarks/speed.png",
           "steps": [{"name": "demo", "command": "python benchmarks/demo.py", "seconds": 400.0},
                     {"name": "ablation", "command": "python benchmarks/ablation.py", "seconds": 600.0,
                      "beside": "memory"}]}
    return results, machine, run


def test_page_has_every_section_and_no_placeholders():
    results, machine, run = page_inputs()
    text = report_text.page(results, machine, run)
    for heading in ("## Machine", "## Commands", "## Speed", "## Accuracy", "## The demo", "## Memory and disk",
                    "## VOC evaluation speed", "## Reading"):
        assert heading in text
    assert "![Seconds per image" in text and "(benchmarks/speed.png)" in text
    assert "| **total** |  | **1500** |" in text and "|---|---|---:|" in text
    assert "| ablation (beside memory) | `python benchmarks/ablation.py` | 600 |" in text
    assert "except those marked \"beside\"" in text
    run["steps"] = run["steps"][:1]
    assert "ran these steps one after another:" in report_text.page(results, machine, run)
    assert "its eval gives 49.0, which equals the demo's mAP (49.0)" in text
    assert "test mAP 51.5 (VOC07; pool5 SVMs and box regression at scales 448, 896)" in text
    assert "None" not in text and "nan" not in text
    assert "## Ray" not in text and "## Pascal VOC 2007" not in text  # an older run: no such steps


def test_ablation_option_helpers():
    import ablation

    argv = ["extract", "--split", "trainval", "--scales", "448"]
    assert ablation.with_option(argv, "--scales", "313,448") == [*argv[:-1], "313,448"]
    assert ablation.with_option(argv, "--method", "rcnn")[-2:] == ["--method", "rcnn"]
    assert ablation.without_option(argv, "--scales") == ["extract", "--split", "trainval"]
    assert ablation.option_value(argv, "--split") == "trainval"
    assert ablation.five_scales(688) == (480, 576, 688, 864, 1200)
    assert ablation.five_scales(448) == (313, 375, 448, 563, 781)


def test_rcnn_crop_follows_the_pretrained_trunk(tmp_path):
    import ablation
    from sppdet.workdir.store import WorkDir

    work = WorkDir(tmp_path)
    assert ablation.rcnn_crop(work, None) == (224, 16)
    work.record_stage("pretrain", {"config": {"sizes": [64, 52], "context": 16}})
    assert ablation.rcnn_crop(work, None) == (64, 5)
    work.record_stage("pretrain", {"config": {"sizes": [64, 96], "context": 16}})
    assert ablation.rcnn_crop(work, None) == (96, 7)
    assert ablation.rcnn_crop(work, 112) == (112, 8)


def test_faults_section_counts_and_skips():
    faults = {"images": 16, "trials": 2, "seed": 0, "cases": [
        {"case": "kill -9 propose", "tried": 2, "survived": 2, "files_lost": 0, "notes": [], "skipped": ""},
        {"case": "full disk during a stage", "tried": 3, "survived": 2, "files_lost": 1, "notes": [], "skipped": ""},
        {"case": "read-only work directory", "tried": 0, "survived": 0, "files_lost": 0, "notes": [],
         "skipped": "no mount here"}]}
    text = "\n".join(report_text.faults_section(faults))
    assert "In all: 4 of 5 survived, 1 files lost." in text
    assert "| full disk during a stage | 3 | 2 | 1 |" in text
    assert "| read-only work directory | skipped: no mount here |  |  |" in text


RAY = {"images": 24, "settings": {"backbone": "zf5", "width": 1.0, "scale": 688, "workers": [1, 2],
                                  "omp_num_threads": "1", "cpus": 2},
       "rows": [{"executor": "local 1", "start_s": 0.0, "propose_images_per_s": 1.0, "extract_images_per_s": 0.5},
                {"executor": "local 2", "start_s": 0.0, "propose_images_per_s": 2.0, "extract_images_per_s": 0.5},
                {"executor": "ray 1", "start_s": 3.0, "propose_images_per_s": 0.9, "extract_images_per_s": 0.45},
                {"executor": "ray 2", "start_s": 3.2, "propose_images_per_s": 1.6, "extract_images_per_s": 0.8}]}
# hours as voc2007_estimate.py computes them: 9,963 images (propose over 2 cores), 4,952 test images
VOC = {"backbone": "vgg16", "device": "cpu", "precision": "bfloat16", "scales": [480, 576, 688, 864, 1200],
       "image_hw": [375, 500], "torch_threads": 1, "cpu_cores": 2, "feature_cache_gb": 412.4,
       "seconds_per_image": {"propose (one core)": 1.5, "extract (5 scales)": 20.0, "pool + fc, 2000 windows": 2.0},
       "hours": {"propose": 1.5 * 9963 / 2 / 3600, "extract": 20.0 * 9963 / 3600, "detect test": 2.0 * 4952 / 3600}}
RAY_COMMAND = "python benchmarks/bench_ray.py --data w/ray/data --images 24 --width 1.0 --scale 688 --json r.json"


@pytest.mark.parametrize("seconds, shown", [(45, "45 s"), (119.4, "119 s"), (120, "2 min"), (7199, "120 min"),
                                            (7200, "2.0 h"), (48 * 3600, "2.0 days")])
def test_duration_units(seconds, shown):
    assert report_text.duration(seconds) == shown


def test_voc_section_table_and_totals():
    title, text, table = report_text.voc_section(VOC, "python benchmarks/voc2007_estimate.py --backbone vgg16")
    assert title == "## Pascal VOC 2007 with vgg16: projected cost"
    assert text.startswith("`python benchmarks/voc2007_estimate.py --backbone vgg16`: ")
    assert "scales 480, 576, 688, 864, 1200; bfloat16 on cpu, 1 torch thread(s)) on a VOC-sized 500 x 375 image" in text
    assert "all 9,963 images (proposals one process per core, 2 cores)" in text and "4,952 test images" in text
    rows = table.splitlines()
    assert rows[0] == "| step | seconds per image | VOC 2007 |"
    assert rows[2:] == ["| propose (one core) | 1.500 | 2.1 h |", "| extract (5 scales) | 20.000 | 55.4 h |",
                        "| pool + fc, 2000 windows | 2.000 | 2.8 h |",
                        "| **per-image steps, in all** |  | **60.2 h** |",
                        "| feature cache on disk (float16 conv5 maps, trainval + test) |  | 412 GB |"]


def test_ray_section_table_and_ratios():
    text = "\n\n".join(report_text.ray_section(RAY, None, 2, RAY_COMMAND))
    assert text.startswith("## Ray on one machine (issue 19)\n\n`" + RAY_COMMAND + "`: 24 synth images")
    assert "extract with random zf5 weights of width 1 at scale 688" in text
    assert "| executor | propose img/s | extract img/s | Ray start s |" in text
    assert "| local 2 | 2.00 | 0.50 | – |" in text and "| ray 2 | 1.60 | 0.80 | 3.2 |" in text
    assert "Propose, ray 2 / local 2 = 0.80 (20% slower): the same 2 processes, so this is Ray's overhead" in text
    assert "ray 2 / local 1 = 1.60 (60% faster): what Ray gains from running 2 processes instead of one" in text
    assert "Extract, ray 2 / local 1 = 1.60 (60% faster)" in text
    assert "Ray 1 / local 1 (one process each) isolates the overhead: propose 0.90, extract 0.90." in text
    faster = copy.deepcopy(RAY)
    faster["rows"][3]["propose_images_per_s"] = 2.2
    assert "ray 2 / local 2 = 1.10 (10% faster)" in "\n".join(report_text.ray_reading(faster))


def test_ray_projection_uses_the_recipe_rate_from_the_voc_step():
    text, table, caveat = report_text.ray_projection(RAY, VOC, 2)
    # propose 1.6 img/s per node (ray 2); extract: ray 2's gain over local 1 (0.8 / 0.5) over vgg16's 20 s
    assert "N nodes of this machine's kind (2 cores each, running ray 2's configuration)" in text
    assert "proposals at ray 2's measured 1.60 img/s per node" in text
    assert ("ray 2's extract gain over local 1 (1.60x, zf5 width 1 at scale 688) applied to the voc step's "
            "one-process time for vgg16 at scales 480, 576, 688, 864, 1200 (20.00 s per image), 1.60 / 20.00 = "
            "0.0800 img/s per node") in text
    assert ("E.g. COCO train2017 on 100 nodes: 118,287 / (100 x 1.60) = 739 s of proposals, 118,287 / (100 x "
            "0.0800) = 14,786 s of features.") in text
    rows = table.splitlines()
    assert rows[0] == "| dataset | images | nodes | proposals | features | both |"
    assert rows[2] == "| VOC 2007 | 9,963 | 1 | 104 min | 34.6 h | 36.3 h |"  # 9,963/1.6 s, 9,963/0.08 s
    assert rows[5] == "| COCO train2017 | 118,287 | 1 | 20.5 h | 17.1 days | 18.0 days |"
    assert rows[7] == "| COCO train2017 | 118,287 | 100 | 12 min | 4.1 h | 4.3 h |"
    assert len(rows) == 2 + 2 * 3
    assert caveat.startswith("An idealised linear projection") and "only 24 images" in caveat


def test_ray_projection_without_the_voc_step_uses_the_measured_trunk():
    text, table, _ = report_text.ray_projection(RAY, None, 2)
    assert ("features at ray 2's measured rate, 0.80 img/s per node (zf5 width 1 at scale 688, not the recipe's "
            "trunk and scales: the voc step did not run)") in text
    assert "| VOC 2007 | 9,963 | 1 | 104 min | 3.5 h | 5.2 h |" in table  # 9,963 / 0.8 s = 3.46 h


def test_ray_section_when_ray_was_not_installed():
    title, line = report_text.ray_section({"skipped": "Ray is not installed in this Python"}, VOC, 2, RAY_COMMAND)
    assert title == "## Ray on one machine (issue 19)"
    assert line == f"Not measured: Ray is not installed in this Python; `{RAY_COMMAND}` did not run."


def test_page_with_the_voc_and_ray_steps():
    results, machine, run = page_inputs()
    results.update(voc=VOC, ray=RAY)
    run["steps"] += [{"name": "voc", "command": "python benchmarks/voc2007_estimate.py --reps 1", "seconds": 90.0},
                     {"name": "ray", "command": RAY_COMMAND, "seconds": 120.0}]
    text = report_text.page(results, machine, run)
    voc, ray, reading = (text.index(h) for h in ("## Pascal VOC 2007 with vgg16", "## Ray on one machine",
                                                 "## Reading"))
    assert text.index("## VOC evaluation speed") < voc < ray < reading
    assert "`python benchmarks/voc2007_estimate.py --reps 1`: seconds per image" in text
    assert f"`{RAY_COMMAND}`: 24 synth images" in text and "1.60 / 20.00 = 0.0800 img/s per node" in text
    results["ray"], run["steps"][-1] = {"skipped": "no Ray"}, {"name": "ray", "command": RAY_COMMAND,
                                                               "seconds": 0.0, "skipped": "no Ray"}
    text = report_text.page(results, machine, run)
    assert "Not measured: no Ray;" in text and f"| ray (skipped: no Ray) | `{RAY_COMMAND}` | 0 |" in text
    assert "None" not in text and "nan" not in text


def report_args(**changes) -> argparse.Namespace:
    values = {"images": 400, "dataset_images": 300, "speed_images": 5, "memory_counts": "100,200,400",
              "eval_images": 5000, "methods": "spp_1,rcnn", "ray_images": 24}
    return argparse.Namespace(**{**values, **changes})


def test_plan_runs_every_step_and_the_new_ones_as_asked(tmp_path):
    import report

    commands = report.plan(tmp_path, report_args(ray_images=7))
    assert set(commands) == set(report.STEPS) == set(report.ORDER) | set(report.BESIDE.values())
    assert set(report.NEWER) >= {"voc", "ray"} and "ray" in report.OWN
    ray, ray_json = commands["ray"]
    assert ray[1].endswith("bench_ray.py") and ray_json == tmp_path / "results" / "ray.raw.json"
    assert ray[2:] == ["--data", str(tmp_path / "ray" / "data"), "--images", "7", "--width", "1.0", "--scale", "688",
                       "--json", str(ray_json)]
    voc, voc_json = commands["voc"]
    assert voc[1].endswith("voc2007_estimate.py") and voc_json == tmp_path / "results" / "voc.raw.json"
    assert voc[2:] == ["--backbone", "vgg16", "--reps", "1", "--json", str(voc_json)]


def test_a_step_whose_package_is_missing_is_recorded_not_run(tmp_path, monkeypatch):
    import report

    monkeypatch.setattr(report, "REQUIRES", {"ray": ("sppdet_no_such_module", "Ray is not installed")})
    assert report.missing_requirement("ray") == "Ray is not installed"
    assert report.missing_requirement("voc") is None
    monkeypatch.setattr(report, "ORDER", ("ray",))
    steps, results = report.run_steps(tmp_path, report_args())
    assert results == {"ray": {"skipped": "Ray is not installed"}}
    assert json.loads((tmp_path / "results" / "ray.json").read_text()) == results["ray"]
    assert steps[0]["skipped"] == "Ray is not installed" and steps[0]["seconds"] == 0.0
    assert "bench_ray.py --data" in steps[0]["command"]
    monkeypatch.setattr(report, "REQUIRES", {"ray": ("json", "unused")})
    assert report.missing_requirement("ray") is None


def test_results_of_an_older_run_lack_the_newer_steps(tmp_path):
    import report

    for name in set(report.STEPS) - set(report.NEWER):
        (tmp_path / f"{name}.json").write_text(json.dumps({"step": name}))
    results = report.load_results(tmp_path)
    assert set(results) == set(report.STEPS) - set(report.NEWER) and results["demo"] == {"step": "demo"}
    (tmp_path / "ray.json").write_text(json.dumps(RAY))
    assert report.load_results(tmp_path)["ray"] == RAY


def test_val_ablation_section_and_its_place_on_the_page():
    val = copy.deepcopy(ABLATION)
    val["mAP"] = {"rcnn": {"pool5": 0.70, "fc7": 0.72, "ftfc7": 0.73, "ftfc7 bb": 0.74},
                  "spp_demo": {"pool5": 0.75, "fc7": 0.50, "ftfc7": 0.76, "ftfc7 bb": 0.77}}
    lines = report_text.val_ablation_section(val)
    assert "| R-CNN (crops 64 px, context 5 px) | 70.0 | 72.0 | 73.0 | 74.0 |" in lines[1]
    assert "*paper" not in lines[1]
    assert lines[-1] == "On val, SPP-net at the demo's scales is 3.0 points above R-CNN (ftfc7 bb: 77.0 vs 74.0)."
    val["mAP"]["spp_demo"]["ftfc7 bb"] = 0.72
    assert "2.0 points below R-CNN" in report_text.val_ablation_section(val)[-1]
    results, machine, run = page_inputs()
    assert "scored on the demo's val split" not in report_text.page(results, machine, run)
    text = report_text.page({**results, "ablation_val": val}, machine, run)
    assert text.index("on the demo's test split") < text.index("scored on the demo's val split") < text.index(
        "Proposal recall")


def test_plan_scores_the_goal_rows_on_val(tmp_path):
    import report

    argv, path = report.plan(tmp_path, report_args())["ablation_val"]
    assert argv[1].endswith("ablation.py") and path == tmp_path / "results" / "ablation_val.raw.json"
    assert argv[argv.index("--split") + 1] == "val" and argv[argv.index("--methods") + 1] == "spp_demo,rcnn"
    assert "ablation_val" in report.NEWER
    assert report.ORDER.index("ablation_val") < report.ORDER.index("ablation")


def test_a_val_ablation_trains_on_train_and_scores_val(monkeypatch, tmp_path):
    import ablation

    stages = {"finetune": ["finetune", "--split", "train"],
              "train-svm": ["train-svm", "--split", "trainval", "--layer", "pool5+fc7", "--augment-positives", "flip"],
              "train-bbox": ["train-bbox", "--split", "trainval"]}
    monkeypatch.setattr(ablation, "demo_stage", lambda name, work: list(stages[name]))

    class FakeRun:
        work, commands, scored = tmp_path, [], []

        def __call__(self, argv):
            self.commands.append(argv)

        def evaluate(self, name, method, bbox_reg, split="test"):
            self.scored.append((name, split))
            return 0.5

    for split, train in (("val", "train"), ("test", "trainval")):
        run = FakeRun()
        run.commands, run.scored = [], []
        rows = ablation.method_rows(run, "rcnn", ["extract", "--split", "trainval"], False, split)
        assert rows["mAP"] == {"pool5": 0.5, "fc7": 0.5, "ftfc7": 0.5, "ftfc7 bb": 0.5}
        assert [c[2] for c in run.commands[:2]] == [train, split]
        trained = [c for c in run.commands if c[0] in ("train-svm", "train-bbox")]
        assert trained and all(c[c.index("--split") + 1] == train for c in trained)
        assert all("--augment-positives" not in c for c in trained)
        assert {s for _, s in run.scored} == {split}
        assert run.scored[-1][0] == ("rcnn-ftfc7-bb" if split == "test" else "rcnn-ftfc7-bb-val")
