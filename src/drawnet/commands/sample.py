"""``drawnet sample RUN``: a grid of generated images (optionally with nearest training images)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from .. import viz
    from ..report import load_split
    from ._source import open_model

    if args.n <= 0:
        raise ValueError(f"-n must be a positive number of samples, got {args.n}")
    source = open_model(args, args.device)
    model, ckpt = source.model, source.ckpt
    if ckpt.kind != "draw":
        raise ValueError(f"{ckpt.path} holds a {ckpt.kind!r} model; only DRAW models generate samples")
    pool = None
    if args.nearest:
        pool = load_split(source.config, "train", model.config.image_shape).images
    grid = viz.sample_picture(model, args.n, args.seed, scale=args.scale, pool=pool)
    suffix = "_nearest" if args.nearest else ""
    name = f"{source.prefix}sample_seed{args.seed}{suffix}.png"
    out = Path(args.out) if args.out else source.out_dir / name
    viz.save_png(out, grid)
    print(out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._source import add_model_arguments

    p = subparsers.add_parser(
        "sample",
        help="grid of generated images from a trained DRAW model",
        description="Generate images from the prior (eqs 13-16) and save the mean images sigma(c_T) as a PNG grid.",
    )
    add_model_arguments(p)
    p.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same grid (default 0)")
    p.add_argument("--out", help="output PNG (default RUN/samples/sample_seed<S>.png; for --pretrained NAME, "
                                 "NAME-sample_seed<S>.png in the current folder)")
    p.add_argument("--nearest", action="store_true",
                   help="put the nearest training image (L2) next to each sample, as in the paper's Figs 6, 9, 12")
    p.add_argument("--scale", type=int, default=None, help="integer upscaling of each image (default: automatic)")
    p.add_argument("--device", default="cpu", help="torch device to run the model on (default cpu)")
    p.set_defaults(func=run)
