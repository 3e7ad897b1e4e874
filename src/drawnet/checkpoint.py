"""Self-describing checkpoints, saved atomically and loaded without running code from the file.

A checkpoint is one safetensors file. Tensors:

* ``model.<name>``: the model's state dict;
* ``optim.<param index>.<key>``: the optimizer's per-parameter state (Adam's moments and step);
* ``rng.torch`` (and ``rng.cuda.<i>``): random generator states, so a resumed run continues exactly;
* ``raw.<name>``: with weight averaging (``ema_decay``), the training weights, while ``model.*``
  holds the averaged weights that evaluation and sampling use.

String metadata (safetensors stores ``str -> str``), each a JSON document:

* ``format`` / ``format_version``: what this file is (:data:`FORMAT`, :data:`FORMAT_VERSION`);
* ``drawnet_version``: the version that wrote it;
* ``kind``: ``"draw"`` or ``"classifier"`` (which model class to rebuild);
* ``model_config``: the model's configuration dict (enough to rebuild the model alone);
* ``train_config``: the resolved training settings (dict), if any;
* ``trainer_state``: epoch, step, best validation value etc., plus the optimizer's param groups;
* ``tensors_sha256``: a SHA-256 of every tensor's name, dtype, shape and bytes (format version 2),
  and ``metadata_sha256``: a SHA-256 of the other metadata entries (version 3), both verified on
  load, so damaged contents are reported instead of used.

Loading reads tensors with :mod:`safetensors` and metadata with :mod:`json`: nothing in the file is
ever executed (no pickle).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from . import __version__, kinds
from .rundir import BEST, CHECKPOINT_DIR, LAST, atomic_write

FORMAT = "drawnet-checkpoint"
FORMAT_VERSION = 3
READABLE_VERSIONS = ("1", "2", "3")  # version 1: no checksum; 2: of the tensors only; 3: of the metadata too
LEAN_MARK = "optimizer_left_out_at_step"  # trainer_state entry of a lean snapshot (lean_copy)

__all__ = ["BEST", "CHECKPOINT_DIR", "LAST", "Checkpoint", "atomic_write", "load_checkpoint", "load_model",
           "lean_copy", "save_checkpoint"]


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
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # other tensors, e.g. raw.* (see above)
    drawnet_version: str = __version__
    path: Path | None = None


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: name, dtype, shape and raw bytes of each."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def metadata_digest(metadata: dict[str, str]) -> str:
    """SHA-256 over the metadata entries but ``metadata_sha256`` itself, in key order."""
    rest = {k: v for k, v in metadata.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


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


# Parameter-group settings that choose how the update is computed, not what it is: a checkpoint
# written with one loads into an optimizer built with another (e.g. fused Adam).
_HOW = {"fused", "foreach", "capturable", "differentiable"}


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Load the optimizer state saved by :func:`save_checkpoint` into ``optimizer``.

    The saved settings of each parameter group (Adam's betas, eps, ...) must be those ``optimizer``
    was built with, but the learning rate (which a resume may change): anything else is a clear
    error naming the file, never a partly loaded or silently different optimizer.
    """
    saved = ckpt.trainer_state.get("optimizer")
    if saved is None:
        raise ValueError(f"checkpoint {ckpt.path} has no optimizer state to resume from")
    try:
        state: dict[int, dict[str, Any]] = {}
        for name, tensor in ckpt.optimizer_state.items():
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = tensor
        for idx, values in saved.get("scalars", {}).items():
            state.setdefault(int(idx), {}).update(values)
        groups = saved["param_groups"]
        if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
            raise ValueError(f"{len(optimizer.param_groups)} parameter group(s) expected, got {groups!r:.80}")
        for ours, theirs in zip(optimizer.param_groups, groups, strict=True):
            for key in sorted(set(ours) & set(theirs) - {"params", "lr", "initial_lr"} - _HOW):
                value = tuple(theirs[key]) if isinstance(theirs[key], list) else theirs[key]
                if value != ours[key]:
                    raise ValueError(f"parameter group setting {key}={theirs[key]!r}, expected {ours[key]!r}")
        # This run's implementation choice (fused or not), not the saved one, given to load_state_dict
        # itself: it places each moment and step counter where that implementation wants them.
        groups = [theirs | {key: ours[key] for key in _HOW if key in ours}
                  for ours, theirs in zip(optimizer.param_groups, groups, strict=True)]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{ckpt.path}: its optimizer state (trainer_state.optimizer) does not fit this run "
            f"({type(err).__name__}: {err}); the file is damaged or was edited"
        ) from err


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
    model: nn.Module | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    model_config: dict[str, Any],
    train_config: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    save_rng: bool = True,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file + rename) and return its path.

    The weights are ``model``'s state dict, or ``state_dict`` when given; ``extra_tensors`` are
    stored under their own names (e.g. ``raw.*``).
    """
    path = Path(path)
    if state_dict is None:
        if model is None:
            raise ValueError("save_checkpoint needs a model or a state_dict")
        state_dict = model.state_dict()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state_dict.items()}
    for name, value in (extra_tensors or {}).items():
        if name.split(".", 1)[0] in ("model", "optim", "rng"):
            raise ValueError(f"extra tensor name {name!r} uses a reserved prefix")
        tensors[name] = value.detach().cpu().contiguous()
    state = dict(trainer_state or {})
    if optimizer is not None:
        opt_tensors, opt_rest = optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
        state["optimizer"] = opt_rest
    if save_rng:
        tensors.update(rng_tensors())
    return _write(path, tensors, kind, model_config, train_config, state)


def _write(
    path: Path, tensors: dict[str, torch.Tensor], kind: str, model_config: dict[str, Any],
    train_config: dict[str, Any] | None, trainer_state: dict[str, Any],
) -> Path:
    """Write ``tensors`` (full names) and the metadata with both checksums, atomically."""
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "drawnet_version": __version__,
        "kind": kind,
        "model_config": json.dumps(model_config),
        "train_config": json.dumps(train_config),
        "trainer_state": json.dumps(trainer_state),
        "tensors_sha256": tensors_digest(tensors),
    }
    metadata["metadata_sha256"] = metadata_digest(metadata)
    # Serialised in memory and written by atomic_write: safetensors' own save_file would write
    # through a temporary file of its own (left behind by a kill) with mode 0600.
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def lean_copy(src: str | Path, dst: str | Path) -> Path:
    """Write a copy of checkpoint ``src`` without the optimizer's state to ``dst`` (a "lean snapshot").

    Weights, averaged weights, RNG and trainer state are kept. Adam's two moments are as large as the
    weights twice over, so this is half a checkpoint with weight averaging (a third without). A
    run resumed from it starts Adam's moments afresh (:meth:`drawnet.train.Trainer.restore` says so
    and warms the learning rate up again); it does not continue exactly, which a full checkpoint does.
    """
    ckpt = load_checkpoint(src, prefer=LAST)
    if "step" not in ckpt.trainer_state:
        raise ValueError(f"{ckpt.path} is not a training checkpoint (no trainer state); nothing to snapshot")
    tensors = {f"model.{k}": v for k, v in ckpt.model_state.items()} | ckpt.rng_state | ckpt.extra
    state = dict(ckpt.trainer_state)
    state.pop("optimizer", None)
    state[LEAN_MARK] = int(state["step"])
    return _write(Path(dst), tensors, ckpt.kind, ckpt.model_config, ckpt.train_config, state)


def is_lean(ckpt: Checkpoint) -> bool:
    """Whether ``ckpt`` is a lean snapshot (:func:`lean_copy`) whose optimizer state was left out."""
    return LEAN_MARK in ckpt.trainer_state and not ckpt.optimizer_state


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file, from one read of it into memory.

    One read: the metadata and the tensors come from the same version of a file that a training
    run may be replacing meanwhile. Into memory: safetensors' load_file maps the file, and tensors
    kept from it (Adam's moments after a resume) would keep a checkpoint that the next save
    replaces taking its space on disk.
    """
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or not 2 <= size <= len(data) - 8:
        raise ValueError(f"the header length ({size}) does not fit the file's {len(data)} bytes")
    header = json.loads(data[8 : 8 + size])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header.get("__metadata__") or {}, load(data)


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
        metadata, tensors = _read(path)
    except (SafetensorError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable drawnet checkpoint (safetensors error: {err}); it may be "
            f"truncated or from another program"
        ) from err
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but not a drawnet checkpoint (no '{FORMAT}' marker)")
    version = metadata.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"{path} has checkpoint format version {version} (written by drawnet "
            f"{metadata.get('drawnet_version')}); this drawnet {__version__} reads versions "
            f"{', '.join(READABLE_VERSIONS)}: use a newer drawnet"
        )
    if version == "3" and metadata.get("metadata_sha256") != metadata_digest(metadata):
        raise ValueError(
            f"{path} is damaged: its metadata (configuration, trainer state) does not match the checksum "
            f"recorded when it was saved (metadata_sha256); use another checkpoint (e.g. checkpoints/{BEST} or "
            f"{LAST}) or retrain"
        )
    digest = metadata.get("tensors_sha256")
    if version != "1" and digest != tensors_digest(tensors):
        raise ValueError(
            f"{path} is damaged: its tensors do not match the checksum recorded when it was saved "
            f"(tensors_sha256); use another checkpoint (e.g. checkpoints/{BEST} or {LAST}) or retrain"
        )
    decoded = {}
    for key, default in (("kind", None), ("model_config", None), ("train_config", "null"), ("trainer_state", "{}")):
        text = metadata.get(key, default)
        if text is None:
            raise ValueError(f"{path} has no {key!r} entry in its metadata; it is damaged or not a drawnet checkpoint")
        try:
            decoded[key] = json.loads(text) if key != "kind" else text
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: its {key!r} metadata is not valid JSON ({err}); the file is damaged") from err
    if not isinstance(decoded["model_config"], dict) or not isinstance(decoded["trainer_state"], dict):
        raise ValueError(
            f"{path}: its model_config or trainer_state metadata is not a JSON object; the file is damaged"
        )
    known = ("model.", "optim.", "rng.")
    ckpt = Checkpoint(
        kind=decoded["kind"],
        model_config=decoded["model_config"],
        model_state={k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
        train_config=decoded["train_config"],
        trainer_state=decoded["trainer_state"],
        optimizer_state={k: v for k, v in tensors.items() if k.startswith("optim.")},
        rng_state={k: v for k, v in tensors.items() if k.startswith("rng.")},
        extra={k: v for k, v in tensors.items() if not k.startswith(known)},
        drawnet_version=metadata.get("drawnet_version", "?"),
        path=path,
    )
    return ckpt


def mismatches(expected: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) names of ``state`` against ``expected`` (name -> tensor or shape)."""
    def shape(v: Any) -> tuple[int, ...]:
        return tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if shape(expected[k]) != tuple(state[k].shape))
    return missing, unexpected, wrong


def load_state_strict(model: nn.Module, ckpt: Checkpoint) -> None:
    """Load weights, turning a mismatch into a clear error instead of a partial load."""
    missing, unexpected, wrong = mismatches(model.state_dict(), ckpt.model_state)
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint {ckpt.path} does not fit this model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]}. It was written by drawnet {ckpt.drawnet_version} for "
            f"another configuration, or this drawnet ({__version__}) builds the model's parameters differently: "
            f"use the drawnet version that wrote it, or start a new run"
        )
    model.load_state_dict(ckpt.model_state)


def check_shapes(model_state: dict[str, torch.Tensor], expected: dict[str, torch.Size], path: Path | None) -> None:
    """A clear error unless the checkpoint's tensors have exactly the names and shapes ``expected``."""
    missing, unexpected, wrong = mismatches(expected, model_state)
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint {path} does not fit its own configuration: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]}; the file is damaged or was edited"
        )


def build_model(ckpt: Checkpoint) -> nn.Module:
    """Rebuild the model a checkpoint was written for, from the checkpoint alone (the model kind's
    classes come from :mod:`drawnet.kinds`).

    The parameter shapes the config implies are checked against the stored tensors before any
    memory is allocated for the model (on the meta device), so a damaged config cannot ask for
    gigabytes.
    """
    kind = kinds.get(ckpt.kind)
    try:
        config = kind.config_class().from_dict(ckpt.model_config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {ckpt.path}: its model_config is not valid ({err})") from err
    with torch.device("meta"):
        skeleton = kind.model_class()(config)
    check_shapes(ckpt.model_state, {k: v.shape for k, v in skeleton.state_dict().items()}, ckpt.path)
    model: nn.Module = kind.model_class()(config)
    load_state_strict(model, ckpt)
    return model


def load_model(path_or_run: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Model (in eval mode, on ``map_location``) and checkpoint from a file or a run directory."""
    ckpt = load_checkpoint(path_or_run)
    model = build_model(ckpt).to(map_location)
    model.eval()
    return model, ckpt
