"""Subcommands of the ``drawnet`` CLI, one module each (see :mod:`drawnet.cli`).

The helpers below are shared by ``drawnet train`` and ``drawnet classify train``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def train_from_args(
    *,
    command: str,
    presets_command: str,
    preset: str | None,
    out: Path | None,
    resume: Path | None,
    overrides: dict[str, dict[str, Any]],
    kind: str,
    model_cls: type,
    resolve_preset: Callable[[str, dict[str, dict[str, Any]]], tuple[Any, Any]],
    make_task: Callable[[Any], Any],
    quiet: bool,
    best_text: Callable[[float], str],
) -> int:
    """Resolve the configs (a preset, or the run being resumed), train, and report as the CLI does."""
    from ..train import TrainingDiverged, resume_configs, run_training

    if resume is not None:
        model_cfg, train_cfg, preset = resume_configs(resume, kind, model_cls, overrides)
        run_dir, resuming = resume, True
    else:
        if not preset or out is None:
            raise ValueError(f"give --preset NAME and --out RUN_DIR (or --resume RUN_DIR); see '{presets_command}'")
        model_cfg, train_cfg = resolve_preset(preset, overrides)
        run_dir, resuming = out, False

    print(f"{command}: preset {preset}, run directory {run_dir}", file=sys.stderr)
    try:
        summary = run_training(make_task(model_cfg), train_cfg, run_dir, resume=resuming, preset=preset,
                               progress=not quiet)
    except TrainingDiverged as err:
        print(f"drawnet: training stopped: {err}", file=sys.stderr)
        return 1
    if summary["stopped_by"] == "interrupted":
        print(f"drawnet: interrupted at step {summary['step']}; checkpoint saved. Continue with "
              f"'{command} --resume {run_dir}'", file=sys.stderr)
        return 130
    best = best_text(summary["best"]) if summary["best"] != float("inf") else ""
    print(f"{command}: done ({summary['stopped_by']}), {summary['step']} steps in {summary['elapsed_s']:.0f} s{best}",
          file=sys.stderr)
    return 0


def load_run_and_split(
    args: Any, kind: str, split: str, device: Any, other_command: str, data: str | None = None
) -> tuple[Any, Any, Any, dict, Any]:
    """(model, checkpoint, data split, train config, model source) of a trained run or a shipped model
    (``args.run`` / ``args.pretrained``), for the eval commands; ``data`` names another data set to
    take the split from (its images must have the model's shape).

    The data set is the one the checkpoint records; where RUN/config.json says otherwise, a warning
    gives both (see :func:`drawnet.report.run_config`)."""
    from ..data import get_dataset
    from ..train import split_options
    from ._source import open_model

    source = open_model(args, device)
    model, ckpt = source.model, source.ckpt
    if ckpt.kind != kind:
        raise ValueError(f"{ckpt.path} holds a {ckpt.kind!r} model; use '{other_command}' for it")
    train_cfg = source.config.get("train") or {}
    if "data" not in train_cfg:
        raise ValueError(f"{ckpt.path} does not record its data set; cannot choose a test set")
    if data is not None and data != train_cfg["data"]:
        dataset = get_dataset(data, split)
    else:
        dataset = get_dataset(train_cfg["data"], split, **split_options(train_cfg.get("data_options", {}), split))
    shape = getattr(model.config, "image_shape", None)
    if shape is not None and tuple(shape) != dataset.image_shape:
        raise ValueError(f"{dataset.name}/{split} has images of shape {dataset.image_shape}, the model reads "
                         f"{tuple(shape)}; choose a data set of the model's image size")
    return model, ckpt, dataset, train_cfg, source
