"""drawnet classify: "Differentiable RAM", cluttered MNIST classification with DRAW's read attention
(paper section 4.1, Table 1). Subcommands: train, eval, presets."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._source import add_model_arguments

    p = subparsers.add_parser("classify", help="cluttered MNIST classification with DRAW's read attention",
                              description=__doc__)
    sub = p.add_subparsers(dest="classify_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: _usage(p))

    t = sub.add_parser("train", help="train a classifier from a preset", description="Train an attention classifier.")
    t.add_argument("--preset", help="preset name (see 'drawnet classify presets')")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model or train setting, e.g. --set glimpses=4 --set lr=3e-4 (repeatable)")
    t.add_argument("--out", type=Path, help="run directory to create (or to continue, with --resume)")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR (default: --out) where it stopped")
    t.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the preset's, auto)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="test error of a classifier run, next to the paper's Table 1",
                       description="Measure a classifier run's error and write RUN/eval.json.")
    add_model_arguments(e)
    e.add_argument("--split", default="test", choices=["test", "valid"], help="data split (default test)")
    e.add_argument("--batch-size", type=int, default=500, help="images per batch (default 500)")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.add_argument("--json", action="store_true", help="print only a JSON object (for scripts)")
    e.set_defaults(func=run_eval)

    s = sub.add_parser("presets", help="list the classifier presets", description="List the classifier presets.")
    s.add_argument("--json", action="store_true", help="print the presets as JSON")
    s.set_defaults(func=run_presets)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_train(args: argparse.Namespace) -> int:
    from ..classifier import ClassifierTask
    from ..config import ClassifierConfig, TrainConfig
    from ..presets import resolve_classifier
    from . import train_from_args
    from ._settings import parse_overrides

    overrides = parse_overrides(args.overrides, model=ClassifierConfig, train=TrainConfig)
    if args.device:
        overrides["train"]["device"] = args.device
    resume = None
    if args.resume is not None:
        resume = args.out if args.resume is True else Path(args.resume)
        if resume is None:
            raise ValueError("--resume needs a run directory: --resume RUN_DIR or --out RUN_DIR --resume")
    return train_from_args(
        presets_command="drawnet classify presets", command="drawnet classify train",
        preset=args.preset, out=args.out, resume=resume, overrides=overrides,
        kind="classifier", model_cls=ClassifierConfig, resolve_preset=resolve_classifier, make_task=ClassifierTask,
        quiet=args.quiet, best_text=lambda best: f", best validation error {best * 100:.2f} %",
    )


def run_eval(args: argparse.Namespace) -> int:
    from ..classifier import confused_pairs, evaluate_classifier, table1_lines
    from ..rundir import EVAL_FILE, run_dir_of, write_json
    from ..train import resolve_device
    from . import load_run_and_split

    device = resolve_device(args.device)
    model, ckpt, dataset, train_cfg, source = load_run_and_split(args, "classifier", args.split, device, "drawnet eval")
    if not args.json:
        print(f"drawnet classify eval: {ckpt.path} on {train_cfg['data']}/{args.split} ({len(dataset)} images)",
              file=sys.stderr)
    t0 = time.time()
    measured = evaluate_classifier(model, dataset, args.batch_size, device, details=True)
    result = {
        "split": args.split, "error": measured["error"], "num_images": measured["num_images"],
        "loss": measured["loss"], "data": train_cfg["data"], "data_options": train_cfg.get("data_options", {}),
        "checkpoint": str(ckpt.path), "epoch": ckpt.trainer_state.get("epoch"),
        "step": ckpt.trainer_state.get("step"), "seconds": time.time() - t0,
        # rows: the true class, columns: the predicted one; the report shows both with glimpses
        "confusion": measured["confusion"], "misclassified": measured["misclassified"],
    }
    out_path = None if source.pretrained else run_dir_of(ckpt.path) / EVAL_FILE
    if out_path is not None:
        write_json(out_path, result)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.split} error: {result['error'] * 100:.2f} % on {result['num_images']} images "
          f"(cross-entropy {result['loss']:.4f}; checkpoint after {result['epoch']} epochs)")
    pairs = confused_pairs(result["confusion"])
    if pairs:
        print("most frequent mistakes (true -> predicted): "
              + ", ".join(f"{t} -> {p} ({n})" for t, p, n in pairs))
    g = model.config.glimpses
    print("\n".join(table1_lines(result["error"], f"this model, {g} glimpses, {model.config.read_n}x"
                                                  f"{model.config.read_n}")))
    size = tuple(model.config.image_shape[1:])
    if size != (100, 100):
        print(f"  (this model reads {size[0]}x{size[1]} images: not the table's 100x100 task)")
    if out_path is not None:
        print(f"\nwritten to {out_path}")
    return 0


def run_presets(args: argparse.Namespace) -> int:
    from ..presets import CLASSIFIER_PRESETS, resolve_classifier

    if args.json:
        print(json.dumps(CLASSIFIER_PRESETS, indent=2))
        return 0
    for name, p in CLASSIFIER_PRESETS.items():
        model, train = resolve_classifier(name)
        print(f"{name}\n  source: {p['source']}")
        print(f"  model:  image {model.image_shape}, {model.glimpses} glimpses of {model.read_n}x{model.read_n}, "
              f"LSTM {model.hidden_size}, {model.num_classes} classes")
        print(f"  train:  data {train.data} {train.data_options or ''}, {train.epochs} epochs, batch "
              f"{train.batch_size}, Adam lr {train.lr:g}, grad clip {train.grad_clip:g}\n")
    return 0
