"""Training speed of the attention classifier (section 4.1): the readable model against
drawnet.fast_classifier in float32 and with bfloat16 products, measured in one run.

    python bench/classifier_speed.py                                # cluttered100-8, batch 64
    python bench/classifier_speed.py --presets cluttered100-4 --batches 64 128 --repeats 15

One step is what the trainer does: the loss forward, the backward and an Adam update, on a batch
of random images of the preset's shape. The implementations run interleaved (the order reversed
every round), so a change of load hits them alike; the table gives images/s as medians over the
rounds and the ratio to the readable model as the median of the ratios of calls run back to back.
Bfloat16 is measured only where the CPU multiplies it natively (drawnet.engine.native_bf16).
Before timing, the three losses of one batch are compared (they must agree to float rounding for
float32, to bf16 rounding otherwise). Writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import interleaved, machine, paired_ratio, steal_seconds  # noqa: E402  (bench/ is not a package)

from drawnet import engine, presets  # noqa: E402
from drawnet.classifier import ClassifierTask  # noqa: E402
from drawnet.config import TrainConfig  # noqa: E402


def step_fn(preset: str, batch: int, impl: str):
    """A training step of ``impl`` ("readable", "fast", "fast-bf16") and the loss of its first call."""
    model_cfg, _ = presets.resolve_classifier(preset)
    task = ClassifierTask(model_cfg)
    torch.manual_seed(0)
    model = task.build_model()
    precision = "bf16" if impl == "fast-bf16" else "fp32"
    task.configure(model, TrainConfig(precision=precision, fast=impl != "readable"), torch.device("cpu"))
    if (impl == "readable") == task.fast:
        raise SystemExit(f"classifier_speed: {impl} cannot run here (drawnet's kernels are not in use)")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *model_cfg.image_shape, generator=g)
    y = torch.randint(0, model_cfg.num_classes, (batch,), generator=g)
    first = task.train_loss(model, x, y)["loss"].item()

    def step():
        opt.zero_grad(set_to_none=True)
        task.train_loss(model, x, y)["loss"].backward()
        opt.step()

    return step, first


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    impls = ["readable", "fast"]
    if engine.native_bf16(torch.device("cpu"))[0]:
        impls.append("fast-bf16")
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
              "load_before": os.getloadavg(), "repeats": args.repeats, "rows": []}
    steal0 = steal_seconds()
    for preset in args.presets:
        for batch in args.batches:
            made = {impl: step_fn(preset, batch, impl) for impl in impls}
            losses = {impl: loss for impl, (_, loss) in made.items()}
            if abs(losses["fast"] - losses["readable"]) > 1e-4 * max(1.0, abs(losses["readable"])):
                raise SystemExit(f"classifier_speed: the fast loss {losses['fast']} differs from {losses['readable']}")
            times = interleaved({impl: fn for impl, (fn, _) in made.items()}, args.repeats)
            row = {"preset": preset, "batch": batch, "first_loss": losses}
            for impl in impls:
                row[f"{impl}_img_s"] = batch / statistics.median(times[impl])
                if impl != "readable":
                    row[f"{impl}_paired_ratio"] = paired_ratio(times["readable"], times[impl])
            result["rows"].append(row)
            print(format_row(row, impls), flush=True)
    steal1 = steal_seconds()
    result["load_after"] = os.getloadavg()
    result["steal_s"] = None if steal0 is None or steal1 is None else steal1 - steal0
    return result


def format_row(row: dict, impls: list[str]) -> str:
    parts = [f"{row['preset']:<15} batch {row['batch']:>4}"]
    for impl in impls:
        text = f"{impl} {row[f'{impl}_img_s']:7.0f} img/s"
        if impl != "readable":
            text += f" ({row[f'{impl}_paired_ratio']:.2f}x)"
        parts.append(text)
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cluttered100-8"], help="classifier presets")
    parser.add_argument("--batches", nargs="+", type=int, default=[64])
    parser.add_argument("--repeats", type=int, default=11, help="timed steps per implementation (median taken)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/DATE-classifier.json)")
    args = parser.parse_args(argv)
    for name in args.presets:
        if name not in presets.CLASSIFIER_PRESETS:
            parser.error(f"unknown classifier preset {name!r}; choose from {', '.join(presets.CLASSIFIER_PRESETS)}")
    if any(b <= 0 for b in args.batches) or args.repeats <= 0 or args.threads <= 0:
        parser.error("--batches, --repeats and --threads must be positive")
    result = run(args)
    out = args.out or HERE / "results" / f"{dt.date.today():%Y%m%d}-classifier.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
