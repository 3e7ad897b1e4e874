"""Shipped models: export from a run, then sample / eval / animate --pretrained, offline, with the
damage checks (a wrong name lists the names, a damaged file is reported as such)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_viz import make_run

from drawnet import pretrained
from drawnet.cli import main


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A folder of shipped models holding 'tiny', exported from a hand-made run."""
    models = tmp_path / "models"
    monkeypatch.setenv("DRAWNET_PRETRAINED", str(models))
    run = make_run(tmp_path, eval_json={"nll_bound": 123.4, "split": "test"})
    assert main(["pretrained", "export", str(run), "tiny"]) == 0
    return models, run


def test_export_writes_weights_only_and_a_card(shipped):
    models, run = shipped
    card = pretrained.card("tiny")
    assert card["kind"] == "draw" and card["trained"]["steps"] == 20
    assert card["evaluation"]["nll_bound"] == 123.4
    size = (models / "tiny" / "model.safetensors").stat().st_size
    assert card["file"]["bytes"] == size
    assert size < (run / "checkpoints" / "last.safetensors").stat().st_size  # no optimizer, no RNG
    model, ckpt = pretrained.load("tiny")
    assert not ckpt.optimizer_state and not ckpt.rng_state
    original, _ = __import__("drawnet.checkpoint", fromlist=["load_model"]).load_model(run)
    for (name, a), b in zip(model.state_dict().items(), original.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_sample_eval_and_animate_a_shipped_model(shipped, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--pretrained", "tiny", "-n", "4"]) == 0
    with Image.open(tmp_path / "tiny-sample_seed0.png") as im:
        assert im.size[0] > 0
    assert main(["animate", "--pretrained", "tiny", "-n", "2"]) == 0
    assert (tmp_path / "tiny-generation.gif").is_file()
    capsys.readouterr()
    assert main(["eval", "--pretrained", "tiny", "--limit", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 16 and result["nll_bound"] > 0
    assert not list((shipped[0] / "tiny").glob("eval.json"))  # nothing written into the models folder


def test_an_unknown_name_lists_the_shipped_ones(shipped, capsys):
    assert main(["sample", "--pretrained", "mnist-large", "-n", "2"]) == 2
    err = capsys.readouterr().err
    assert "no pretrained model 'mnist-large'; available: tiny" in err and "Traceback" not in err


def test_a_damaged_shipped_file_is_reported(shipped, capsys):
    models, _ = shipped
    path = models / "tiny" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["sample", "--pretrained", "tiny", "-n", "2"]) == 2
    err = capsys.readouterr().err
    assert "pretrained model 'tiny' is damaged" in err and "sha256" in err


def test_run_and_pretrained_are_exclusive(shipped, capsys):
    _, run = shipped
    assert main(["sample", str(run), "--pretrained", "tiny"]) == 2
    assert main(["sample"]) == 2
    assert "not both" in capsys.readouterr().err


def _shipped_names() -> list[str]:
    """The models this checkout ships (drawnet's own models folder, whatever DRAWNET_PRETRAINED says)."""
    folder = Path(pretrained.__file__).with_name("models")
    return sorted(p.name for p in folder.iterdir() if (p / pretrained.CARD_FILE).is_file()) if folder.is_dir() else []


@pytest.mark.parametrize("name", _shipped_names())
def test_the_models_drawnet_ships_load_and_run(name, monkeypatch):
    """Each shipped model: its file matches the SHA-256 its card records, its config is the card's, it
    reports its test result on 10,000 images; a DRAW model draws images of its shape in [0, 1], a
    classifier gives finite logits for every class."""
    monkeypatch.delenv("DRAWNET_PRETRAINED", raising=False)
    card = pretrained.card(name)
    model, ckpt = pretrained.load(name)  # checks the SHA-256
    assert ckpt.model_config == card["model"] and ckpt.kind == card["kind"]
    assert card["evaluation"]["num_images"] == 10_000 and card["evaluation"]["split"] == "test"
    assert (pretrained.folder(name) / pretrained.CARD_MD).is_file()
    if card["kind"] == "classifier":
        assert 0 < card["evaluation"]["error"] < 0.2
        with torch.no_grad():
            logits = model(torch.rand(3, *model.config.image_shape)).logits
        assert logits.shape == (3, model.config.num_classes) and torch.isfinite(logits).all()
        return
    assert card["kind"] == "draw" and 50 < card["evaluation"]["nll_bound"] < 200
    assert card["evaluation"]["test_set"]
    labels = torch.arange(4) % model.config.num_classes if model.config.conditional else None
    with torch.no_grad():
        canvases = model.generate(4, labels=labels).canvases
    assert canvases.shape == (model.config.T, 4, *model.config.image_shape)
    assert 0 <= float(canvases.min()) and float(canvases.max()) <= 1 and float(canvases[-1].std()) > 0.05
