"""The quality tables of bench/QUALITY.md from training runs: recipe, minutes, images seen, and the
validation bound (nats, DRAW runs) or the validation error (%, classifier runs).

    python bench/quality.py RUN [RUN ...]              # a markdown table, one row per run
    python bench/quality.py RUN ... --at-minutes 30    # also the bound reached by 30 minutes
    python bench/quality.py RUN ... --curves           # the validation bound of every epoch
    python bench/quality.py RUN ... --plot F.png       # and as a figure, by epoch and by hour

Reads each run's config.json and metrics.jsonl (drawnet.rundir): the validation records
("kind": "valid") with their training time, step and epoch. "minutes" is training time as the
trainer measures it (max_minutes counts the same clock); images seen = steps x batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from drawnet import rundir
from drawnet.evaluate import PAPER_TABLE2

# Train settings that make a recipe (the rest is bookkeeping).
RECIPE_KEYS = ("lr", "lr_schedule", "lr_final", "lr_warmup_steps", "batch_size", "ema_decay", "grad_clip",
               "precision", "threads", "epochs")
MODEL_KEYS = ("glimpses", "attention_sigma_init")  # classifier settings a lever run may change


def recipe(config: dict) -> str:
    train, model = config.get("train", {}), config.get("model", {})
    parts = [f"{k}={train[k]}" for k in RECIPE_KEYS if k in train]
    if train.get("data_options", {}).get("dynamic"):
        parts.append("dynamic")
    if model.get("layer_norm"):
        parts.append("layer_norm")
    if config.get("kind") == "classifier":
        parts += [f"{k}={model[k]}" for k in MODEL_KEYS if k in model]
    return ", ".join(parts)


def validation_value(record: dict) -> float | None:
    """The number a validation record is judged by: the bound in nats, or the error in %."""
    if "bound" in record:
        return record["bound"]
    return 100 * record["error"] if "error" in record else None


def summarise(run: Path, at_minutes: float | None) -> dict:
    config = rundir.read_config(run) or {}
    valid = [r for r in rundir.read_metrics(run) if r.get("kind") == "valid" and validation_value(r) is not None]
    if not valid:
        raise ValueError(f"{run}: no validation records yet")
    batch = config.get("train", {}).get("batch_size", 0)
    last = valid[-1]
    row = {
        "run": run.name, "recipe": recipe(config), "minutes": last["time"] / 60, "epochs": last["epoch"] + 1,
        "images": last["step"] * batch, "last_bound": validation_value(last),
        "best_bound": min(validation_value(r) for r in valid),
        "curve": [(r["epoch"] + 1, r["time"] / 60, validation_value(r)) for r in valid],
        "what": "bound" if "bound" in last else "error %",
    }
    train = [r for r in rundir.read_metrics(run, warn=False) if r.get("kind") == "train" and "images_per_s" in r]
    if train:
        rates = sorted(r["images_per_s"] for r in train)
        row["images_per_s"] = rates[len(rates) // 2]
    if at_minutes is not None:
        before = [r for r in valid if r["time"] <= at_minutes * 60 + 1]
        row["bound_at"] = validation_value(before[-1]) if before else None
    return row


def paper_value(config: dict) -> tuple[float, str] | None:
    """The paper's Table 2 bound a DRAW run is measured against (with or without attention), or None."""
    model = config.get("model", {})
    # Table 2 is of -log p(x) on binarized MNIST: not of a classifier, of a class-conditional model's
    # -log p(x | y), or of grey-level data
    if (config.get("kind") == "classifier" or model.get("conditional")
            or config.get("train", {}).get("data") not in ("binarized_mnist", "static_mnist")):
        return None
    name = "DRAW" if model.get("read_n") is not None else "DRAW without attention"
    value = next(v for n, _, v in PAPER_TABLE2 if n == name)
    return value, f"paper (test bound), {name}: {value:.2f}"


def plot(rows: list[dict], configs: list[dict], out: Path) -> None:
    """Validation bound (or error) of each run against epochs and against training hours, with the
    paper's value of each as a dashed line of the run's colour."""
    from drawnet import viz

    fig = viz._figure(10, 3.8)
    axes = fig.subplots(1, 2, sharey=True)
    values = []
    for i, (row, config) in enumerate(zip(rows, configs, strict=True)):
        colour = f"C{i}"
        epochs, minutes, ys = zip(*row["curve"], strict=True)
        values += ys
        for ax, xs in ((axes[0], epochs), (axes[1], [m / 60 for m in minutes])):
            ax.plot(xs, ys, color=colour, lw=1.5, marker="o", ms=2, label=row["run"])
        paper = paper_value(config)
        if paper is not None:
            values.append(paper[0])
            for ax in axes:
                ax.axhline(paper[0], color=colour, ls="--", lw=1, label=paper[1] if ax is axes[0] else None)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training time (hours)")
    axes[0].set_ylabel(f"validation {rows[0]['what']}")
    top = viz._robust_top(values)
    if top is not None:
        bottom = min(values)
        axes[0].set_ylim(bottom - 0.05 * (top - bottom), top)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper right")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(viz.figure_png(fig))
    print(f"wrote {out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--at-minutes", type=float, help="also the last validation bound or error by this time")
    parser.add_argument("--curves", action="store_true", help="print each run's validation bound (or error) by epoch")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also draw the curves (by epoch and by hour) to PNG")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        rows = [summarise(run, args.at_minutes) for run in args.runs]
    except (OSError, ValueError) as err:
        raise SystemExit(f"quality.py: {err}") from None
    what = rows[0]["what"]
    if any(r["what"] != what for r in rows):
        raise SystemExit("quality.py: give it DRAW runs or classifier runs, not both in one table")
    if args.plot is not None:
        plot(rows, [rundir.read_config(run) or {} for run in args.runs], args.plot)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    at = f" | {what} at {args.at_minutes:g} min" if args.at_minutes is not None else ""
    print(f"| run | recipe | minutes | epochs | images seen | img/s (median) | last {what} | best {what}{at} |")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if at else ""))
    for r in rows:
        extra = ""
        if args.at_minutes is not None:
            extra = f" | {r['bound_at']:.2f}" if r["bound_at"] is not None else " | -"
        print(f"| {r['run']} | {r['recipe']} | {r['minutes']:.1f} | {r['epochs']} | {r['images']:,} "
              f"| {r.get('images_per_s', 0):.0f} | {r['last_bound']:.2f} | {r['best_bound']:.2f}{extra} |")
    if args.curves:
        for r in rows:
            print(f"\n{r['run']}: " + ", ".join(f"{e}: {b:.2f} ({m:.0f} min)" for e, m, b in r["curve"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
