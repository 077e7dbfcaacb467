"""The fault suite's slow cases (issue 17): kill -9 at random moments of each stage, a killed pool
worker, concurrent runs, a read-only and a full work directory. The fast cases are
tests/test_faults.py.

Every case runs the real ``sppdet`` command in subprocesses on a small ``sppdet synth`` dataset
and compares the work directory with a clean, uninterrupted reference run of the same chain:

* **files lost**: cache and model files (``.npy``, ``.npz``, ``.pt``) of the reference that are
  missing or differ (bytes) once the case is over and its stage has been re-run; must be 0;
* **survived**: the interrupted or failing command ended (no hang: every command has a timeout),
  without a traceback, with one error line where it failed, no temporary file was left behind,
  and the re-run finished with exit 0 and the reference's files.

Cases:

* ``kill -9 <stage>`` (``--trials`` times per stage): the stage started on a copy of the work
  directory as the reference left it before that stage, killed (its whole process group, pool
  workers included) at a random moment within its reference duration, then re-run.
* ``Ctrl-C <stage>``: SIGINT to the stage's process group at a random moment (as a terminal
  sends it): no traceback from it or its workers; then re-run.
* ``worker killed``: one propose pool worker killed; propose must stop with one line, not hang.
* ``two identical runs at once``, ``two shards at once``: propose twice side by side; each either
  finishes or says the folder is busy; then a plain run completes.
* ``read-only work directory``: a fully trained work directory behind a read-only bind mount;
  re-running every stage must succeed without writing.
* ``full disk``: each writing stage on a tmpfs sized so the disk fills during the stage; the
  stage must fail with one line and leave no partial file; moved to a large disk, it completes.

The bind mount and tmpfs need root (``mount``); without it those cases are reported as skipped,
with the reason.

Usage: python benchmarks/faults.py --workdir W [--images 16] [--trials 2] [--seed 0] [--json F]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CACHE_SUFFIXES = (".npy", ".npz", ".pt")
TIMEOUT = 600  # seconds for any one command: a hang is a failed case, not a stuck suite
TINY_PRETRAIN = ["--width", "0.125", "--epochs", "3", "--sizes", "32", "--hidden", "32,32"]
#: The chain, in order: (name, arguments after ``sppdet``). Small settings keep it under a minute.
CHAIN = [
    ("propose trainval", ["propose", "--split", "trainval", "--workers", "2"]),
    ("propose test", ["propose", "--split", "test", "--workers", "2"]),
    ("pretrain", ["pretrain", "--split", "trainval", *TINY_PRETRAIN]),
    ("extract trainval", ["extract", "--split", "trainval"]),
    ("extract test", ["extract", "--split", "test"]),
    ("finetune", ["finetune", "--split", "trainval", "--epochs", "3", "--hidden", "32,32"]),
    ("train-svm", ["train-svm", "--split", "trainval"]),
    ("train-bbox", ["train-bbox", "--split", "trainval"]),
]


@dataclass
class Case:
    """One row of the report."""

    case: str
    tried: int = 0
    survived: int = 0
    files_lost: int = 0
    notes: list[str] = field(default_factory=list)
    skipped: str = ""


@dataclass
class Ran:
    code: int | None  # None: killed by us or timed out
    output: str
    seconds: float


#: The dataset every command of the chain reads (set by main): passed to each, so a copy of a
#: work directory from before the first stage works as well as one from later.
DATA: list[str] = []


def sppdet_argv(work: Path, args: list[str]) -> list[str]:
    """The command line of ``sppdet ARGS --quiet`` on work directory ``work`` (and ``DATA``)."""
    local = Path(sys.executable).with_name("sppdet")
    return [str(local) if local.exists() else "sppdet", *args, *DATA, "--workdir", str(work), "--quiet"]


def start(work: Path, args: list[str]) -> subprocess.Popen:
    """``sppdet ARGS`` in its own process group (so a kill reaches its pool workers too)."""
    return subprocess.Popen(sppdet_argv(work, args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(process: subprocess.Popen, began: float, timeout: float = TIMEOUT) -> Ran:
    """Wait for ``process`` (killing its group after ``timeout``): its exit code and output."""
    try:
        output, _ = process.communicate(timeout=timeout)
        return Ran(process.returncode, output, time.perf_counter() - began)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return Ran(None, output + f"\n[timed out after {timeout} s]", time.perf_counter() - began)


def run(work: Path, args: list[str], timeout: float = TIMEOUT) -> Ran:
    """Run ``sppdet ARGS`` to its end."""
    began = time.perf_counter()
    return finish(start(work, args), began, timeout)


def run_signalled(work: Path, args: list[str], after: float, signum: int) -> Ran:
    """Start ``sppdet ARGS``, send ``signum`` to its process group ``after`` seconds later (if
    still running) and wait for it to end (a hang after the signal times out after 120 s). An
    exit by the signal itself, or 0, reads as code None: only a positive code is a failure."""
    began = time.perf_counter()
    process = start(work, args)
    try:
        process.wait(timeout=after)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signum)
    ran = finish(process, began, timeout=120)
    return ran if ran.code is None or ran.code > 0 else Ran(None, ran.output, ran.seconds)


def digests(work: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every cache and model file below ``work``."""
    return {str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(work.rglob("*")) if p.is_file() and p.suffix in CACHE_SUFFIXES}


