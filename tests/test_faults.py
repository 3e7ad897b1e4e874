"""Fault injection into real ``drawnet`` processes on tiny runs (issue 12): kill -9 at random
moments and in the middle of saves, two writers at once, a full file system, damaged checkpoints.

Every process runs the command line's ``main`` in a fresh interpreter. To kill a process while it
saves, ``SLOW_SAVES`` starts it with ``os.replace`` slowed down for checkpoints: each save then
spends ``delay`` seconds with its temporary file written and not yet renamed, the moment a crash
is most likely to leave something behind. Slow tier (CI runs it); about a minute on two busy cores.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_robustness import (
    TINY,
    assert_same_weights,
    best,
    flip_bytes,
    last,
    records,
    snapshot,
    train,
)

import drawnet
from drawnet import checkpoint, rundir

pytestmark = pytest.mark.slow

# A record and a checkpoint after every step (the tests run 20 to 45 steps: 20 steps an epoch).
PAIRS = ("log_every=1", "checkpoint_minutes=1e-9")

SLOW_SAVES = """
import os, sys, time
delay, real_replace = float(sys.argv[1]), os.replace

def replace(src, dst, *args, **kwargs):
    if str(dst).endswith(".safetensors"):
        time.sleep(delay)
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace
from drawnet.cli import main
sys.exit(main(sys.argv[2:]))
"""


def command(*args: str, delay: float = 0.0) -> list[str]:
    return [sys.executable, "-c", SLOW_SAVES, str(delay), *args]


def environment() -> dict[str, str]:
    src = str(Path(drawnet.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def start(*args: str, delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(command(*args, delay=delay), env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def fresh(out: Path, *pairs: str) -> list[str]:
    return ["train", "--quiet", *TINY, "--out", str(out), *(a for kv in pairs for a in ("--set", kv))]


def resumed(run: Path, *pairs: str) -> list[str]:
    return ["train", "--quiet", "--resume", str(run), *(a for kv in pairs for a in ("--set", kv))]


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("drawnet: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def temporaries(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.suffix]


def wait_for(condition, timeout: float = 120.0, every: float = 0.002) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """reference(steps): an uninterrupted in-process run of ``steps`` steps with PAIRS (cached)."""
    runs: dict[int, Path] = {}

    def run_of(steps: int) -> Path:
        if steps not in runs:
            runs[steps] = tmp_path_factory.mktemp("reference") / f"steps{steps}"
            assert train(runs[steps], f"max_steps={steps}", *PAIRS) == 0
        return runs[steps]

    return run_of


def assert_like(run: Path, ref: Path) -> None:
    """Bit-identical weights, the same metrics, nothing left behind, steps increasing per kind."""
    assert temporaries(run) == []
    assert_same_weights(run, ref)
    assert records(run) == records(ref)
    for kind in ("train", "valid"):
        steps = [step for k, step, _ in records(run) if k == kind]
        assert steps == sorted(set(steps)), (kind, steps)


# ------------------------------------------------------------------ kill -9
def test_kill_9_at_random_moments_and_during_saves(tmp_path, reference):
    """Seven processes killed in turn, then one left to finish: the run ends exactly as if never
    interrupted. Every other kill comes during a save (the n-th save that process began, n random,
    at least 2 so that the first process leaves a checkpoint to resume from), the others at a
    random moment, starting up included. After the first kill a torn record is appended to
    metrics.jsonl, as a kill inside a write would leave it."""
    rng = random.Random(12)
    run = tmp_path / "run"
    folder = run / rundir.CHECKPOINT_DIR
    kills, during_save, torn = 0, 0, False
    for attempt in range(7):
        old = set(temporaries(run))
        proc = start(*(fresh(run, "max_steps=45", *PAIRS) if attempt == 0 else resumed(run)), delay=0.15)
        if attempt % 2 == 0:
            seen: set[Path] = set()
            wanted = rng.randint(2, 6)

            def saving(seen=seen, old=old, wanted=wanted, proc=proc):
                seen.update(set(folder.glob(".*.tmp")) - old)
                return len(seen) >= wanted or proc.poll() is not None

            wait_for(saving)
        else:
            time.sleep(rng.uniform(1.0, 4.0))
        if proc.poll() is not None:  # it finished before the kill
            _, err = proc.communicate()
            assert proc.returncode == 0, err
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
        during_save += bool(set(temporaries(run)) - old)
        assert last(run).exists()
        checkpoint.load_checkpoint(last(run))  # whole and verified, whenever the kill came
        if not torn:
            with open(run / rundir.METRICS_FILE, "a") as f:
                f.write('{"kind": "train", "epoch": 0, "st')
            torn = True
    assert kills >= 3 and during_save >= 1, (kills, during_save)
    proc = start(*resumed(run))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_like(run, reference(45))
    report = start("report", str(run), "-n", "4", "--n-animate", "1")
    _, err = report.communicate(timeout=300)
    assert report.returncode == 0 and "Traceback" not in err, err
    assert (run / rundir.REPORT_FILE).stat().st_size > 1000


# ------------------------------------------------------------------ two writers
def test_a_second_writer_exits_at_once_and_the_first_finishes(tmp_path, reference):
    run = tmp_path / "run"
    first = start(*fresh(run, "max_steps=30", *PAIRS), delay=0.4)  # about 12 s of saving
    assert wait_for(lambda: (run / rundir.METRICS_FILE).exists() or first.poll() is not None, every=0.05)
    assert first.poll() is None, first.communicate()[1]
    assert (run / rundir.LOCK_FILE).read_text().strip() == str(first.pid)
    for args in (resumed(run, "max_steps=60"), fresh(run, "max_steps=60")):
        second = start(*args)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2
        line = one_error_line(err)
        assert f"(pid {first.pid})" in line or "already holds a run" in line, line
    assert first.poll() is None, "the second writer should have been refused while the first trained"
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_like(run, reference(30))


def test_two_writers_started_together_leave_one_correct_run(tmp_path, reference):
    run = tmp_path / "run"
    assert train(run, "max_steps=20", *PAIRS) == 0
    writers = [start(*resumed(run, "max_steps=45"), delay=0.05) for _ in range(2)]
    results = [(w.pid, w.communicate(timeout=300)[1], w.returncode) for w in writers]
    assert 0 in [rc for _, _, rc in results], results
    for pid, err, rc in results:
        if rc != 0:  # refused while the other held the lock
            other = next(p for p, _, _ in results if p != pid)
            assert rc == 2 and f"(pid {other})" in one_error_line(err), err
    assert_like(run, reference(45))


# ------------------------------------------------------------------ a full file system
@pytest.fixture
def small_tmpfs(tmp_path):
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
                                 capture_output=True, text=True)
    except OSError as err:
        pytest.skip(f"cannot mount a tmpfs here ({err})")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_file_system_is_one_line_and_loses_nothing(small_tmpfs, reference):
    run = small_tmpfs / "run"
    proc = start(*fresh(run, "max_steps=20", *PAIRS))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    filler = small_tmpfs / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill it up, then leave less than a checkpoint's size free
        try:
            while True:
                f.write(bytes(1 << 16))
        except OSError:
            pass
    os.truncate(filler, max(filler.stat().st_size - 200 * 1024, 0))
    before = {name: data for name, data in snapshot(run).items() if name.endswith(".safetensors")}
    proc = start(*resumed(run, "max_steps=30"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert one_error_line(err) == f"drawnet: error: No space left on device: {last(run)}"
    assert {n: d for n, d in snapshot(run).items() if n.endswith(".safetensors")} == before
    assert temporaries(run) == []
    filler.unlink()  # space again: the run continues as if nothing had happened
    proc = start(*resumed(run, "max_steps=30"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_like(run, reference(30))


# ------------------------------------------------------------------ damaged checkpoints
def test_damaged_checkpoints_are_one_line_naming_the_file_and_overwrite_nothing(tmp_path):
    run = tmp_path / "run"
    assert train(run, "max_steps=25") == 0
    flip_bytes(best(run), "model.")
    flip_bytes(last(run), "optim.")  # Adam's moments
    before = snapshot(run)
    for args, path in ((["eval", str(run)], best(run)), (["sample", str(run)], best(run)),
                       (resumed(run, "max_steps=40"), last(run))):
        proc = start(*args)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err
        line = one_error_line(err)
        assert f"{path} is damaged" in line, line
    assert snapshot(run) == before
    assert json.loads((run / rundir.CONFIG_FILE).read_text())["train"]["max_steps"] == 25
