"""The command line end to end on a folder of PNGs written here: `drawnet train --data`, a
class-conditional run, and sample --label / --per-class, animate, eval, report and resume on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from drawnet import viz
from drawnet.checkpoint import load_model
from drawnet.cli import main
from drawnet.data import custom

CLASSES = ("ant", "bee", "cat", "dog")
H, W = 9, 7
TINY = ["T=2", "enc_size=16", "dec_size=16", "z_size=3", "batch_size=8", "epochs=1", "max_minutes=null",
        "tensorboard=false", "log_every=1", "valid_batch_size=64"]


def sets(*pairs):
    return [a for kv in (*TINY, *pairs) for a in ("--set", kv)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A labelled folder (4 classes of 6 RGB PNGs), an unlabelled one, and a conditional run trained on the first."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / "pics" / name).mkdir(parents=True)
        for i in range(6):
            a = rng.integers(0, 80, (H, W, 3), dtype=np.uint8)
            a[:, :, k % 3] += 150  # each class its own colour
            Image.fromarray(a).save(root / "pics" / name / f"{i}.png")
    (root / "flat").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(root / "flat" / f"{i}.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRAWNET_DATA", str(root / "cache"))
        custom._MEMO.clear()
        run = root / "cond"
        assert main(["train", "--quiet", "--preset", "demo", "--data", str(root / "pics"), "--out", str(run),
                     *sets("conditional=true")]) == 0
        yield root, run
    custom._MEMO.clear()


def test_train_on_a_labelled_folder_records_the_data_and_fits_the_model(world, capfd):
    root, run = world
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["data"] == "images"
    assert config["train"]["data_options"] == {"path": str((root / "pics").resolve())}  # the preset's options dropped
    assert config["model"]["image_shape"] == [3, H, W]
    assert config["model"]["conditional"] is True and config["model"]["num_classes"] == 4
    model, _ = load_model(run)
    assert model.config.num_classes == 4
    with Image.open(run / "samples" / "epoch_000.png") as im:  # the per-epoch grid: one row per class
        scale = viz.auto_scale(H, W, 64)
        assert im.size[1] == 4 * H * scale + 5 * 2


def test_sample_label_and_per_class(world, capsys):
    root, run = world
    assert main(["sample", str(run), "--label", "2", "-n", "5"]) == 0
    by_index = run / "samples" / "sample_seed0_label2.png"
    assert capsys.readouterr().out.split() == [str(by_index)]
    first = by_index.read_bytes()
    assert main(["sample", str(run), "--label", "cat", "-n", "5"]) == 0  # the class folder's name
    assert by_index.read_bytes() == first
    assert main(["sample", str(run), "--label", "1", "-n", "5", "--out", str(root / "bee.png")]) == 0
    assert (root / "bee.png").read_bytes() != first  # another class, the same noise: other images
    assert main(["sample", str(run), "--per-class", "3", "--scale", "2"]) == 0
    with Image.open(run / "samples" / "sample_seed0_per_class.png") as im:
        assert im.size[1] == 4 * H * 2 + 5 * 2  # 4 rows, one per class
        assert im.size[0] > 3 * W * 2 + 4 * 2  # 3 per row, after a column of class names
    assert main(["sample", str(run), "--label", "3", "-n", "2", "--nearest"]) == 0
    capsys.readouterr()
    for args, message in ((["--label", "7"], "--label 7 is out of range: the model has 4 classes"),
                          (["--label", "emu"], "its classes are ant, bee, cat, dog"),
                          (["-n", "4"], "a conditional model draws a chosen class")):
        assert main(["sample", str(run), *args]) == 2
        assert message in capsys.readouterr().err


def test_animate_eval_and_report_of_a_conditional_run(world, capsys):
    root, run = world
    assert main(["animate", str(run), "-n", "3", "--label", "dog", "--out", str(root / "g.gif")]) == 0
    assert main(["animate", str(run), "-n", "2", "--reconstruct", "--out", str(root / "r.gif")]) == 0
    for name in ("g.gif", "g_strip.png", "r.gif", "r_strip.png"):
        with Image.open(root / name) as im:
            assert im.size[0] > 0
    capsys.readouterr()
    assert main(["eval", str(run), "--iw", "2"]) == 0
    out = capsys.readouterr().out
    assert "NLL bound on -log p(x | y)" in out and "not comparable with the paper's Table 2" in out
    assert json.loads((run / "eval.json").read_text())["bound_of"] == "-log p(x | y)"
    assert main(["report", str(run), "-n", "4", "--n-animate", "2"]) == 0
    page = (run / "report.html").read_text()
    assert "bound on −log p(x | y)" in page and "One row per class" in page and "class-conditional" in page


def test_a_conditional_run_resumes(world, capsys):
    root, run = world
    assert main(["train", "--quiet", "--resume", str(run), "--set", "epochs=2"]) == 0
    assert "(of -log p(x | y), the label given)" in capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "valid"] == [0, 1]
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--data", str(root / "pics")]) == 2
    assert "--data cannot be given with --resume" in capsys.readouterr().err


def test_unlabelled_folder_trains_unconditionally_and_refuses_labels(world, tmp_path, capsys):
    root, _ = world
    run = tmp_path / "plain"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRAWNET_DATA", str(root / "cache"))
        assert main(["train", "--quiet", "--preset", "demo", "--data", str(root / "flat"), "--out", str(run),
                     *sets()]) == 0
        assert "image_shape (1, 28, 28) replaced by the data's (1, 9, 7)" in capsys.readouterr().err
        assert main(["sample", str(run), "-n", "4"]) == 0
        for args in (["--label", "1"], ["--per-class", "2"]):
            capsys.readouterr()
            assert main(["sample", str(run), *args]) == 2
            assert "this model is unconditional" in capsys.readouterr().err
        assert main(["train", "--preset", "demo", "--data", str(root / "flat"), "--out", str(tmp_path / "c"),
                     *sets("conditional=true")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("drawnet: error: a conditional model (conditional=true) needs labelled images")
        assert not (tmp_path / "c").exists()


def test_a_fixed_image_shape_resizes_the_images(world, tmp_path, capsys):
    root, _ = world
    run = tmp_path / "resized"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRAWNET_DATA", str(root / "cache"))
        assert main(["train", "--quiet", "--preset", "demo", "--data", str(root / "pics"), "--out", str(run),
                     *sets("image_shape=[1,6,6]")]) == 0
    assert "resizing the images to the model's image_shape (1, 6, 6)" in capsys.readouterr().err
    options = json.loads((run / "config.json").read_text())["train"]["data_options"]
    assert options["size"] == [6, 6] and options["channels"] == 1


# --------------------------------------------------------------------------------- the presets
def test_the_fashion_and_conditional_presets(capsys):
    from drawnet.presets import PRESETS, resolve

    model, train = resolve("fashion-mnist")
    assert (model.T, model.read_n, model.write_n, model.z_size) == (64, 2, 5, 100)  # Table 3's MNIST row
    assert train.data == "binarized_fashion_mnist" and train.data_options == {"dynamic": True}
    assert train.max_minutes is not None and not model.conditional
    model, train = resolve("mnist-conditional")
    assert model.conditional and model.num_classes == 10 and train.data == "binarized_mnist"
    assert train.max_minutes is not None
    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in PRESETS) and "conditional on 10 classes" in listing


def test_mnist_conditional_preset_end_to_end(fake_mnist_cached, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DRAWNET_DATA", str(fake_mnist_cached.root))
    run = tmp_path / "mc"
    assert main(["train", "--quiet", "--preset", "mnist-conditional", "--out", str(run),
                 *sets("batch_size=10", "valid_limit=10")]) == 0
    assert main(["sample", str(run), "--label", "7", "-n", "4"]) == 0
    assert main(["sample", str(run), "--per-class", "2", "--scale", "1"]) == 0
    with Image.open(run / "samples" / "sample_seed0_per_class.png") as im:
        assert im.size[1] == 10 * 28 + 11 * 2  # one row per digit
    assert capsys.readouterr().out.split() == [str(run / "samples" / "sample_seed0_label7.png"),
                                               str(run / "samples" / "sample_seed0_per_class.png")]
