"""``drawnet sample RUN``: a grid of generated images (optionally with nearest training images); for a
class-conditional model, of one class (``--label``) or one row per class (``--per-class``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_N = 64
DEFAULT_PER_CLASS = 8


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import viz
    from ..report import load_split, parse_label, run_class_names
    from ._source import open_model

    for name in ("n", "per_class"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number of samples, got {value}")
    source = open_model(args, args.device)
    model, ckpt = source.model, source.ckpt
    if ckpt.kind != "draw":
        raise ValueError(f"{ckpt.path} holds a {ckpt.kind!r} model; only DRAW models generate samples")
    conditional = model.config.conditional
    if not conditional and args.per_class is not None:
        raise ValueError("this model is unconditional (trained without labels): --per-class needs a model trained "
                         "with conditional=true (e.g. the mnist-conditional preset)")
    config = source.config
    names = run_class_names(config) if conditional else None
    label = parse_label(args.label, model, names) if args.label is not None else None
    n = args.n or DEFAULT_N
    suffix = "_nearest" if args.nearest else ""
    if conditional and label is None:
        if args.n is not None or args.nearest:
            raise ValueError("a conditional model draws a chosen class: give --label K with -n or --nearest, or "
                             "--per-class M for a grid with one row per class")
        if args.per_class is None:
            print(f"drawnet sample: a conditional model: one row per class, {DEFAULT_PER_CLASS} samples each "
                  f"(--label K draws one class)", file=sys.stderr)
        per_class = args.per_class or DEFAULT_PER_CLASS
        if per_class * model.config.num_classes > viz.SAMPLES_PER_PICTURE:
            raise ValueError(f"--per-class {per_class} x {model.config.num_classes} classes is more than the "
                             f"{viz.SAMPLES_PER_PICTURE} samples a picture holds; ask for fewer per class")
        grid = viz.class_picture(model, per_class, args.seed, scale=args.scale, names=names)
        out = Path(args.out) if args.out else source.out_dir / f"{source.prefix}sample_seed{args.seed}_per_class.png"
        viz.save_png(out, grid)
        print(out)
        return 0
    pool = None
    if args.nearest:
        train = load_split(config, "train", model.config.image_shape)
        pool = train.images if label is None else train.images[train.labels == label]
    labels = None if label is None else torch.full((n,), label, dtype=torch.long, device=args.device)
    of = "" if label is None else f"_label{label}"
    name = f"{source.prefix}sample_seed{args.seed}{of}{suffix}.png"
    out = Path(args.out) if args.out else source.out_dir / name
    pictures = -(-n // viz.SAMPLES_PER_PICTURE)
    grids = viz.sample_pictures(model, n, args.seed, scale=args.scale, pool=pool, labels=labels)
    for k, grid in enumerate(grids, 1):  # one grid in memory at a time
        path = out if pictures == 1 else out.with_name(f"{out.stem}_{k:0{len(str(pictures))}d}{out.suffix}")
        viz.save_png(path, grid)
        print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._source import add_model_arguments

    # The limits are drawnet.viz's SAMPLES_PER_PICTURE and GENERATE_BATCH (not imported here: it
    # would load torch for every command line; tests/test_robustness.py checks they agree).
    p = subparsers.add_parser(
        "sample",
        help="grid of generated images from a trained DRAW model",
        description="Generate images from the prior (eqs 13-16) and save the mean images sigma(c_T) as a PNG grid. "
        "A class-conditional model draws the class given by --label, or one row per class (--per-class; its "
        "default), every row with the same latent noise. One PNG holds at most 1024 samples: a larger -n writes "
        "several, one after the other, numbered OUT_1.png, OUT_2.png, ... (zero-padded: OUT_01.png ... OUT_98.png "
        "for -n 100000); the images are generated 256 at a time, so memory stays bounded for any -n.",
    )
    add_model_arguments(p)
    p.add_argument("-n", type=int, default=None,
                   help=f"number of samples (default {DEFAULT_N}; at most 1024 per PNG, more in further files)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--label", metavar="K",
                       help="conditional models: draw class K (its index, or its name: a class folder's name, a "
                            "Fashion-MNIST class)")
    which.add_argument("--per-class", type=int, metavar="M",
                       help=f"conditional models: one row per class, M samples each (default {DEFAULT_PER_CLASS})")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same grid (default 0)")
    p.add_argument("--out", help="output PNG (default RUN/samples/sample_seed<S>[_label<K>|_per_class].png; for "
                                 "--pretrained NAME, NAME-sample_seed<S>... in the current folder)")
    p.add_argument("--nearest", action="store_true",
                   help="put the nearest training image (L2) next to each sample, as in the paper's Figs 6, 9, 12 "
                        "(with --label: the nearest of that class)")
    p.add_argument("--scale", type=int, default=None, help="integer upscaling of each image (default: automatic)")
    p.add_argument("--device", default="cpu", help="torch device to run the model on (default cpu)")
    p.set_defaults(func=run)
