"""``make bench``: run every benchmark once, then write BENCHMARKS.md and its speed figure from that run.

Steps, each a subprocess (JSON kept in ``WORKDIR/results/<step>.json``; commands and seconds in
``run.json``), in this order, one at a time so that no timing shares the cores with another step:

    demo      benchmarks/demo.py --workdir WORKDIR/demo --images N       (make demo's chain, timed)
    speed     sppdet bench speed --workdir WORKDIR/demo --images K        (the demo's trained model)
    spp       benchmarks/bench_spp.py
    conv      benchmarks/bench_conv.py
    eval      benchmarks/bench_eval.py                                    (its JSON line on stdout)
    ablation_val  benchmarks/ablation.py --split val --methods spp_demo,rcnn  (the goal's two rows
                                                                          scored on val, SVMs on train)
    ablation  benchmarks/ablation.py --workdir WORKDIR/demo               (reuses the demo's caches)
    memory    benchmarks/bench_memory.py --workdir WORKDIR/memory         (in the background, beside
                                                                           the ablation: see BESIDE)
    voc       benchmarks/voc2007_estimate.py --backbone vgg16 --reps 1   (the VOC 2007 recipe's cost)
    ray       benchmarks/bench_ray.py --data WORKDIR/ray/data --images 24 --width 1.0 --scale 688
                                                                          (local against Ray; skipped, and
                                                                           the page says so, without Ray)
    faults    benchmarks/faults.py --workdir WORKDIR/faults               (kills, full disk, ...: no timing)

then renders the page with ``benchmarks/report_text.py`` (tables and the reading, computed from
these numbers) and draws ``benchmarks/speed.png`` beside it (seconds per image, log scale, here
and in the paper). ``--fresh`` empties WORKDIR first, so the demo's times are a first run (``make
bench`` passes it); without it every cache is reused and the page says so. ``--from-results``
runs nothing and re-renders the page from ``WORKDIR/results`` (steps of ``NEWER`` that an older
run lacks lose their sections). The size options exist to try the report quickly on a small run;
``make bench`` uses the defaults.

Usage: python benchmarks/report.py [--workdir sppdet-work/bench] [--fresh] [--out BENCHMARKS.md]
           [--from-results] [--images 400] [--speed-images 5] [--memory-counts 100,200,400]
           [--eval-images 5000] [--ray-images 24] [--methods spp_1,spp_5,rcnn]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata, util
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import report_text
from sppdet.executors import INSTALL_HINT
from sppdet.fileio import atomic_path, atomic_write_text, read_json

HERE = Path(__file__).resolve().parent
STEPS = ("demo", "datasets", "speed", "ablation_val", "ablation", "spp", "conv", "eval", "memory", "voc", "ray",
         "faults")
#: Steps that runs older than them lack: ``--from-results`` renders without their sections.
NEWER = ("datasets", "voc", "ray", "faults", "ablation_val")
#: Steps run one at a time in this order: nothing else runs while a step is timed ...
ORDER = ("demo", "datasets", "speed", "spp", "conv", "eval", "voc", "ray", "ablation_val", "ablation", "faults")
#: ... except these, which run in the background beside the step named: on two cores, with one
#: torch thread each, neither slows the other much, and neither one's result is a timing that the
#: page compares (the ablation reports mAP; bench_memory peak memory, its seconds are indicative).
BESIDE = {"ablation": "memory"}
#: What this script writes in WORKDIR; --fresh empties only a folder that holds nothing else.
OWN = ("demo", "datasets", "memory", "ray", "faults", "results")
#: Steps that need an optional package: (module, why the step is skipped without it).
REQUIRES = {"ray": ("ray", f"Ray is not installed in this Python ({INSTALL_HINT})")}
PACKAGES = {"torch": "torch", "torchvision": "torchvision", "OpenCV": "opencv-contrib-python-headless",
            "numpy": "numpy", "scikit-learn": "scikit-learn"}


def shown(path: str | os.PathLike) -> str:
    """``path`` relative to the current directory when it lies below it, for printed commands."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def sppdet_script() -> str:
    """The sppdet console script next to this interpreter, else the one on PATH."""
    local = Path(sys.executable).with_name("sppdet")
    return str(local) if local.exists() else (shutil.which("sppdet") or "sppdet")


