"""``drawnet report RUN``: one self-contained HTML page about a run."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from .. import viz
    from ..report import build_report

    for name, most in (("n", viz.SAMPLES_PER_PICTURE), ("n_animate", viz.MAX_ANIMATED)):
        if not 0 < getattr(args, name) <= most:
            flag = "-n" if name == "n" else "--n-animate"
            raise ValueError(f"{flag} must be from 1 to {most}, got {getattr(args, name)}")
    path = build_report(args.run, out=args.out, n_samples=args.n, n_animate=args.n_animate, seed=args.seed)
    print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="self-contained HTML report of a run",
        description="Config, learning curves, per-step KL, results next to the paper's Table 2, samples and "
        "animations, in one HTML file with the pictures embedded (default RUN/report.html).",
    )
    p.add_argument("run", help="run directory (or checkpoint file)")
    p.add_argument("--out", help="output HTML file (default RUN/report.html)")
    p.add_argument("-n", type=int, default=64, help="samples in the grid (default 64, at most 1024)")
    p.add_argument("--n-animate", type=int, default=8, help="images in each animation (default 8, at most 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed for samples and animations (default 0)")
    p.set_defaults(func=run)
