"""drawnet train: train a DRAW model from a preset (the paper's Table 3 rows, or the demo)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train DRAW from a preset", description=__doc__)
    p.add_argument("--preset", help="preset name (see 'drawnet presets')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model or train setting, e.g. --set lr=3e-4 --set T=32 (repeatable)")
    p.add_argument("--out", type=Path, help="run directory to create")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR where it stopped")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the preset's, auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import presets
    from ..config import DRAWConfig, TrainConfig
    from ..tasks import DRAWTask
    from . import train_from_args
    from ._settings import parse_overrides

    overrides = parse_overrides(args.overrides, model=DRAWConfig, train=TrainConfig)
    if args.device:
        overrides["train"]["device"] = args.device
    return train_from_args(
        presets_command="drawnet presets", command="drawnet train",
        preset=args.preset, out=args.out, resume=args.resume, overrides=overrides,
        kind="draw", model_cls=DRAWConfig, resolve_preset=presets.resolve, make_task=DRAWTask, quiet=args.quiet,
        best_text=lambda best: f", best validation bound {best:.2f} nats",
    )
