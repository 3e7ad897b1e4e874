"""Self-describing checkpoints, saved atomically and loaded without running code from the file.

A checkpoint is one safetensors file. Tensors:

* ``model.<name>``: the model's state dict;
* ``optim.<param index>.<key>``: the optimizer's per-parameter state (Adam's moments and step);
* ``rng.torch`` (and ``rng.cuda.<i>``): random generator states, so a resumed run continues exactly.

String metadata (safetensors stores ``str -> str``), each a JSON document:

* ``format`` / ``format_version``: what this file is (:data:`FORMAT`, :data:`FORMAT_VERSION`);
* ``drawnet_version``: the version that wrote it;
* ``kind``: ``"draw"`` or ``"classifier"`` (which model class to rebuild);
* ``model_config``: the model's configuration dict (enough to rebuild the model alone);
* ``train_config``: the resolved training settings (dict), if any;
* ``trainer_state``: epoch, step, best validation value etc., plus the optimizer's param groups.

Loading reads tensors with :mod:`safetensors` and metadata with :mod:`json`: nothing in the file is
ever executed (no pickle).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__

FORMAT = "drawnet-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LAST = "last.safetensors"
BEST = "best.safetensors"


@dataclass
class Checkpoint:
    """The decoded contents of a checkpoint file."""

    kind: str
    model_config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    train_config: dict[str, Any] | None = None
    trainer_state: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, torch.Tensor] = field(default_factory=dict)
    rng_state: dict[str, torch.Tensor] = field(default_factory=dict)
    drawnet_version: str = __version__
    path: Path | None = None


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into flat tensors and a JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Load the optimizer state saved by :func:`save_checkpoint` into ``optimizer``."""
    saved = ckpt.trainer_state.get("optimizer")
    if saved is None:
        raise ValueError(f"checkpoint {ckpt.path} has no optimizer state to resume from")
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in ckpt.optimizer_state.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = tensor
    for idx, values in saved.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def rng_tensors() -> dict[str, torch.Tensor]:
    states = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng.cuda.{i}"] = s
    return states


def restore_rng(ckpt: Checkpoint) -> None:
    if "rng.torch" in ckpt.rng_state:
        torch.set_rng_state(ckpt.rng_state["rng.torch"])
    cuda = sorted((k for k in ckpt.rng_state if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([ckpt.rng_state[k] for k in cuda])


def save_checkpoint(
    path: str | Path,
    *,
    kind: str,
    model: nn.Module,
    model_config: dict[str, Any],
    train_config: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    save_rng: bool = True,
) -> Path:
    """Write a checkpoint atomically (temporary file + rename) and return its path."""
    path = Path(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = dict(trainer_state or {})
    if optimizer is not None:
        opt_tensors, opt_rest = optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
        state["optimizer"] = opt_rest
    if save_rng:
        tensors.update(rng_tensors())
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "drawnet_version": __version__,
        "kind": kind,
        "model_config": json.dumps(model_config),
        "train_config": json.dumps(train_config),
        "trainer_state": json.dumps(state),
    }
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def resolve(path_or_run: str | Path, prefer: str = BEST) -> Path:
    """A checkpoint file from a file path or a run directory (its best, else its last checkpoint)."""
    p = Path(path_or_run)
    if p.is_dir():
        for name in (prefer, LAST, BEST):
            candidate = p / CHECKPOINT_DIR / name
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"no checkpoint in run directory {p} (looked for {CHECKPOINT_DIR}/{BEST} and "
            f"{CHECKPOINT_DIR}/{LAST}); train one with 'drawnet train --out {p}'"
        )
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint or run directory {p} does not exist")
    return p


def load_checkpoint(path_or_run: str | Path, prefer: str = BEST) -> Checkpoint:
    """Read a checkpoint safely: safetensors for tensors, JSON for everything else."""
    path = resolve(path_or_run, prefer)
    try:
        metadata = _read_metadata(path)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable drawnet checkpoint (safetensors error: {err}); it may be "
            f"truncated or from another program"
        ) from err
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but not a drawnet checkpoint (no '{FORMAT}' marker)")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ValueError(
            f"{path} has checkpoint format version {version} (written by drawnet "
            f"{metadata.get('drawnet_version')}); this drawnet {__version__} reads version {FORMAT_VERSION}"
        )
    ckpt = Checkpoint(
        kind=metadata["kind"],
        model_config=json.loads(metadata["model_config"]),
        model_state={k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
        train_config=json.loads(metadata.get("train_config", "null")),
        trainer_state=json.loads(metadata.get("trainer_state", "{}")),
        optimizer_state={k: v for k, v in tensors.items() if k.startswith("optim.")},
        rng_state={k: v for k, v in tensors.items() if k.startswith("rng.")},
        drawnet_version=metadata.get("drawnet_version", "?"),
        path=path,
    )
    return ckpt


def load_state_strict(model: nn.Module, ckpt: Checkpoint) -> None:
    """Load weights, turning a mismatch into a clear error instead of a partial load."""
    own = model.state_dict()
    missing = sorted(set(own) - set(ckpt.model_state))
    unexpected = sorted(set(ckpt.model_state) - set(own))
    wrong = sorted(k for k in set(own) & set(ckpt.model_state) if own[k].shape != ckpt.model_state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint {ckpt.path} does not fit this model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]}; it was written for another configuration"
        )
    model.load_state_dict(ckpt.model_state)


def build_model(ckpt: Checkpoint) -> nn.Module:
    """Rebuild the model a checkpoint was written for, from the checkpoint alone."""
    if ckpt.kind == "draw":
        from .config import DRAWConfig
        from .model import DRAW

        model: nn.Module = DRAW(DRAWConfig.from_dict(ckpt.model_config))
    elif ckpt.kind == "classifier":
        from .classifier import AttentionClassifier, ClassifierConfig

        model = AttentionClassifier(ClassifierConfig.from_dict(ckpt.model_config))
    else:
        raise ValueError(f"checkpoint {ckpt.path} holds an unknown model kind {ckpt.kind!r}")
    load_state_strict(model, ckpt)
    return model


def load_model(path_or_run: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Model (in eval mode, on ``map_location``) and checkpoint from a file or a run directory."""
    ckpt = load_checkpoint(path_or_run)
    model = build_model(ckpt).to(map_location)
    model.eval()
    return model, ckpt
