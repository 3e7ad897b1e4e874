"""Where a command's model comes from: a run directory (or checkpoint file), or a shipped model."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="run directory or checkpoint file")
    p.add_argument("--pretrained", metavar="NAME",
                   help="a model shipped with drawnet instead of a run (see 'drawnet pretrained list')")


@dataclass
class ModelSource:
    model: Any
    ckpt: Any
    config: dict[str, Any]  # {"kind", "model", "train"} as a run's config.json
    label: str  # the run path or "pretrained NAME", for messages
    out_dir: Path  # where outputs go by default
    prefix: str  # file-name prefix of default outputs ("" in a run's folder, "NAME-" for shipped models)
    pretrained: bool


def open_model(args: argparse.Namespace, device: Any = "cpu") -> ModelSource:
    """The model of ``args.run`` or ``args.pretrained`` (exactly one must be given)."""
    from ..checkpoint import load_model
    from ..report import run_config, run_dir_of

    if (args.run is None) == (args.pretrained is None):
        raise ValueError("give a run directory (or checkpoint file) or --pretrained NAME, not both")
    if args.pretrained is not None:
        from .. import pretrained

        model, ckpt = pretrained.load(args.pretrained, map_location=device)
        config = {"kind": ckpt.kind, "model": ckpt.model_config, "train": ckpt.train_config or {}}
        return ModelSource(model, ckpt, config, f"pretrained {args.pretrained}", Path.cwd(),
                           f"{args.pretrained}-", True)
    model, ckpt = load_model(args.run, map_location=device)
    return ModelSource(model, ckpt, run_config(args.run, ckpt), str(args.run), run_dir_of(args.run) / "samples",
                       "", False)
