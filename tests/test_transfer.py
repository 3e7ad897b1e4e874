"""Starting a run from another model's weights (TrainConfig.init_from, drawnet.transfer)."""

from __future__ import annotations

import json

import pytest
import torch

from drawnet import DRAWConfig, attention, checkpoint, transfer
from drawnet.classifier import AttentionClassifier
from drawnet.cli import main
from drawnet.config import ClassifierConfig
from drawnet.model import DRAW

SMALL = {"T": 3, "enc_size": 16, "dec_size": 16, "z_size": 4, "read_n": 3, "write_n": 3}


def saved(tmp_path, config, name="source.safetensors", kind="draw", cls=DRAW):
    torch.manual_seed(1)
    model = cls(config)
    with torch.no_grad():  # non-trivial attention biases, so the rescaling shows
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    path = checkpoint.save_checkpoint(tmp_path / name, kind=kind, model=model, model_config=config.to_dict())
    return model, path


def test_same_size_copies_every_weight(tmp_path):
    config = DRAWConfig(image_shape=(1, 12, 10), **SMALL)
    source, path = saved(tmp_path, config)
    target = DRAW(config)
    how = transfer.initialise_from(target, "draw", str(path))
    assert str(path) in how and "rescaled" not in how
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_larger_image_keeps_windows_in_pixels(tmp_path):
    source, path = saved(tmp_path, DRAWConfig(image_shape=(1, 12, 10), **SMALL))
    target = DRAW(DRAWConfig(image_shape=(1, 31, 40), canvas_init=-4.0, **SMALL))
    how = transfer.initialise_from(target, "draw", str(path))
    assert "rescaled from 12x10 to 31x40" in how
    h = torch.randn(7, 16)
    for layer in ("read_params", "write_params"):
        before = attention.window_from_raw(getattr(source, layer)(h), 3, 10, 12)
        after = attention.window_from_raw(getattr(target, layer)(h), 3, 40, 31)
        # the centre's offset from the image centre, (A + 1)/2 and (B + 1)/2 (eqs 22-23), and the stride (24)
        torch.testing.assert_close(after.gx - 41 / 2, before.gx - 11 / 2)
        torch.testing.assert_close(after.gy - 32 / 2, before.gy - 13 / 2)
        for field in ("delta", "sigma2", "gamma"):
            torch.testing.assert_close(getattr(after, field), getattr(before, field), msg=field)
    # c_0 is the new model's own; every other weight is the source's
    assert torch.equal(target.canvas0, torch.full((1, 31, 40), -4.0))
    for k in ("encoder.weight_ih", "decoder.weight_hh", "posterior.weight", "write_out.weight", "h_dec0"):
        assert torch.equal(target.state_dict()[k], source.state_dict()[k]), k


def test_refusals_name_what_does_not_fit(tmp_path):
    _, path = saved(tmp_path, DRAWConfig(image_shape=(1, 12, 10), **SMALL))
    with pytest.raises(ValueError, match=r"settings that differ: z_size: 4 there, 6 here"):
        transfer.initialise_from(DRAW(DRAWConfig(image_shape=(1, 12, 10), **(SMALL | {"z_size": 6}))), "draw",
                                 str(path))
    with pytest.raises(ValueError, match="the channels must match"):
        transfer.initialise_from(DRAW(DRAWConfig(image_shape=(3, 12, 10), **SMALL)), "draw", str(path))
    _, flat = saved(tmp_path, DRAWConfig(image_shape=(1, 12, 10), **(SMALL | {"read_n": None, "write_n": None})),
                    name="flat.safetensors")
    bigger = DRAW(DRAWConfig(image_shape=(1, 14, 10), **(SMALL | {"read_n": None, "write_n": None})))
    with pytest.raises(ValueError, match="only a DRAW with read and write attention can change its image size"):
        transfer.initialise_from(bigger, "draw", str(flat))
    classifier_cfg = ClassifierConfig(image_shape=(1, 12, 10), glimpses=2, hidden_size=8, read_n=3, num_classes=3)
    _, cls_path = saved(tmp_path, classifier_cfg, name="cls.safetensors", kind="classifier", cls=AttentionClassifier)
    with pytest.raises(ValueError, match="holds a 'classifier' model; this run trains a 'draw' model"):
        transfer.initialise_from(DRAW(DRAWConfig(image_shape=(1, 12, 10), **SMALL)), "draw", str(cls_path))
    with pytest.raises(ValueError, match="does not exist"):
        transfer.initialise_from(DRAW(DRAWConfig(**SMALL)), "draw", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"pretrained:nope.: no pretrained model .nope.; available: .*mnist"):
        transfer.initialise_from(DRAW(DRAWConfig(**SMALL)), "draw", "pretrained:nope")


