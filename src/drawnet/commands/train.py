"""drawnet train: train a DRAW model from a preset (the paper's Table 3 rows, or the demo), on the
preset's data set or, with --data PATH, on your own images (a folder or a .npy/.npz array)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train DRAW from a preset", description=__doc__)
    p.add_argument("--preset", help="preset name (see 'drawnet presets')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model or train setting, e.g. --set lr=3e-4 --set T=32 (repeatable)")
    p.add_argument("--data", type=Path, metavar="PATH",
                   help="train on your own images instead of the preset's data: a folder of images (one sub-folder "
                        "per class gives labels) or a .npy/.npz array; options with --set data_options={...}, e.g. "
                        "'{\"size\": [32, 32], \"binarize\": \"dynamic\"}' (README: Your own images)")
    p.add_argument("--out", type=Path, help="run directory to create")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR where it stopped")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the preset's, auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import presets
    from ..config import DRAWConfig, TrainConfig
    from ..tasks import DRAWTask, fit_to_data
    from . import train_from_args
    from ._settings import parse_overrides

    overrides = parse_overrides(args.overrides, model=DRAWConfig, train=TrainConfig)
    if args.device:
        overrides["train"]["device"] = args.device
    if args.data is not None:
        if args.resume is not None:
            raise ValueError("--data cannot be given with --resume: a resumed run trains on the data it started with")
        # The preset's data options belong to its own data set: only the user's (--set data_options) apply.
        overrides["train"]["data"] = "images"
        overrides["train"]["data_options"] = overrides["train"].get("data_options", {}) | {"path": str(args.data)}

    def resolve(name: str, chosen: dict) -> tuple[DRAWConfig, TrainConfig]:
        model_cfg, train_cfg = presets.resolve(name, chosen)
        model_cfg, train_cfg, notices = fit_to_data(model_cfg, train_cfg, fixed=chosen.get("model", {}))
        for notice in notices:
            print(f"drawnet: {notice}", file=sys.stderr)
        return model_cfg, train_cfg

    built: list[DRAWConfig] = []

    def make_task(model_cfg: DRAWConfig) -> DRAWTask:
        built.append(model_cfg)
        return DRAWTask(model_cfg)

    def best_text(best: float) -> str:
        of = " (of -log p(x | y), the label given)" if built and built[0].conditional else ""
        return f", best validation bound {best:.2f} nats{of}"

    return train_from_args(
        presets_command="drawnet presets", command="drawnet train",
        preset=args.preset, out=args.out, resume=args.resume, overrides=overrides,
        kind="draw", model_cls=DRAWConfig, resolve_preset=resolve, make_task=make_task, quiet=args.quiet,
        best_text=best_text,
    )
