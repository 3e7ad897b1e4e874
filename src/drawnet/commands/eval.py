"""drawnet eval: the test-set NLL bound and the importance-weighted NLL of a trained DRAW model."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._source import add_model_arguments

    p = subparsers.add_parser("eval", help="measure a DRAW run's test NLL (bound and importance-weighted)",
                              description=__doc__)
    add_model_arguments(p)
    p.add_argument("--samples", type=int, default=1,
                   help="posterior samples per image for the bound (default 1; 2 or more also give its "
                        "standard error from the posterior noise)")
    p.add_argument("--iw", type=int, default=0, metavar="K",
                   help="importance samples per image for the -log p(x) estimate (0 = skip; the paper-style "
                        "estimate uses K in the thousands)")
    p.add_argument("--split", default="test", choices=["test", "valid"], help="data split (default test)")
    p.add_argument("--data", help="evaluate on this data set instead of the run's own (e.g. static_mnist: the "
                                  "Larochelle test set of the paper's Table 2; fetch it first)")
    p.add_argument("--limit", type=int, help="evaluate on the first N images only")
    p.add_argument("--iw-limit", type=int, help="importance-weighted estimate on the first N images only")
    p.add_argument("--batch-size", type=int, default=500, help="images per batch for the bound")
    p.add_argument("--iw-chunk", type=int, metavar="ROWS",
                   help="rows per forward pass for the IW estimate, at least one copy of each of 100 images "
                        "(default: 200 on a CPU, where small passes stay in the caches, 4096 on a GPU; the "
                        "noise is drawn pass by pass, so the estimate for one --seed depends on it)")
    p.add_argument("--iw-progress", type=Path, metavar="FILE",
                   help="keep the importance-weighted estimate's per-image results in FILE after every 100 images "
                        "and continue from FILE when it exists: a stopped estimate (K=1000 on 10,000 images takes "
                        "hours) goes on where it left off with the same command, to exactly the numbers of an "
                        "uninterrupted one; a file of another model, K, seed, chunk, data or precision is refused")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior noise")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: one per core); e.g. 1 to leave the other cores to a "
                        "training run while a long estimate goes on")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="matrix products of the fast path (default fp32: every number this project reports is)")
    p.add_argument("--readable", action="store_true",
                   help="run the readable model (model.step) instead of the fast path (same numbers, slower)")
    p.add_argument("--json", action="store_true", help="print only a JSON object (for scripts)")
    p.add_argument("--out", type=Path, help="where to write the results (default RUN/eval.json, read by the report; "
                                            "not written for --pretrained unless given)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import engine, evaluate
    from ..data import describe_split
    from ..rundir import EVAL_FILE, atomic_write, run_dir_of
    from ..train import resolve_device
    from . import load_run_and_split

    for name in ("samples", "limit", "iw_limit", "batch_size", "iw_chunk", "threads"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.iw < 0:
        raise ValueError(f"--iw must be 0 (no estimate) or a positive number of importance samples, got {args.iw}")
    if args.iw_progress is not None and not args.iw:
        raise ValueError("--iw-progress keeps the progress of the importance-weighted estimate: give --iw K with it")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, ckpt, dataset, train_cfg, source = load_run_and_split(args, "draw", args.split, device,
                                                                 "drawnet classify eval", data=args.data)
    data_name = args.data or train_cfg["data"]
    test_set = describe_split(data_name, args.split)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    say(f"drawnet eval: {ckpt.path} on {data_name}/{args.split} "
        f"({min(len(dataset), args.limit or len(dataset))} images): {test_set}")
    chosen = engine.choose(model, device, fast=not args.readable, precision=args.precision)
    say(f"drawnet eval: runs the {chosen.describe()}")
    t0 = time.time()
    result = evaluate.nll_bound(model, dataset, batch_size=args.batch_size, samples=args.samples, seed=args.seed,
                                limit=args.limit, device=device, engine=chosen)
    result |= {"split": args.split, "data": data_name, "test_set": test_set, "checkpoint": str(ckpt.path),
               "engine": chosen.describe(), "bound_seconds": time.time() - t0, "nll_iw": None, "iw_samples": None}
    if args.iw > 0:
        t0 = time.time()
        iw_limit = min(x for x in (args.limit, args.iw_limit, len(dataset)) if x is not None)
        bar = None
        if not args.json:
            from tqdm import tqdm

            bar = tqdm(total=iw_limit, desc=f"importance-weighted, K={args.iw}", unit="img", file=sys.stderr,
                       dynamic_ncols=True, mininterval=2.0)
        try:
            iw = evaluate.nll_importance_weighted(
                model, dataset, args.iw, chunk=args.iw_chunk, seed=args.seed, limit=iw_limit, device=device,
                engine=chosen, progress=None if bar is None else bar.update, progress_file=args.iw_progress,
                identity={"data": data_name, "split": args.split, "engine": chosen.describe()})
        except KeyboardInterrupt:
            if args.iw_progress is None:
                raise
            if bar is not None:
                bar.close()
                bar = None
            print(f"drawnet eval: stopped; the images done so far are kept in {args.iw_progress}: the same command "
                  f"continues the estimate", file=sys.stderr)
            return 130
        finally:
            if bar is not None:
                bar.close()
        result |= {"nll_iw": iw["nll_iw"], "iw_samples": iw["iw_samples"], "iw_num_images": iw["num_images"]}
        result["iw_seconds"] = time.time() - t0
    # A run's eval.json is read by its report; a shipped model's numbers are only printed (and written
    # where --out says), never into the installed package.
    out_path = args.out or (None if source.pretrained else run_dir_of(ckpt.path) / EVAL_FILE)
    if out_path is not None:
        atomic_write(out_path, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"on {test_set}")
    of = result["bound_of"]
    conditional = model.config.conditional
    print(f"{args.split} NLL bound on {of} (L_x + L_z): {result['nll_bound']:.2f} nats/image "
          f"(L_x {result['L_x']:.2f}, L_z {result['L_z']:.2f}; {args.samples} posterior sample(s) per image)"
          + ("; class-conditional: each image's label given" if conditional else ""))
    if result["sampling_se"] is not None:
        print(f"  ± {result['sampling_se']:.3f}: its standard error from the posterior noise, the images held fixed "
              f"({result['nll_bound']:.3f} ± {result['sampling_se']:.3f})")
    else:
        print("  (--samples 2 or more also gives its standard error from the posterior noise)")
    kl = result["kl_per_step"]
    print(f"KL per step (nats, t = 1..{len(kl)}): " + " ".join(f"{v:.2f}" for v in kl))
    if result["nll_iw"] is not None:
        print(f"importance-weighted {of}, K={args.iw}: {result['nll_iw']:.2f} nats/image "
              f"(on {result['iw_num_images']} images)")
    if conditional:
        print("(a bound on -log p(x | y) is not comparable with the paper's Table 2, which is of -log p(x))")
    else:
        print("\n".join(evaluate.table2_lines(result["nll_bound"], result["nll_iw"], result["iw_samples"])))
        if not evaluate.table2_comparable(data_name, model.config.image_shape, conditional):
            print(f"(this model is evaluated on {data_name}, not binarized MNIST digits: Table 2 is shown for "
                  "reference only)")
    if out_path is not None:
        print(f"\nwritten to {out_path}")
    return 0