def test_shipped_mnist_draws_at_its_own_size_on_a_larger_canvas():
    """The 28x28 mnist model moved to 60x60: the same write windows, in pixels, about the centre."""
    target = DRAW(DRAWConfig(image_shape=(1, 60, 60), T=64, canvas_init=-6.0))
    transfer.initialise_from(target, "draw", "pretrained:mnist")
    gen = target.generate(4, torch.Generator().manual_seed(0))
    final = gen.canvases[-1][:, 0]  # (4, 60, 60)
    ink = final > 0.5
    assert ink.any(dim=(1, 2)).all()  # every sample draws something
    rows, cols = ink.nonzero()[:, 1], ink.nonzero()[:, 2]
    # a digit's size (28 pixels), in the middle: nothing near the border
    assert rows.min() >= 10 and rows.max() <= 49 and cols.min() >= 10 and cols.max() <= 49


def test_training_run_starts_from_the_source_and_records_it(tmp_path, capsys):
    common = ["--set", "T=3", "--set", "enc_size=16", "--set", "dec_size=16", "--set", "z_size=4", "--set", "read_n=3",
              "--set", "write_n=3", "--set", "batch_size=16", "--set", "log_every=1", "--set", "pictures=false",
              "--set", "tensorboard=false", "--set", "valid_batch_size=64", "--set", "max_minutes=null",
              "--set", "data=synthetic"]
    small = ["--set", "image_shape=[1,12,10]", "--set", 'data_options={"n":64,"image_shape":[1,12,10]}']
    large = ["--set", "image_shape=[1,20,20]", "--set", 'data_options={"n":64,"image_shape":[1,20,20]}']
    assert main(["train", "--quiet", "--preset", "demo", "--out", str(tmp_path / "a"), *common, *small,
                 "--set", "max_steps=4"]) == 0
    capsys.readouterr()
    # a tiny rate and the weight average: after one step both are still the source's weights, so the
    # average started from them (not from the random initialisation)
    assert main(["train", "--quiet", "--preset", "demo", "--out", str(tmp_path / "b"), *common, *large,
                 "--set", f"init_from={tmp_path / 'a'}", "--set", "max_steps=1", "--set", "lr=1e-12",
                 "--set", "lr_warmup_steps=0", "--set", "ema_decay=0.5"]) == 0
    assert "attention rescaled from 12x10 to 20x20" in capsys.readouterr().err
    source = checkpoint.load_checkpoint(tmp_path / "a").model_state
    ckpt = checkpoint.load_checkpoint(tmp_path / "b", prefer=checkpoint.LAST)
    for k in ("encoder.weight_hh", "decoder.weight_ih", "write_out.weight"):
        torch.testing.assert_close(ckpt.model_state[k], source[k], rtol=0, atol=1e-6, msg=k)
        torch.testing.assert_close(ckpt.extra[f"raw.{k}"], source[k], rtol=0, atol=1e-6, msg=k)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["train"]["init_from"] == str(tmp_path / "a")
    # a resumed run continues from its own checkpoint; init_from cannot be changed then
    assert main(["train", "--quiet", "--resume", str(tmp_path / "b"), "--set", "max_steps=2"]) == 0
    assert main(["train", "--quiet", "--resume", str(tmp_path / "b"), "--set", "init_from=pretrained:mnist"]) == 2
    assert "cannot change ['init_from'] when resuming" in capsys.readouterr().err
    # a source that does not fit fails before any training, with one line
    assert main(["train", "--quiet", "--preset", "demo", "--out", str(tmp_path / "c"), *common, *small,
                 "--set", "z_size=5", "--set", f"init_from={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err
    assert "z_size: 4 there, 5 here" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()  # nothing written
    assert main(["train", "--quiet", "--preset", "demo", "--out", str(tmp_path / "d"), *common, *small,
                 "--set", "init_from="]) == 2
    assert "init_from" in capsys.readouterr().err


def test_two_digit_preset_starts_from_the_shipped_mnist(capsys):
    from drawnet import presets

    model_cfg, train_cfg = presets.resolve("two-digit-mnist", {})
    assert train_cfg.init_from == "pretrained:mnist"
    _, how = transfer.initial_weights(DRAW(model_cfg), "draw", train_cfg.init_from)
    assert "rescaled from 28x28 to 60x60" in how
    assert main(["presets"]) == 0
    assert "starting from pretrained:mnist" in capsys.readouterr().out
