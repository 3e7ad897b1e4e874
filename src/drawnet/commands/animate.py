"""``drawnet animate RUN``: DRAW drawing step by step (or an attention classifier's glimpses), as a GIF
or MP4 plus a still sequence strip. A class-conditional model draws the class given by ``--label``,
else the classes in turn."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import viz
    from ..report import load_split, parse_label, run_class_names
    from ._source import open_model

    if not 0 < args.n <= viz.MAX_ANIMATED:
        raise ValueError(f"-n must be a number of images from 1 to {viz.MAX_ANIMATED}, got {args.n}")
    if args.out is not None:
        suffix = Path(args.out).suffix.lower()
        if suffix not in (".gif", ".mp4"):
            raise ValueError(f"--out must end in .gif or .mp4, got {Path(args.out).name}")
        if suffix == ".mp4" and not viz.mp4_backend_available():
            raise ValueError(
                "MP4 needs an ffmpeg backend for imageio (pip install 'imageio[ffmpeg]'), which is not "
                "installed; use --out FILE.gif instead"
            )
    source = open_model(args, args.device)
    model, ckpt = source.model, source.ckpt
    if args.label is not None and (ckpt.kind != "draw" or args.reconstruct):
        raise ValueError("--label chooses the class a conditional DRAW model generates; it does not apply to "
                         + ("--reconstruct (the test images' own labels are used)" if args.reconstruct else
                            "a classifier run"))
    if ckpt.kind == "classifier":
        # An attention classifier: its glimpses of test images, read window in green (paper Fig. 5).
        data = load_split(source.config, args.split, model.config.image_shape)
        labels = data.labels[: args.n] if data.labels is not None else None
        anim = viz.glimpse_animation(model, data.images[: args.n], labels, scale=args.scale, ncol=args.ncol)
        name = "glimpses.gif"
    elif args.reconstruct:
        data = load_split(source.config, args.split, model.config.image_shape)
        labels = None
        if model.config.conditional:
            if data.labels is None:
                raise ValueError(f"a conditional model reconstructs labelled images; the {args.split} split has none")
            labels = data.labels[: args.n]
        anim = viz.reconstruction_animation(model, data.images[: args.n], args.seed, scale=args.scale, ncol=args.ncol,
                                            labels=labels)
        name = "reconstruction.gif"
    else:
        names = run_class_names(source.config) if model.config.conditional else None
        labels = None
        if args.label is not None:
            labels = torch.full((args.n,), parse_label(args.label, model, names), dtype=torch.long)
        anim = viz.generation_animation(model, args.n, args.seed, scale=args.scale, ncol=args.ncol,
                                        labels=None if labels is None else labels.to(args.device), names=names)
        name = "generation.gif"
    out = Path(args.out) if args.out else source.out_dir / f"{source.prefix}{name}"
    viz.save_animation(out, anim.frames, anim.duration_ms)
    strip = viz.save_png(out.with_name(out.stem + "_strip.png"), anim.strip)
    print(out)
    print(strip)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._source import add_model_arguments

    p = subparsers.add_parser(
        "animate",
        help="animation of DRAW drawing, step by step, with the attention windows",
        description="One frame per step, several images side by side; the write window in red (border width "
        "shows the filter sigma), with --reconstruct the read window in green. Also writes a still strip "
        "(rows = images, columns = steps) next to the animation as <out>_strip.png.",
    )
    add_model_arguments(p)
    p.add_argument("--out", help="output .gif or .mp4 (default RUN/samples/generation.gif, reconstruction.gif "
                   "or, for a classifier run, glimpses.gif; for --pretrained NAME, NAME-generation.gif etc. in "
                   "the current folder)")
    p.add_argument("--reconstruct", action="store_true",
                   help="DRAW: reconstruct test images instead of generating (classifier runs always show test images)")
    p.add_argument("--split", default="test", help="data split for --reconstruct and classifiers (default test)")
    p.add_argument("-n", type=int, default=8, help="number of images side by side (default 8, at most 64)")
    p.add_argument("--label", metavar="K",
                   help="conditional models: draw class K (index or class name); default: the classes in turn")
    p.add_argument("--ncol", type=int, default=8, help="images per row of a frame (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--scale", type=int, default=None, help="integer upscaling of each image (default: automatic)")
    p.add_argument("--device", default="cpu", help="torch device to run the model on (default cpu)")
    p.set_defaults(func=run)
