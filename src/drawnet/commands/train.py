"""drawnet train: train a DRAW model from a preset (the paper's Table 3 rows, or the demo)."""

from __future__ import annotations

import argparse
import sys
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
    from ..config import DRAWConfig
    from ..tasks import DRAWTask
    from ..train import TrainConfig, TrainingDiverged, parse_overrides, resume_configs, run_training

    overrides = parse_overrides(args.overrides, model=DRAWConfig, train=TrainConfig)
    if args.device:
        overrides["train"]["device"] = args.device
    if args.resume is not None:
        model_cfg, train_cfg, preset = resume_configs(args.resume, "draw", DRAWConfig, overrides)
        run_dir, resume = args.resume, True
    else:
        if not args.preset or args.out is None:
            raise ValueError("give --preset NAME and --out RUN_DIR (or --resume RUN_DIR); see 'drawnet presets'")
        model_cfg, train_cfg = presets.resolve(args.preset, overrides)
        run_dir, preset, resume = args.out, args.preset, False

    print(f"drawnet train: preset {preset}, run directory {run_dir}", file=sys.stderr)
    try:
        summary = run_training(DRAWTask(model_cfg), train_cfg, run_dir, resume=resume, preset=preset,
                               progress=not args.quiet)
    except TrainingDiverged as err:
        print(f"drawnet: training stopped: {err}", file=sys.stderr)
        return 1
    if summary["stopped_by"] == "interrupted":
        print(f"drawnet: interrupted at step {summary['step']}; checkpoint saved. Continue with "
              f"'drawnet train --resume {run_dir}'", file=sys.stderr)
        return 130
    valid = summary.get("valid", {})
    best = f", best validation bound {summary['best']:.2f} nats" if summary["best"] != float("inf") else ""
    print(f"drawnet train: done, {summary['step']} steps in {summary['elapsed_s']:.0f} s{best}"
          + (f", last {valid['bound']:.2f}" if "bound" in valid else ""), file=sys.stderr)
    return 0
