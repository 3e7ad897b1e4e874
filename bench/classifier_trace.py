"""Trace a classifier training run step by step: loss, gradient norm and the read windows.

    python bench/classifier_trace.py --preset cluttered100-8 --set epochs=16 --set grad_clip=10 --set lr=1e-3 \\
        --set fast=false --from 1700 --to 2000 \\
        --out runs/trace-base > runs/trace-base.jsonl

Trains exactly as ``drawnet classify train --preset P --set threads=1 ...`` would (same seed, data
order and schedule: the schedule's length comes from ``epochs``, so stopping early with ``--to`` does
not change it) and, every ``--every`` steps in [--from, --to], prints one JSON line: the step's loss
and training error, its gradient norm before clipping, and for glimpses 1, 2 and the last the mean window over the first
64 images of the batch (centre, stride, variance, intensity) and the fraction of windows whose centre
lies outside the image. The run stops (with a checkpoint) after step ``--to``. bench/QUALITY.md uses it
to show what happens when a run's training error jumps back to chance.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from drawnet import presets, train
from drawnet.classifier import ClassifierTask
from drawnet.commands._settings import parse_overrides
from drawnet.config import ClassifierConfig, TrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cluttered100-8")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--from", dest="start", type=int, default=0)
    parser.add_argument("--to", dest="stop", type=int, required=True)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--out", required=True, help="run directory to create")
    args = parser.parse_args(argv)
    p = presets.get_classifier_preset(args.preset)
    over = parse_overrides(args.set, model=ClassifierConfig, train=TrainConfig)
    cfg = TrainConfig.from_dict(p["train"] | {"threads": 1, "tensorboard": False, "pictures": False}
                                | over.get("train", {}))
    task = ClassifierTask(ClassifierConfig.from_dict(p["model"] | over.get("model", {})))
    norms: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *a, **k):  # the trainer's clipping, its norm kept
        norm = clip(params, max_norm, *a, **k)
        norms.append(float(norm))
        return norm

    torch.nn.utils.clip_grad_norm_ = recording_clip

    class Tracing(train.Trainer):
        def train_step(self, x, y):
            scalars = super().train_step(x, y)
            step = self.state.step
            if args.start <= step <= args.stop and step % args.every == 0:
                with torch.no_grad():
                    w = self.model.glimpse_sequence(x[:64].to(self.device)).windows
                _, H, W = self.model.config.image_shape
                rec = {"step": step, "loss": scalars["loss"], "error": scalars["error"], "grad_norm": norms[-1]}
                for g in sorted({0, 1, w.gx.shape[0] - 1}):
                    mean = {f: round(float(getattr(w, f)[g].mean()), 3) for f in w._fields}
                    outside = (w.gx[g] < 1) | (w.gx[g] > W) | (w.gy[g] < 1) | (w.gy[g] > H)
                    rec[f"glimpse{g + 1}"] = mean | {"outside": float(outside.float().mean())}
                print(json.dumps(rec), flush=True)
            if step >= args.stop:
                self.interrupt.requested = True
            return scalars

    Tracing(task, cfg, args.out, progress=False).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
