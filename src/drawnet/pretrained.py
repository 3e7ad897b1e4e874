"""Trained models shipped with drawnet, usable offline right after the install.

Each shipped model is a folder ``drawnet/models/NAME/`` inside the package, holding:

* ``model.safetensors``: a drawnet checkpoint with the weights only (the averaged weights when the
  run used ``ema_decay``), its model and training configuration and its trainer state as JSON
  metadata, and the SHA-256 of its tensors (verified on load, see :mod:`drawnet.checkpoint`);
* ``card.json``: the model card as data (what it was trained on, the recipe, epochs, wall time,
  machine, the measured numbers, the commands that reproduce them) plus the file's own SHA-256,
  checked before it is read;
* ``CARD.md``: the same card for people.

``drawnet sample --pretrained NAME``, ``eval``, ``animate`` and ``classify eval`` use them;
:func:`export` makes one from a run directory (``drawnet pretrained export RUN NAME``).
``$DRAWNET_PRETRAINED`` points at another folder of models (tests use it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint, rundir

MODEL_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_MD = "CARD.md"


def root() -> Path:
    env = os.environ.get("DRAWNET_PRETRAINED")
    return Path(env).expanduser() if env else Path(__file__).with_name("models")


def names() -> list[str]:
    folder = root()
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / CARD_FILE).is_file() or (p / MODEL_FILE).is_file())


def folder(name: str) -> Path:
    """The folder of shipped model ``name``; an unknown name lists the ones there are."""
    available = names()
    if name not in available:
        listed = ", ".join(available) if available else "none (this installation ships no trained models)"
        raise ValueError(f"no pretrained model {name!r}; available: {listed}")
    return root() / name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def card(name: str) -> dict[str, Any]:
    path = folder(name) / CARD_FILE
    if not path.is_file():
        raise ValueError(f"pretrained model {name!r} is damaged: {path} is missing; reinstall drawnet")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"pretrained model {name!r} is damaged: {path} is not valid JSON ({err}); reinstall") from err
    if not isinstance(data, dict):
        raise ValueError(f"pretrained model {name!r} is damaged: {path} does not hold a JSON object; reinstall")
    return data


def model_path(name: str) -> Path:
    """The model file of ``name``, after checking it against the SHA-256 its card records."""
    info = card(name)
    path = folder(name) / MODEL_FILE
    if not path.is_file():
        raise ValueError(f"pretrained model {name!r} is damaged: {path} is missing; reinstall drawnet")
    want = (info.get("file") or {}).get("sha256")
    got = _sha256(path)
    if want != got:
        raise ValueError(
            f"pretrained model {name!r} is damaged: {path} has sha256 {got}, its card records {want}; "
            f"reinstall drawnet (or fetch the file again)"
        )
    return path


def load(name: str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, checkpoint.Checkpoint]:
    """(model in eval mode, checkpoint) of shipped model ``name``."""
    return checkpoint.load_model(model_path(name), map_location=map_location)


def export(run: str | Path, name: str, *, dest: Path | None = None, card_fields: dict[str, Any] | None = None) -> Path:
    """Make shipped model ``name`` from run ``run`` (its best checkpoint): weights only, plus a card.

    ``card_fields`` (data, recipe, machine, results, commands, ...) go into the card as given; the
    file's size and SHA-256 and the run's own figures (epochs, steps, wall time, configs, the
    eval.json if any) are filled in here. Returns the folder written.
    """
    ckpt = checkpoint.load_checkpoint(run)
    out = (dest or root()) / name
    out.mkdir(parents=True, exist_ok=True)
    model_file = out / MODEL_FILE
    checkpoint.save_checkpoint(
        model_file, kind=ckpt.kind, state_dict=ckpt.model_state, model_config=ckpt.model_config,
        train_config=ckpt.train_config, trainer_state={k: v for k, v in ckpt.trainer_state.items() if k != "optimizer"},
        save_rng=False,
    )
    state = ckpt.trainer_state
    info: dict[str, Any] = {
        "name": name,
        "kind": ckpt.kind,
        "model": ckpt.model_config,
        "train": ckpt.train_config,
        "trained": {"epochs": state.get("epoch"), "steps": state.get("step"),
                    "hours": round(float(state.get("elapsed", 0.0)) / 3600, 2),
                    "best_validation": state.get("best")},
        "evaluation": rundir.read_eval(rundir.run_dir_of(ckpt.path)),
    }
    info |= card_fields or {}
    info["file"] = {"name": MODEL_FILE, "bytes": model_file.stat().st_size, "sha256": _sha256(model_file)}
    rundir.write_json(out / CARD_FILE, info)
    return out


def describe(name: str) -> str:
    """The card of ``name`` as text (CARD.md when there is one)."""
    md = folder(name) / CARD_MD
    if md.is_file():
        return md.read_text()
    return json.dumps(card(name), indent=2)
