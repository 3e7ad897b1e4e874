"""scripts/long-runs.sh: snapshot a run into long-runs/NAME and continue it from there, on another CPU too."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import sets

from drawnet import checkpoint, engine
from drawnet.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "long-runs.sh"


@pytest.fixture
def project(tmp_path):
    """A folder laid out like the repository for the script: scripts/long-runs.sh and .venv (this venv)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "long-runs.sh")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return tmp_path


def long_runs(project, *args, env=None):
    return subprocess.run(["bash", str(project / "scripts" / "long-runs.sh"), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def step(run):
    return checkpoint.load_checkpoint(run / "checkpoints" / "last.safetensors").trainer_state["step"]


@pytest.mark.slow
def test_snapshot_and_continue_on_a_fresh_machine_and_a_bf16_run_where_bf16_is_emulated(project):
    run = project / "runs" / "r"
    assert main(["train", "--quiet", "--preset", "demo", "--out", str(run),
                 *sets("max_steps=2", "precision=bf16", "device=cpu")]) == 0
    done = long_runs(project, "snapshot", "r")
    assert done.returncode == 0, done.stderr
    assert (project / "long-runs" / "r" / "checkpoints" / "last.safetensors").is_file()
    shutil.rmtree(project / "runs")  # a fresh machine: only what is committed is there

    done = long_runs(project, "continue", "r", "--set", "max_steps=3", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "restoring runs/r from long-runs/r" in done.stdout
    assert step(run) == 3
    native, why = engine.native_bf16(torch.device("cpu"))
    switched = "continuing with --set precision=auto" in done.stderr
    assert switched == (not native), done.stderr
    if not native:
        assert why in done.stderr
        assert json.loads((run / "config.json").read_text())["train"]["precision"] == "auto"

    # without drawnet's kernels no CPU multiplies bfloat16 natively for drawnet: the switch is made
    # on every machine; a precision on the command line (either spelling) is kept as given
    no_kernels = {"DRAWNET_KERNELS": "0"}
    for n, given in ((4, ["--set", "precision=bf16"]), (5, ["--set", "train.precision=bf16"]), (6, [])):
        done = long_runs(project, "continue", "r", "--set", f"max_steps={n}", *given, "--quiet", env=no_kernels)
        assert done.returncode == 0, done.stderr
        assert ("continuing with --set precision=auto" in done.stderr) == (not given), done.stderr
        expected = "bf16" if given else "auto"
        assert json.loads((run / "config.json").read_text())["train"]["precision"] == expected and step(run) == n
    # a run that is not bf16 is left alone
    done = long_runs(project, "continue", "r", "--set", "max_steps=7", "--quiet", env=no_kernels)
    assert done.returncode == 0 and "precision=auto" not in done.stderr, done.stderr

    done = long_runs(project, "continue", "nothing")
    assert done.returncode == 2 and "nothing to continue" in done.stderr and "Traceback" not in done.stderr
