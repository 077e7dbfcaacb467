"""``sppdet eval`` on a tiny hand-written VOC dataset (annotations only: eval reads no images)."""

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli.eval import eval_command
from sppdet.data.voc import Annotation, write_annotation, write_split
from sppdet.workdir.store import WorkDir

# name: (boxes in continuous pixels, class names, difficult)
TEST = {
    "t1": ([[10, 10, 50, 50], [60, 60, 90, 90]], ["circle", "square"], [0, 0]),
    "t2": ([[0, 0, 20, 20], [30, 30, 70, 70]], ["circle", "circle"], [1, 0]),
    "t3": ([[5, 5, 45, 45]], ["square"], [0]),
}
TRAINVAL = {"v1": ([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]],
                    ["triangle", "circle", "square"], [0, 0, 0])}

# Devkit results, 1-based inclusive pixels: t1's circle (10, 10, 50, 50) is "11 11 50 50".
CIRCLE = """t1 0.9 11 11 50 50
t2 0.8 1 1 20 20
t1 0.75 11 11 50 50
t2 0.7 31 31 70 70
"""
SQUARE = """t3 0.5 6 6 45 45
t1 0.4 70 70 90 90
"""
# circle: TP, ignored (difficult box), FP (t1's box already claimed), TP; npos 2
#   recall .5 .5 .5 1, precision 1 1 .5 2/3
#   voc07: t = 0..0.5 -> 1, t = 0.6..1 -> 2/3: (6 + 5 * 2/3) / 11 = 28/33; area: .5 + .5 * 2/3
# square: TP, FP (IoU 21*21 / 900 = 0.49); npos 2; voc07 6/11, area 0.5
# triangle: no positives in test -> null, left out of the mean
EXPECTED = {
    "voc07": {"circle": 28 / 33, "square": 6 / 11},
    "area": {"circle": 0.5 + 0.5 * 2 / 3, "square": 0.5},
}


def write_dataset(root):
    for split, images in (("test", TEST), ("trainval", TRAINVAL)):
        for image_id, (boxes, names, difficult) in images.items():
            annotation = Annotation(image_id, 100, 100, np.array(boxes, np.float32), tuple(names),
                                    np.array(difficult, bool))
            write_annotation(root / "Annotations" / f"{image_id}.xml", annotation)
        write_split(root, split, list(images))


@pytest.fixture
def setup(tmp_path):
    root, results = tmp_path / "voc", tmp_path / "results"
    write_dataset(root)
    results.mkdir()
    (results / "comp4_det_test_circle.txt").write_text(CIRCLE)
    (results / "comp4_det_test_square.txt").write_text(SQUARE)
    return tmp_path, root, results


def run(tmp_path, *args):
    result = CliRunner().invoke(eval_command, ["--workdir", str(tmp_path / "work"), *args])
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize("metric", ["voc07", "area"])
def test_scores_hand_written_results_files(setup, metric):
    tmp_path, root, results = setup
    out = tmp_path / "ap.json"
    result = run(tmp_path, "--data", str(root), "--split", "test", "--metric", metric,
                 "--detections", str(results), "--json", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data) == {"metric", "iou", "split", "mAP", "classes"}
    assert (data["metric"], data["iou"], data["split"]) == (metric, 0.5, "test")
    assert list(data["classes"]) == ["circle", "square", "triangle"]
    for name, ap in EXPECTED[metric].items():
        assert data["classes"][name]["ap"] == pytest.approx(ap, abs=1e-12)
    assert data["classes"]["circle"]["npos"] == 2 and data["classes"]["circle"]["ndet"] == 4
    assert data["classes"]["square"]["npos"] == 2 and data["classes"]["square"]["ndet"] == 2
    assert data["classes"]["triangle"] == {"ap": None, "npos": 0, "ndet": 0}
    assert data["mAP"] == pytest.approx(sum(EXPECTED[metric].values()) / 2, abs=1e-12)
    assert "circle" in result.output and f"{data['mAP']:.4f}" in result.output


