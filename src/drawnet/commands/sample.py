"""``drawnet sample RUN``: a grid of generated images (optionally with nearest training images)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from .. import viz
    from ..checkpoint import load_model
    from ..report import load_split, run_config, run_dir_of

    if args.n <= 0:
        raise ValueError(f"-n must be a positive number of samples, got {args.n}")
    model, ckpt = load_model(args.run, map_location=args.device)
    if ckpt.kind != "draw":
        raise ValueError(f"{ckpt.path} holds a {ckpt.kind!r} model; only DRAW models generate samples")
    pool = None
    if args.nearest:
        pool = load_split(run_config(args.run, ckpt), "train", model.config.image_shape).images
    suffix = "_nearest" if args.nearest else ""
    out = Path(args.out) if args.out else run_dir_of(args.run) / "samples" / f"sample_seed{args.seed}{suffix}.png"
    pictures = -(-args.n // viz.SAMPLES_PER_PICTURE)
    grids = viz.sample_pictures(model, args.n, args.seed, scale=args.scale, pool=pool)
    for k, grid in enumerate(grids, 1):  # one grid in memory at a time
        path = out if pictures == 1 else out.with_name(f"{out.stem}_{k:0{len(str(pictures))}d}{out.suffix}")
        viz.save_png(path, grid)
        print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    # The limits are drawnet.viz's SAMPLES_PER_PICTURE and GENERATE_BATCH (not imported here: it
    # would load torch for every command line; tests/test_robustness.py checks they agree).
    p = subparsers.add_parser(
        "sample",
        help="grid of generated images from a trained DRAW model",
        description="Generate images from the prior (eqs 13-16) and save the mean images sigma(c_T) as a PNG grid. "
        "One PNG holds at most 1024 samples: a larger -n writes several, one after the other, numbered "
        "OUT_1.png, OUT_2.png, ... (zero-padded: OUT_01.png ... OUT_98.png for -n 100000); the images are "
        "generated 256 at a time, so memory stays bounded for any -n.",
    )
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("-n", type=int, default=64,
                   help="number of samples (default 64; at most 1024 per PNG, more in further files)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same grid (default 0)")
    p.add_argument("--out", help="output PNG (default RUN/samples/sample_seed<S>.png)")
    p.add_argument("--nearest", action="store_true",
                   help="put the nearest training image (L2) next to each sample, as in the paper's Figs 6, 9, 12")
    p.add_argument("--scale", type=int, default=None, help="integer upscaling of each image (default: automatic)")
    p.add_argument("--device", default="cpu", help="torch device to run the model on (default cpu)")
    p.set_defaults(func=run)
