"""``drawnet bench`` runs bench/speed.py: a tiny run, checked for what it records."""

from __future__ import annotations

import json

import pytest

from drawnet import cli, kernels


@pytest.fixture
def restore_kernels(monkeypatch):
    # bench/speed.py --no-kernels sets os.environ itself; setenv here records the value to restore
    monkeypatch.setenv("DRAWNET_KERNELS", "1")
    yield
    kernels.reset()


def test_bench_command_without_kernels_records_it(tmp_path, restore_kernels, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--configs", "mnist", "--batches", "2", "--repeats", "1", "--no-memory", "--no-kernels"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "DRAWNET_KERNELS=0" in result["machine"]["drawnet_kernels"]
    (row,) = result["rows"]
    assert row["config"] == "mnist" and row["batch"] == 2
    assert row["drawnet"]["train_images_per_s"] > 0 and row["reference"]["train_images_per_s"] > 0
    # one round: the paired ratio is the ratio of the two timed calls
    ref, mine = row["reference"]["train_seconds"], row["drawnet"]["train_seconds"]
    assert row["train_ratio_paired"] == pytest.approx(ref[0] / mine[0])
    assert result["wall_s"] > 0 and (result["cpu_steal_s"] is None or result["cpu_steal_s"] >= 0)
    assert "drawnet kernels: turned off" in capsys.readouterr().out


def test_classifier_speed_bench_records_each_implementation(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "classifier_speed.py"
    spec = importlib.util.spec_from_file_location("classifier_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "classifier.json"
    assert bench.main(["--presets", "cluttered60-4", "--batches", "3", "--repeats", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["preset"] == "cluttered60-4" and row["batch"] == 3
    assert row["readable_img_s"] > 0 and row["fast_img_s"] > 0 and row["fast_paired_ratio"] > 0
    first = row["first_loss"]
    assert first["fast"] == pytest.approx(first["readable"], rel=1e-5)  # the same model, the same batch
    assert "fast" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--presets", "mnist"])  # a generative preset, not a classifier one
    assert "unknown classifier preset 'mnist'" in capsys.readouterr().err