def plan(work: Path, args) -> dict[str, tuple[list[str], Path | None]]:
    """Per step: (command line, the JSON file it writes, or None: its last JSON line on stdout)."""
    work = Path(shown(work))  # relative where possible: the commands go on the page
    results, demo_work = work / "results", work / "demo"
    python = [sys.executable]
    return {
        "demo": ([*python, str(HERE / "demo.py"), "--workdir", str(demo_work), "--images", str(args.images)],
                 demo_work / "demo-times.json"),
        "datasets": ([*python, str(HERE / "datasets.py"), "--workdir", str(work / "datasets"), "--images",
                      str(args.dataset_images), "--json", str(results / "datasets.raw.json")],
                     results / "datasets.raw.json"),
        "speed": ([sppdet_script(), "bench", "speed", "--workdir", str(demo_work), "--images",
                   str(args.speed_images), "--json", str(results / "speed.raw.json"), "--quiet"],
                  results / "speed.raw.json"),
        "ablation": ([*python, str(HERE / "ablation.py"), "--workdir", str(demo_work), "--images", str(args.images),
                      "--methods", args.methods, "--json", str(results / "ablation.raw.json")],
                     results / "ablation.raw.json"),
        "ablation_val": ([*python, str(HERE / "ablation.py"), "--workdir", str(demo_work), "--images",
                          str(args.images), "--split", "val", "--methods", "spp_demo,rcnn",
                          "--json", str(results / "ablation_val.raw.json")],
                         results / "ablation_val.raw.json"),
        "spp": ([*python, str(HERE / "bench_spp.py"), "--json", str(results / "spp.raw.json")],
                results / "spp.raw.json"),
        "conv": ([*python, str(HERE / "bench_conv.py"), "--json", str(results / "conv.raw.json")],
                 results / "conv.raw.json"),
        "eval": ([*python, str(HERE / "bench_eval.py"), "--images", str(args.eval_images)], None),
        "memory": ([*python, str(HERE / "bench_memory.py"), "--workdir", str(work / "memory"), "--counts",
                    args.memory_counts, "--json", str(results / "memory.raw.json")], results / "memory.raw.json"),
        "voc": ([*python, str(HERE / "voc2007_estimate.py"), "--backbone", "vgg16", "--reps", "1",
                 "--json", str(results / "voc.raw.json")], results / "voc.raw.json"),
        "ray": ([*python, str(HERE / "bench_ray.py"), "--data", str(work / "ray" / "data"), "--images",
                 str(args.ray_images), "--width", "1.0", "--scale", "688", "--json", str(results / "ray.raw.json")],
                results / "ray.raw.json"),
        "faults": ([*python, str(HERE / "faults.py"), "--workdir", str(work / "faults"),
                    "--json", str(results / "faults.raw.json")], results / "faults.raw.json"),
    }


def command_text(argv: list[str]) -> str:
    """``argv`` as the page shows it: "python" and "sppdet" for the interpreter and console script,
    paths relative to the current directory."""
    names = {sys.executable: "python", sppdet_script(): "sppdet"}
    return " ".join(names.get(a) or shown(a) for a in argv)


def missing_requirement(name: str) -> str | None:
    """Why step ``name`` cannot run in this Python (an optional package of ``REQUIRES`` is not
    installed; the steps run with this interpreter), else None."""
    module, why = REQUIRES.get(name, (None, None))
    return why if module is not None and util.find_spec(module) is None else None