def lost(reference: dict[str, str], work: Path) -> int:
    """How many of ``reference``'s files are missing from ``work`` or differ."""
    now = digests(work)
    return sum(now.get(name) != digest for name, digest in reference.items())


def temp_files(work: Path) -> list[str]:
    """Temporary files left by atomic writes (``.<name>...tmp``)."""
    return [str(p.relative_to(work)) for p in work.rglob(".*.tmp")]


def clean_failure(ran: Ran) -> str:
    """"" when a failed command failed cleanly (ended, one error line, no traceback), else why not."""
    if ran.code is None and "[timed out" in ran.output:
        return "hung (timed out)"
    if "Traceback" in ran.output:
        return "traceback: " + ran.output.strip().splitlines()[-1][:160]
    errors = [line for line in ran.output.splitlines() if line.startswith("Error:")]
    if ran.code not in (None, 0) and len(errors) != 1:
        return f"exit {ran.code} with {len(errors)} error lines: {ran.output.strip()[-160:]}"
    return ""


def reference_run(root: Path) -> tuple[list[Path], list[dict[str, str]], list[float]]:
    """The clean chain: snapshots of the work directory after each stage (index 0: before the
    first), their cache digests and each stage's seconds."""
    work = root / "reference"
    (work / "config.json").parent.mkdir(parents=True, exist_ok=True)
    snapshots, sums, seconds = [], [], []
    for index, (name, args) in enumerate([("start", None), *CHAIN]):
        if args is not None:
            ran = run(work, args)
            if ran.code != 0:
                sys.exit(f"faults: reference {name} failed:\n{ran.output}")
            seconds.append(ran.seconds)
            print(f"reference {name}: {ran.seconds:.1f} s", flush=True)
        snapshot = root / f"after-{index}"
        shutil.copytree(work, snapshot, symlinks=True)
        snapshots.append(snapshot)
        sums.append(digests(snapshot))
    return snapshots, sums, seconds


def trial_dir(root: Path, snapshot: Path, name: str) -> Path:
    """A fresh copy of ``snapshot`` to break."""
    work = root / "trials" / name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(snapshot, work, symlinks=True)
    return work


def kill_cases(root: Path, snapshots, sums, seconds, trials: int, rng: random.Random) -> list[Case]:
    """kill -9 each stage at random moments, then re-run it."""
    cases = []
    for index, (name, args) in enumerate(CHAIN):
        case = Case(f"kill -9 {name}")
        for trial in range(trials):
            work = trial_dir(root, snapshots[index], f"kill-{index}-{trial}")
            after = rng.uniform(0.1, 0.9) * max(seconds[index], 0.5)
            killed = run_signalled(work, args, after, signal.SIGKILL)
            again = run(work, args)
            case.tried += 1
            problem = clean_failure(killed) or (f"re-run exit {again.code}: {again.output.strip()[-160:]}"
                                                if again.code != 0 else "")
            missing = lost(sums[index + 1], work)
            leftovers = temp_files(work)
            case.files_lost += missing
            if problem or missing or leftovers:
                case.notes.append(f"killed at {after:.1f} s: {problem or ''} lost {missing} "
                                  f"left {leftovers[:3]}".strip())
            else:
                case.survived += 1
        cases.append(case)
        print(f"{case.case}: {case.survived}/{case.tried}", flush=True)
    return cases