def test_scores_coco_json(setup):
    tmp_path, root, _ = setup
    rows = [(line.split(), "circle") for line in CIRCLE.splitlines()]
    rows += [(line.split(), "square") for line in SQUARE.splitlines()]
    entries = [{"image_id": f[0], "category": name, "score": float(f[1]),
                "bbox": [float(f[2]) - 1, float(f[3]) - 1, float(f[4]) - float(f[2]) + 1,
                         float(f[5]) - float(f[3]) + 1]} for f, name in rows]
    (tmp_path / "d.json").write_text(json.dumps(entries))
    result = run(tmp_path, "--data", str(root), "--detections", str(tmp_path / "d.json"),
                 "--json", str(tmp_path / "ap.json"))
    assert result.exit_code == 0, result.output
    classes = json.loads((tmp_path / "ap.json").read_text())["classes"]
    assert classes["circle"]["ap"] == pytest.approx(28 / 33, abs=1e-12)
    assert classes["square"]["ap"] == pytest.approx(6 / 11, abs=1e-12)


def test_plots(setup):
    tmp_path, root, results = setup
    result = run(tmp_path, "--data", str(root), "--detections", str(results),
                 "--plots", str(tmp_path / "plots"))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["pr_circle.png", "pr_square.png", "pr_triangle.png", "summary.png"]
    assert all((tmp_path / "plots" / n).read_bytes().startswith(b"\x89PNG") for n in names)


def test_analyze_writes_the_error_analysis(setup):
    tmp_path, root, results = setup
    (root / "JPEGImages").mkdir()
    for image_id in TEST:
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), np.full((100, 100, 3), 128, np.uint8))
    result = run(tmp_path, "--data", str(root), "--detections", str(results), "--analyze", str(tmp_path / "why"))
    assert result.exit_code == 0, result.output
    written = {p.name for p in (tmp_path / "why").iterdir()}
    assert {"analysis.json", "confusion_matrix.png", "confusion_matrix.csv", "false_positives.png"} <= written
    assert any(name.startswith("worst_") for name in written)
    assert json.loads((tmp_path / "why" / "analysis.json").read_text())


def test_analyze_without_images_is_one_line(setup):
    tmp_path, root, results = setup
    result = run(tmp_path, "--data", str(root), "--detections", str(results), "--analyze", str(tmp_path / "why"))
    assert result.exit_code == 1 and result.output.count("Error") == 1, result.output
    assert "image for 't1' not found" in result.output and not (tmp_path / "why").exists()


def test_data_root_recorded_in_workdir(setup):
    tmp_path, root, results = setup
    result = run(tmp_path, "--detections", str(results))
    assert result.exit_code == 1 and "no dataset recorded" in result.output
    WorkDir(tmp_path / "work").set_data_root(root)
    result = run(tmp_path, "--detections", str(results))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name,text,message", [
    ("circle", CIRCLE + "t3 0.1 1 1 20\n", "comp4_det_test_circle.txt:5: expected"),
    ("circle", "t1 x 1 1 2 2\n", "comp4_det_test_circle.txt:1: expected"),
    ("square", SQUARE + "t9 0.1 1 1 20 20\n",
     "comp4_det_test_square.txt:3: image 't9' is not in split 'test'"),
    ("hexagon", "t1 0.1 1 1 20 20\n", "comp4_det_test_hexagon.txt: unknown class 'hexagon'"),
])
def test_bad_results_files_are_one_line_errors(setup, name, text, message):
    tmp_path, root, results = setup
    (results / f"comp4_det_test_{name}.txt").write_text(text)
    result = run(tmp_path, "--data", str(root), "--detections", str(results), "--quiet")
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1


def test_without_detections_needs_a_trained_detector(setup):
    tmp_path, root, _ = setup
    result = run(tmp_path, "--data", str(root), "--quiet")
    assert result.exit_code == 1 and "no trained detector" in result.output


def test_bad_options_are_usage_errors(setup):
    tmp_path, root, results = setup
    assert run(tmp_path, "--data", str(root), "--detections", str(results), "--iou", "2").exit_code == 2
    assert run(tmp_path, "--data", str(root), "--metric", "bogus").exit_code == 2


def test_help_and_registration():
    result = CliRunner().invoke(eval_command, ["--help"])
    assert result.exit_code == 0 and "Example:" in result.output
    import click

    from cli.main import cli

    assert cli.get_command(click.Context(cli), "eval") is eval_command
