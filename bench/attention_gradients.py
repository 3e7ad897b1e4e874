"""Where the gradient of a trained DRAW comes from: the rows of d(loss)/d(raw attention parameters).

    python bench/attention_gradients.py runs/two-digit-mnist --data two_digit_mnist --batches 8 --clip 1000 100
    python bench/attention_gradients.py long-runs/mnist --data mnist --batches 4

For ``--batches`` batches of 128 training images (the first of the training split as the data set
loads it, its default options and binarization; one noise draw each, seeded by the batch index), on
the readable model in float32 with the weights training updates (the raw ones, not the averaged
ones, where the checkpoint keeps both), it reports:

* for the read and the write layer of eq. (21): quantiles of the per-image norm of each row of the
  gradient w.r.t. the five raw attention outputs (one row per image and step), and the share of
  the squared norm carried by the largest 0.1 % and 1 % of rows, the share carried by the single
  image (all its steps) with the largest sum, and the steps the largest 0.1 % of rows come from;
* per batch, the gradient norm of the attention layers (read_params, write_params) and of all
  other parameters, without and with each ``--clip`` value of TrainConfig.attention_grad_clip,
  and the fraction of rows that clip scales down.

This is the measurement behind attention_grad_clip (bench/QUALITY.md, "Two-digit MNIST"). JSON
goes to bench/results/ (or --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

from drawnet import attention, checkpoint, losses
from drawnet.data import get_dataset

HERE = Path(__file__).resolve().parent
LAYERS = ("read_params", "write_params")
QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)


def load(path: str) -> tuple[torch.nn.Module, str]:
    """The model with the run's raw weights where the checkpoint keeps them apart (weight averaging)."""
    ckpt = checkpoint.load_checkpoint(path, prefer=checkpoint.LAST)
    if ckpt.kind != "draw":
        raise ValueError(f"{path} holds a {ckpt.kind} checkpoint; this measures DRAW models")
    model = checkpoint.build_model(ckpt)
    if model.config.conditional:
        raise ValueError(f"{path}: a class-conditional model; this measures unconditional ones")
    raw = {k[4:]: v for k, v in ckpt.extra.items() if k.startswith("raw.")}
    model.load_state_dict(raw or ckpt.model_state)
    if not any(getattr(model, layer) is not None for layer in LAYERS):
        raise ValueError(f"{path}: this model has no attention (read_n and write_n unset); nothing to measure")
    return model.float().train(), "raw weights" if raw else "the checkpoint's weights"


def measure(model: torch.nn.Module, images: torch.Tensor, batches: int, clips: list[float],
            batch_size: int = 128) -> dict:
    rows: dict[str, list[torch.Tensor]] = {layer: [] for layer in LAYERS if getattr(model, layer) is not None}
    # (image index, step) of each row, in the order rows are appended (steps backwards within a pass)
    where: dict[str, list[torch.Tensor]] = {layer: [] for layer in rows}

    def keep(layer: str, batch: int, first: int):
        step = [0]

        def hook(_module, _inputs, raw):
            t = step[0]
            step[0] += 1

            def record(g):
                rows[layer].append(batch * g.detach().norm(dim=1))
                where[layer].append(torch.stack([first + torch.arange(batch), torch.full((batch,), t)], 1))

            raw.register_hook(record)
        return hook

    per_clip: dict[str, list[dict]] = {}
    for clip_value in [None, *clips]:
        results = []
        for b in range(batches):
            x = images[b * batch_size : (b + 1) * batch_size].float()
            clip = attention.GradientClip(clip_value) if clip_value else None
            hooks = ([getattr(model, layer).register_forward_hook(keep(layer, x.shape[0], b * batch_size))
                      for layer in rows]
                     if clip is None else [])
            with model.clipping_attention_gradient(clip):
                out = model(x, generator=torch.Generator().manual_seed(b))
            for hook in hooks:
                hook.remove()
            terms = losses.loss_terms(out.canvas, x, out.mu, out.log_sigma)
            model.zero_grad(set_to_none=True)
            terms["loss"].backward()
            norms = {True: [], False: []}
            for name, p in model.named_parameters():
                if p.grad is not None:
                    norms[name.split(".")[0] in LAYERS].append(p.grad.norm())
            results.append({
                "loss": float(terms["loss"].detach()),
                "attention_norm": float(torch.stack(norms[True]).norm()),
                "rest_norm": float(torch.stack(norms[False]).norm()),
                "fraction_clipped": clip.take_fraction() if clip is not None else 0.0,
            })
        per_clip["none" if clip_value is None else f"{clip_value:g}"] = results
    layers = {}
    for layer, parts in rows.items():
        r = torch.cat(parts).double()
        image, step = torch.cat(where[layer]).unbind(1)
        sq, order = r.pow(2).sort(descending=True)
        top = order[: max(1, len(sq) // 1000)]
        per_image = torch.zeros(int(image.max()) + 1, dtype=r.dtype).index_add_(0, image, r.pow(2))
        quantiles = torch.quantile(r, torch.tensor(QUANTILES, dtype=r.dtype)).tolist()
        layers[layer] = {
            "rows": len(r),
            "quantiles": {f"{q:g}": v for q, v in zip(QUANTILES, quantiles, strict=True)},
            "share_top_0.1%": float(sq[: max(1, len(sq) // 1000)].sum() / sq.sum()),
            "share_top_1%": float(sq[: max(1, len(sq) // 100)].sum() / sq.sum()),
            "share_largest_image": float(per_image.max() / per_image.sum()),
            "images_in_top_0.1%": int(image[top].unique().numel()),
            "steps_of_top_0.1%": sorted(step[top].unique().tolist()),
        }
    return {"layers": layers, "batches": per_clip}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a run directory or a .safetensors checkpoint of a DRAW model")
    ap.add_argument("--data", required=True, help="the data set it was trained on (its training split is used)")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--clip", type=float, nargs="*", default=[], help="attention_grad_clip values to apply")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.batches < 1 or any(not c > 0 for c in args.clip):
        ap.error("--batches must be >= 1 and every --clip > 0")
    torch.set_num_threads(args.threads)
    try:
        model, weights = load(args.checkpoint)
        images = get_dataset(args.data, "train").images
        if len(images) < args.batches * 128:
            raise ValueError(f"--batches {args.batches} needs {args.batches * 128} training images; "
                             f"{args.data} has {len(images)}")
    except (OSError, ValueError) as err:
        print(f"attention_gradients.py: {err}", file=sys.stderr)
        return 2
    result = {"checkpoint": args.checkpoint, "data": args.data, "weights": weights,
              **measure(model, images, args.batches, args.clip)}
    for layer, s in result["layers"].items():
        q = ", ".join(f"{k}: {v:.3g}" for k, v in s["quantiles"].items())
        print(f"{layer}: {s['rows']} rows; per-image row norm quantiles {q}; top 0.1 % of rows carry "
              f"{100 * s['share_top_0.1%']:.1f} % of the squared norm, top 1 % {100 * s['share_top_1%']:.1f} %; "
              f"one image (all its steps) {100 * s['share_largest_image']:.1f} %; the top 0.1 % come from "
              f"{s['images_in_top_0.1%']} images, steps {s['steps_of_top_0.1%']}")
    for clip, batches in result["batches"].items():
        print(f"clip {clip}: attention norm {[round(b['attention_norm']) for b in batches]}, rest "
              f"{[round(b['rest_norm']) for b in batches]}, rows clipped "
              f"{[round(b['fraction_clipped'], 3) for b in batches]}")
    out = args.out or HERE / "results" / f"attention_gradients-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
