"""``drawnet bench`` runs bench/speed.py: a tiny run, checked for what it records."""

from __future__ import annotations

import json

import pytest
import torch

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


def test_attention_gradients_bench_measures_rows_and_the_clip(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from drawnet import DRAW, DRAWConfig

    path = Path(__file__).resolve().parent.parent / "bench" / "attention_gradients.py"
    spec = importlib.util.spec_from_file_location("attention_gradients", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    model = DRAW(DRAWConfig(image_shape=(1, 9, 8), T=3, enc_size=8, dec_size=8, z_size=2, read_n=2, write_n=3))
    images = torch.rand(12, 1, 9, 8).bernoulli()
    result = bench.measure(model.train(), images, batches=2, clips=[1e-9], batch_size=6)
    for layer in ("read_params", "write_params"):
        s = result["layers"][layer]
        assert s["rows"] == 2 * 3 * 6  # batches x steps x images
        q = list(s["quantiles"].values())
        assert q == sorted(q) and q[0] > 0
        assert 0 < s["share_top_0.1%"] <= s["share_top_1%"] <= 1
        assert 1 / 12 <= s["share_largest_image"] <= 1 and s["images_in_top_0.1%"] == 1
        assert len(s["steps_of_top_0.1%"]) == 1 and 0 <= s["steps_of_top_0.1%"][0] < 3
    plain, clipped = result["batches"]["none"], result["batches"]["1e-09"]
    assert [b["loss"] for b in plain] == [b["loss"] for b in clipped]  # the forward pass is the same
    assert all(b["fraction_clipped"] == 1.0 and b["attention_norm"] < 1e-6 for b in clipped)
    assert all(p["attention_norm"] > 1e-3 for p in plain)
    # a model without attention: one clear line, no traceback
    noattn = tmp_path / "noattn"
    assert cli.main(["train", "--preset", "demo", "--out", str(noattn), "--quiet", "--set", "read_n=null", "--set",
                "write_n=null", "--set", "max_steps=1", "--set", "data=synthetic", "--set", "batch_size=8",
                "--set", 'data_options={"n":16,"image_shape":[1,28,28]}', "--set", "tensorboard=false",
                "--set", "pictures=false"]) == 0
    capsys.readouterr()
    assert bench.main([str(noattn), "--data", "synthetic"]) == 2
    assert "has no attention" in capsys.readouterr().err
