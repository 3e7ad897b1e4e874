"""drawnet presets: list the named experiment presets and their settings."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("presets", help="list the training presets", description=__doc__)
    p.add_argument("--json", action="store_true", help="print the presets as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..presets import PRESETS, resolve

    if args.json:
        print(json.dumps(PRESETS, indent=2))
        return 0
    for name, preset in PRESETS.items():
        model, train = resolve(name)
        read = f"read {model.read_n}x{model.read_n}" if model.read_n else "no read attention"
        write = f"write {model.write_n}x{model.write_n}" if model.write_n else "no write attention"
        attn = f"{read}, {write}" + (f", conditional on {model.num_classes} classes" if model.conditional else "")
        print(f"{name}\n  source: {preset['source']}")
        print(f"  model:  image {model.image_shape}, T={model.T}, LSTM enc {model.enc_size}/dec {model.dec_size}, "
              f"z={model.z_size}, {attn}")
        print(f"  train:  data {train.data} {train.data_options or ''}, {train.epochs} epochs, batch "
              f"{train.batch_size}, Adam lr {train.lr:g}, grad clip {train.grad_clip:g}"
              + (f", attention gradient clip {train.attention_grad_clip:g}" if train.attention_grad_clip else "")
              + (f" for {train.attention_grad_clip_epochs} epochs" if train.attention_grad_clip_epochs else "")
              + (f", then {train.attention_grad_clip_after:g}" if train.attention_grad_clip_after else "")
              + (f", {train.max_minutes:g} minutes" if train.max_minutes else "")
              + (f", starting from {train.init_from}" if train.init_from else "") + "\n")
    return 0
