"""What the trainer costs beyond its optimisation steps, measured side by side in one process.

    python bench/trainer.py --threads 2 --steps 120          # mnist preset, batch 128, bf16 if native

Three measurements, interleaved in rounds so that a change of machine load hits all alike:

* ``step``: the bare optimisation step as bench/speed.py times it (engine loss, backward, Adam),
  on real training batches;
* ``step+clip``: the same with the trainer's gradient-norm clipping and scalar read-out;
* ``trainer``: drawnet's Trainer on the preset's data (its own batches, noise, schedule, logging,
  progress bar off), timed from its first to its last logged step, no validation in between.

It also times one validation pass (the preset's 10,000 validation images, float32, as every
epoch end runs it) and the per-epoch pictures, and reports what share of an epoch they take.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from drawnet import engine, presets, rundir
from drawnet.data import get_dataset
from drawnet.tasks import DRAWTask
from drawnet.train import Trainer


def bare_steps(model_cfg, train_cfg, images: torch.Tensor, steps: int, clip: bool) -> float:
    """Seconds per step of the optimisation step alone."""
    torch.manual_seed(0)
    task = DRAWTask(model_cfg)
    model = task.build_model()
    task.configure(model, train_cfg, torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr, fused=True)  # as the Trainer builds it
    B = train_cfg.batch_size
    times = []
    for i in range(steps + 2):
        x = images[(i * B) % (len(images) - B):][:B]
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(i)
        terms = task.train_loss(model, x, None, generator=gen, shard=(0, 1))
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            {k: float(v.detach()) for k, v in terms.items() if v.dim() == 0}
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def trainer_steps(model_cfg, train_cfg, steps: int) -> float:
    """Seconds per step of the Trainer, from its own metrics (first to last logged step)."""
    with tempfile.TemporaryDirectory() as tmp:
        every = max(steps // 4, 1)
        cfg = train_cfg.from_dict(train_cfg.to_dict() | {
            "max_steps": steps + every, "log_every": every, "tensorboard": False, "pictures": False,
            "max_minutes": None, "checkpoint_minutes": 1e6,
        })
        Trainer(DRAWTask(model_cfg), cfg, Path(tmp) / "run", progress=False).run()
        records = [r for r in rundir.read_metrics(Path(tmp) / "run") if r["kind"] == "train"]
        first, last = records[0], records[-1]
        return (last["time"] - first["time"]) / (last["step"] - first["step"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=120, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["fp32", "bf16", "auto"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_cfg, train_cfg = presets.resolve(args.preset, {"train": {"precision": args.precision,
                                                                   "threads": args.threads}})
    images = get_dataset(train_cfg.data, "train", **train_cfg.data_options).images[:20000]
    B = train_cfg.batch_size
    results: dict[str, list[float]] = {"step": [], "step+clip": [], "trainer": []}
    for _ in range(args.rounds):
        results["step"].append(bare_steps(model_cfg, train_cfg, images, args.steps, clip=False))
        results["step+clip"].append(bare_steps(model_cfg, train_cfg, images, args.steps, clip=True))
        results["trainer"].append(trainer_steps(model_cfg, train_cfg, args.steps))
        print({k: f"{B / v[-1]:.0f} img/s" for k, v in results.items()}, flush=True)
    # an epoch end: validation (float32) and the pictures
    task = DRAWTask(model_cfg)
    model = task.build_model()
    task.configure(model, train_cfg, torch.device("cpu"))
    valid = get_dataset(train_cfg.data, "valid")
    start = time.perf_counter()
    with torch.no_grad():
        task.validate(model, valid, train_cfg.valid_batch_size, torch.device("cpu"))
    valid_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        task.epoch_end(model, Path(tmp), 0)
        pictures_s = time.perf_counter() - start
    step = statistics.median(results["step"])
    trainer = statistics.median(results["trainer"])
    epoch_train_s = trainer * (50_000 // B)
    summary = {
        "preset": args.preset, "batch": B, "threads": args.threads,
        "engine": engine.choose(model, precision=train_cfg.precision).describe(),
        "images_per_s": {k: B / statistics.median(v) for k, v in results.items()},
        "trainer_over_step": trainer / step - 1,
        "validation_s": valid_s, "pictures_s": pictures_s,
        "epoch_end_share": (valid_s + pictures_s) / (epoch_train_s + valid_s + pictures_s),
        "raw_seconds_per_step": results,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "raw_seconds_per_step"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