class Step:
    """One benchmark subprocess, started at construction: in the foreground its stdout streams
    through; in the background (``log`` given) it goes to that file, printed when it finishes."""

    def __init__(self, name: str, argv: list[str], json_file: Path | None, log: Path | None = None):
        self.name, self.json_file, self.log = name, json_file, log
        self.command = command_text(argv)
        print(f"\n######## {name}{' (in the background)' if log else ''}: {self.command}", flush=True)
        self.start = time.perf_counter()
        self.sink = open(log, "w", encoding="utf-8") if log else subprocess.PIPE
        self.process = subprocess.Popen(argv, stdout=self.sink, stderr=subprocess.STDOUT if log else None,
                                        text=True, bufsize=1)

    def finish(self) -> dict:
        """Wait for it; {name, command, seconds, json}. Exits on failure or when no JSON came."""
        last_json = None
        if self.log is None:
            for line in self.process.stdout:
                sys.stdout.write(line)
                last_json = line if line.startswith("{") else last_json
        code = self.process.wait()
        seconds = time.perf_counter() - self.start
        if self.log is not None:
            self.sink.close()
            text = self.log.read_text(encoding="utf-8")
            print(f"\n######## {self.name} (ran in the background), its output:\n{text}", flush=True)
            last_json = next((line for line in reversed(text.splitlines()) if line.startswith("{")), None)
        if code != 0:
            sys.exit(f"report: step {self.name} failed (exit {code}): {self.command}")
        data = read_json(self.json_file) if self.json_file is not None else json.loads(last_json or "null")
        if data is None:
            sys.exit(f"report: step {self.name} printed no JSON line: {self.command}")
        return {"name": self.name, "command": self.command, "seconds": round(seconds, 1), "json": data}


def run_steps(work: Path, args) -> tuple[list[dict], dict]:
    """Every step in ``ORDER``, one at a time, except that each step of ``BESIDE`` runs in the
    background during its partner; (steps without their JSON, {name: JSON}). A step missing an
    optional package is not run: its JSON and its entry say why."""
    commands = plan(work, args)
    steps, results = [], {}
    for name in ORDER:
        reason = missing_requirement(name)
        if reason is not None:
            print(f"\n######## {name}: skipped, {reason}", flush=True)
            results[name] = {"skipped": reason}
            atomic_write_text(work / "results" / f"{name}.json", json.dumps(results[name], indent=2))
            steps.append({"name": name, "command": command_text(commands[name][0]), "seconds": 0.0,
                          "skipped": reason, "beside": None})
            continue
        partner = BESIDE.get(name)
        background = (Step(partner, *commands[partner], log=work / "results" / f"{partner}.log")
                      if partner else None)
        finished = [Step(name, *commands[name]).finish()] + ([background.finish()] if background else [])
        for step in finished:
            results[step["name"]] = step.pop("json")
            atomic_write_text(work / "results" / f"{step['name']}.json", json.dumps(results[step["name"]], indent=2))
            steps.append({**step, "beside": BESIDE.get(step["name"]) or next(
                (k for k, v in BESIDE.items() if v == step["name"]), None)})
    return steps, results


def load_results(folder: Path) -> dict:
    """{step: its JSON} from ``folder`` (``WORKDIR/results``); a step of ``NEWER`` that an older run
    did not have (no file) is left out, and the page leaves out its section."""
    return {name: read_json(folder / f"{name}.json") for name in STEPS
            if name not in NEWER or (folder / f"{name}.json").is_file()}