def interrupt_cases(root: Path, snapshots, sums, seconds, rng: random.Random) -> list[Case]:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) at a random moment of
    each stage: no traceback from the command or its workers, then a re-run completes."""
    cases = []
    for index, (name, args) in enumerate(CHAIN):
        case = Case(f"Ctrl-C {name}", tried=1)
        work = trial_dir(root, snapshots[index], f"sigint-{index}")
        after = rng.uniform(0.3, 0.9) * max(seconds[index], 0.5)
        ran = run_signalled(work, args, after, signal.SIGINT)
        again = run(work, args)
        problem = ("traceback: " + ran.output.strip().splitlines()[-1][:160] if "Traceback" in ran.output
                   else "hung after Ctrl-C" if "[timed out" in ran.output else
                   f"re-run exit {again.code}" if again.code != 0 else "")
        case.files_lost = lost(sums[index + 1], work)
        if problem or case.files_lost or temp_files(work):
            case.notes.append(f"interrupted at {after:.1f} s: {problem} lost {case.files_lost}")
        else:
            case.survived = 1
        cases.append(case)
    return cases


def worker_kill_case(root: Path, snapshots, sums, seconds: float) -> Case:
    """Kill one propose pool worker about half-way through propose (``seconds``: its reference
    duration): propose must stop with one line (never hang); a re-run completes."""
    case = Case("propose pool worker killed")
    work = trial_dir(root, snapshots[0], "worker")
    args = CHAIN[0][1]
    began = time.perf_counter()
    process = start(work, args)
    children: list[int] = []
    while time.perf_counter() - began < 60 and process.poll() is None and not children:
        time.sleep(0.2)
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                                                    text=True).stdout.split()]
        # the pool's workers are the children running sppdet's worker entry point (not the
        # resource tracker): pick the last started
        children = [c for c in children if "resource_tracker" not in _cmdline(c)]
    case.tried = 1
    if not children:
        case.notes.append("no worker seen before propose ended")
        finish(process, began)
        return case
    time.sleep(max(0.0, 0.5 * seconds - (time.perf_counter() - began)))
    os.kill(children[-1], signal.SIGKILL)
    ran = finish(process, began, timeout=120)
    again = run(work, args)
    problem = clean_failure(ran) or ("" if again.code == 0 else f"re-run exit {again.code}")
    case.files_lost = lost(sums[1], work)
    if ran.code == 0:
        case.notes.append("propose finished although a worker was killed (killed after its last item?)")
    if not problem and not case.files_lost:
        case.survived = 1
    else:
        case.notes.append(problem or f"lost {case.files_lost}")
    first_error = next((line for line in ran.output.splitlines() if line.startswith("Error:")), "")
    if first_error:
        case.notes.append(first_error[:200])
    return case


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def concurrent_cases(root: Path, snapshots, sums) -> list[Case]:
    """Two proposes side by side: identical runs, then two shards; then a plain run completes."""
    cases = []
    args = CHAIN[0][1]
    for label, pair in (("two identical proposes at once", [args, args]),
                        ("two propose shards at once", [[*args, "--shard", "1/2"], [*args, "--shard", "2/2"]])):
        case = Case(label, tried=1)
        work = trial_dir(root, snapshots[0], label.replace(" ", "-"))
        began = time.perf_counter()
        processes = [start(work, a) for a in pair]
        results = [finish(p, began) for p in processes]
        final = run(work, args)
        problems = [clean_failure(r) for r in results if r.code != 0]
        problems = [p for p in problems if p] + ([f"final exit {final.code}"] if final.code != 0 else [])
        case.files_lost = lost(sums[1], work)
        busy = [r for r in results if r.code not in (0, None)]
        case.notes.extend(next((line[:200] for line in r.output.splitlines() if line.startswith("Error:")), "")
                          for r in busy)
        if not problems and not case.files_lost and not temp_files(work):
            case.survived = 1
        case.notes.extend(problems)
        cases.append(case)
    return cases


def _mount(argv: list[str]) -> str:
    """Run a mount command; "" on success, else why it failed."""
    done = subprocess.run(argv, capture_output=True, text=True)
    return "" if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


def read_only_case(root: Path, snapshots, sums) -> Case:
    """A fully trained work directory behind a read-only bind mount: every stage re-runs from its
    caches without writing (exit 0)."""
    case = Case("read-only work directory")
    source = trial_dir(root, snapshots[-1], "read-only-source")
    view = root / "trials" / "read-only"
    view.mkdir(parents=True, exist_ok=True)
    why = _mount(["mount", "--bind", str(source), str(view)]) or _mount(
        ["mount", "-o", "remount,ro,bind", str(view)])
    if why:
        subprocess.run(["umount", str(view)], capture_output=True)
        case.skipped = f"no read-only bind mount here ({why})"
        return case
    try:
        for name, args in CHAIN:
            case.tried += 1
            ran = run(view, args)
            if ran.code == 0:
                case.survived += 1
            else:
                case.notes.append(f"{name}: exit {ran.code}: {ran.output.strip()[-200:]}")
        case.files_lost = lost(sums[-1], view)
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)
    return case


def _disk_bytes(folder: Path, block: int = 4096) -> int:
    """What ``folder`` takes on a disk of ``block``-byte blocks (each file and folder rounded up)."""
    return sum(-(-p.stat().st_size // block) * block if p.is_file() else block for p in folder.rglob("*"))


def _on_small_disk(root: Path, snapshot: Path, args: list[str], size: int, label: str):
    """Run ``sppdet ARGS`` on a copy of ``snapshot`` on a tmpfs of ``size`` bytes: (its result,
    the copy moved to a large disk afterwards) or (None, why no tmpfs could be mounted)."""
    disk = root / "trials" / f"disk-{label}"
    disk.mkdir(parents=True, exist_ok=True)
    why = _mount(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)])
    if why:
        return None, why
    try:
        work = disk / "work"
        shutil.copytree(snapshot, work, symlinks=True)
        ran = run(work, args)
        return ran, trial_dir(root, work, f"disk-moved-{label}")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def full_disk_case(root: Path, snapshots, sums) -> Case:
    """Each writing stage on a tmpfs that fills half-way through the stage (or, where the stage
    still finished, one with no room left at all): one error line, no partial or temporary file;
    then, on a large disk, the stage completes with the reference's files."""
    case = Case("full disk during a stage")
    for index, (name, args) in enumerate(CHAIN):
        before, after = _disk_bytes(snapshots[index]), _disk_bytes(snapshots[index + 1])
        if after <= before:
            continue  # the stage writes nothing
        half = before + max(4096, (after - before) // 2 // 4096 * 4096)
        for attempt, size in enumerate((half, before)):
            ran, moved = _on_small_disk(root, snapshots[index], args, size, f"{index}-{attempt}")
            if ran is None:
                case.skipped = f"no tmpfs mount here ({moved})"
                return case
            if ran.code != 0:
                break
        case.tried += 1
        if ran.code == 0:
            case.notes.append(f"{name}: finished even with no room left (exit 0)")
            continue
        problem = clean_failure(ran)
        partial = [n for n, d in digests(moved).items() if n not in sums[index] and sums[index + 1].get(n) != d]
        leftovers = temp_files(moved)
        again = run(moved, args)
        missing = lost(sums[index + 1], moved)
        case.files_lost += missing
        if problem or partial or leftovers or again.code != 0 or missing:
            case.notes.append(f"{name}: {problem} partial {partial[:2]} left {leftovers[:2]} "
                              f"re-run exit {again.code} lost {missing}")
        else:
            case.survived += 1
            first_error = next((line for line in ran.output.splitlines() if line.startswith("Error:")), "")
            case.notes.append(f"{name}: {first_error[:160]}")
    return case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = args.workdir.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    data = root / "data"
    began = time.perf_counter()
    local = Path(sys.executable).with_name("sppdet")
    synth = subprocess.run([str(local) if local.exists() else "sppdet", "synth", str(data), "--images",
                            str(args.images), "--quiet"], capture_output=True, text=True)
    DATA[:] = ["--data", str(data)]
    if synth.returncode != 0:
        sys.exit(f"faults: synth failed:\n{synth.stdout}{synth.stderr}")
    snapshots, sums, seconds = reference_run(root)
    rng = random.Random(args.seed)
    cases = [*kill_cases(root, snapshots, sums, seconds, args.trials, rng),
             *interrupt_cases(root, snapshots, sums, seconds, rng),
             worker_kill_case(root, snapshots, sums, seconds[0]),
             *concurrent_cases(root, snapshots, sums),
             read_only_case(root, snapshots, sums),
             full_disk_case(root, snapshots, sums)]
    result = {"images": args.images, "trials": args.trials, "seed": args.seed,
              "seconds": round(time.perf_counter() - began, 1),
              "cases": [asdict(c) for c in cases]}
    for c in cases:
        print(f"{c.case:34s} {c.survived}/{c.tried} lost {c.files_lost} {c.skipped} {'; '.join(c.notes)[:300]}")
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
