"""`drawnet classify train / eval / presets` end to end on tiny synthetic data (CPU, seconds)."""

from __future__ import annotations

import json

import pytest

from drawnet.checkpoint import load_checkpoint
from drawnet.cli import main
from drawnet.presets import CLASSIFIER_PRESETS

TINY = [
    "--set", "data=synthetic",
    "--set", 'data_options={"image_shape": [1, 16, 16], "n": 64}',
    "--set", "image_shape=[1, 16, 16]",
    "--set", "num_classes=3",
    "--set", "glimpses=2",
    "--set", "hidden_size=16",
    "--set", "read_n=3",
    "--set", "batch_size=16",
    "--set", "valid_batch_size=32",
    "--set", "log_every=2",
    "--set", "tensorboard=false",
    "--set", "device=cpu",
]


def _records(run, kind):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_train_eval_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["classify", "train", "--preset", "cluttered100-8", *TINY, "--set", "epochs=1",
                 "--out", str(run), "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "classifier" and config["preset"] == "cluttered100-8"
    assert config["model"]["glimpses"] == 2 and config["train"]["data"] == "synthetic"
    assert (run / "checkpoints" / "best.safetensors").is_file()
    train, valid = _records(run, "train"), _records(run, "valid")
    assert len(train) == 2 and {"loss", "error", "images_per_s"} <= set(train[0])
    assert len(valid) == 1 and 0.0 <= valid[0]["error"] <= 1.0

    assert main(["classify", "train", "--out", str(run), "--resume", "--set", "epochs=2", "--quiet"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.safetensors").trainer_state["epoch"] == 2
    assert [r["epoch"] for r in _records(run, "valid")] == [0, 1]

    capsys.readouterr()
    assert main(["classify", "eval", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Differentiable RAM, 8 glimpses, 12x12" in out and "3.36 %" in out
    result = json.loads((run / "eval.json").read_text())
    assert result["split"] == "test" and result["num_images"] == 64
    assert f"{result['error'] * 100:.2f} %" in out
    assert main(["classify", "eval", str(run), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["error"] == result["error"]


def test_errors(tmp_path, capsys):
    assert main(["classify", "train", "--preset", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "cluttered100-8" in capsys.readouterr().err
    assert main(["classify", "train", "--preset", "cluttered100-8", "--set", "glimpse=3",
                 "--out", str(tmp_path / "r")]) == 2
    assert "glimpses" in capsys.readouterr().err  # the message lists the valid settings
    assert main(["classify", "train", "--resume", str(tmp_path / "missing")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(["classify", "eval", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # DRAW's clip of the attention gradient is not the classifier's: refused, not ignored
    assert main(["classify", "train", "--preset", "cluttered100-4", *TINY, "--set", "attention_grad_clip=10",
                 "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "attention_grad_clip=10 is implemented for DRAW's training only" in capsys.readouterr().err


def test_resume_refuses_model_changes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["classify", "train", "--preset", "cluttered100-4", *TINY, "--set", "max_steps=1",
                 "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["classify", "train", "--resume", str(run), "--set", "glimpses=3"]) == 2
    assert "cannot change ['glimpses']" in capsys.readouterr().err


def test_presets_listing(capsys):
    assert main(["classify", "presets"]) == 0
    out = capsys.readouterr().out
    for name in CLASSIFIER_PRESETS:
        assert name in out
    assert main(["classify", "presets", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(CLASSIFIER_PRESETS)


@pytest.mark.parametrize("argv", [["classify"], ["classify", "train"]])
def test_usage(argv, capsys):
    assert main(argv) == 2


@pytest.mark.slow
def test_data_parallel_classifier_matches_one_process(tmp_path):
    """Two processes (torchrun, gloo) of the fast glimpse recurrence end with the weights of one
    process on the same global batches: its hand-written backward reaches DDP's gradient hooks."""
    import os
    import subprocess
    import sys

    import torch

    args = ["--preset", "cluttered100-4", *TINY, "--set", "epochs=2", "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["classify", "train", *args, "--out", str(one)]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29521",
           "-m", "drawnet.cli", "classify", "train", *args, "--out", str(two)]
    result = subprocess.run(cmd, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fast glimpse recurrence" in result.stderr
    a = load_checkpoint(one / "checkpoints" / "last.safetensors").model_state
    b = load_checkpoint(two / "checkpoints" / "last.safetensors").model_state
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=2e-4, msg=name)