def machine_info(load_start: float) -> dict:
    """The machine and software, from /proc and the installed packages."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    memory_gb = float("nan")
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total = [line.split()[1] for line in meminfo.read_text().splitlines() if line.startswith("MemTotal")]
        memory_gb = int(total[0]) / 2**20 if total else memory_gb
    packages = {}
    for label, dist in PACKAGES.items():
        try:
            packages[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gb": memory_gb,
            "system": f"{platform.system()} {platform.release()} ({platform.machine()})",
            "python": platform.python_version(), "packages": packages,
            "threads": os.environ.get("OMP_NUM_THREADS", "unset (torch's default)"),
            "load": [load_start, os.getloadavg()[0]]}


def speed_figure(speed: dict, path: Path) -> None:
    """Seconds per image (conv and total, log scale) of SPP-net 1 / 5 scales and R-CNN, this run
    beside the paper's GPU numbers; PNG at ``path``."""
    figure = Figure(figsize=(10, 4))
    FigureCanvasAgg(figure)
    labels = ["SPP-net\n1 scale", "SPP-net\n5 scales", "R-CNN"]
    x, width = np.arange(len(report_text.SPEED_METHODS)), 0.38
    panels = ((speed, f"this run: {speed['settings']['device']}, {speed['settings']['torch_threads']} thread(s)"),
              (report_text.PAPER_TIMING, "paper: GPU, ZF-5"))
    for axes, (data, title) in zip(figure.subplots(1, 2), panels):
        conv = [data[m]["conv"] for m in report_text.SPEED_METHODS]
        total = [data[m]["total"] for m in report_text.SPEED_METHODS]
        axes.bar(x - width / 2, conv, width, label="conv", color="tab:blue")
        bars = axes.bar(x + width / 2, total, width, label="total (proposals excluded)", color="tab:orange")
        for bar, value in zip(bars, total):
            axes.annotate(f"{value:.3g} s", (bar.get_x() + bar.get_width() / 2, value), ha="center",
                          va="bottom", fontsize=8)
        axes.set_yscale("log")
        axes.set_xticks(x, labels)
        axes.set_ylim(top=max(total) * 4)
        speedup = data["rcnn"]["total"] / data["spp_1"]["total"]
        axes.set_title(f"{title}\nSPP-net 1 scale: {speedup:.0f}x faster than R-CNN in total", fontsize=10)
        axes.set_ylabel("seconds per image (log scale)")
        axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="sppdet-work/bench", help="scratch folder for every step")
    parser.add_argument("--out", default="BENCHMARKS.md", help="the page to write; the figure goes beside it")
    parser.add_argument("--fresh", action="store_true", help="empty --workdir first (a run from scratch)")
    parser.add_argument("--from-results", action="store_true", help="run nothing; render WORKDIR/results")
    parser.add_argument("--images", type=int, default=400, help="demo images")
    parser.add_argument("--dataset-images", type=int, default=300, help="images of each scenery dataset")
    parser.add_argument("--speed-images", type=int, default=5, help="images timed by sppdet bench speed")
    parser.add_argument("--memory-counts", default="100,200,400", help="bench_memory training-set sizes")
    parser.add_argument("--eval-images", type=int, default=5000, help="bench_eval images")
    parser.add_argument("--ray-images", type=int, default=24, help="bench_ray images")
    parser.add_argument("--methods", default=",".join(report_text.METHODS), help="ablation methods")
    parser.add_argument("--command", default=None, help="how the run was started, for the page "
                        "(default: this script's command line)")
    args = parser.parse_args()
    work, out = Path(args.workdir).resolve(), Path(args.out).resolve()
    figure = out.parent / "benchmarks" / "speed.png"
    summary_path = work / "results" / "run.json"
    if args.from_results:
        run = read_json(summary_path)
        results = load_results(work / "results")
    else:
        if args.fresh and work.exists():
            strangers = sorted(p.name for p in work.iterdir() if p.name not in OWN)
            if strangers:
                sys.exit(f"report: --fresh would delete {work}, which holds {', '.join(strangers[:3])}, not "
                         f"only this script's {', '.join(OWN)}; pass a --workdir of its own")
            shutil.rmtree(work)
        (work / "results").mkdir(parents=True, exist_ok=True)
        load_start, started = os.getloadavg()[0], time.perf_counter()
        steps, results = run_steps(work, args)
        run = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "fresh": args.fresh, "steps": steps,
               "command": args.command or "python " + " ".join(shown(a) for a in sys.argv),
               "total_seconds": round(time.perf_counter() - started, 1), "machine": machine_info(load_start)}
        atomic_write_text(summary_path, json.dumps(run, indent=2))
    run["figure"] = os.path.relpath(figure, out.parent)
    speed_figure(results["speed"], figure)
    atomic_write_text(out, report_text.page(results, run["machine"], run))
    print(f"\nreport: wrote {shown(out)} and {shown(figure)} ({run['total_seconds']:.0f} s of benchmarks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
