"""The training loop. It knows nothing about DRAW: a :class:`Task` supplies the model, its loss,
its validation and its per-epoch pictures (see :mod:`drawnet.tasks` and :mod:`drawnet.classifier`).

Features: Adam with gradient-norm clipping, seeded and reproducible (data order and noise depend only
on the seed and the step), a progress bar, metrics as JSONL and TensorBoard, atomic last/best
checkpoints with optimizer and RNG state, exact resume, Ctrl-C saves and exits, a non-finite loss or
gradient stops training and keeps the last good checkpoint, and data-parallel training under
``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import checkpoint as ckpt_io
from .config import DictConfig
from .data import ImageDataset, derive_seed, get_dataset


@dataclass(frozen=True)
class TrainConfig(DictConfig):
    """Optimisation and bookkeeping settings. The paper says only "Adam was used throughout"; the
    defaults are values known to work in reproductions (PAPER.md section 5)."""

    # Data set name in drawnet.data.DATASETS, and keyword options for its loader.
    data: str = "binarized_mnist"
    data_options: dict[str, Any] = field(default_factory=dict)
    # Passes over the training split.
    epochs: int = 10
    # Global batch size; under torchrun it is split evenly across the processes.
    batch_size: int = 128
    # Adam learning rate (reproductions use 3e-4 to 1e-3).
    lr: float = 1e-3
    # Adam betas: PyTorch's defaults, as the paper gives none.
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    # Clip the global gradient norm to this value (about 10 in reproductions); 0 disables clipping.
    grad_clip: float = 10.0
    # Seed of the model's initialisation, the data order and every noise sample.
    seed: int = 0
    # "auto" (CUDA when available), "cpu" or "cuda" / "cuda:N".
    device: str = "auto"
    # Stop after this many optimisation steps in total (quick looks and tests); None = all epochs.
    max_steps: int | None = None
    # Stop after this many minutes of training in total, the time before a resume included (then
    # validate and save as at the end of an epoch); None = no time limit. A resumed run that should
    # train 60 minutes more sets the elapsed minutes + 60. Used by the demo preset so it takes about
    # the same time on any machine.
    max_minutes: float | None = None
    # Batch size for validation (no gradients, so it can be larger).
    valid_batch_size: int = 500
    # Validate on at most this many images each epoch (None = the whole validation split).
    valid_limit: int | None = None
    # Write a training record to metrics.jsonl every this many steps.
    log_every: int = 50
    # Also save the last checkpoint every this many minutes inside an epoch (a crash loses less).
    checkpoint_minutes: float = 10.0
    # Write TensorBoard event files next to metrics.jsonl.
    tensorboard: bool = True
    # Let the task write pictures (sample grid, sequence strip) after every epoch.
    pictures: bool = True
    # CPU threads for torch (None = torch's default, one per core).
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "valid_batch_size", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train setting {name} must be positive, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"train setting lr must be positive, got {self.lr!r}")
        if self.grad_clip < 0:
            raise ValueError(f"train setting grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip!r}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"train setting max_steps must be positive or None, got {self.max_steps!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"train setting max_minutes must be positive or None, got {self.max_minutes!r}")


class Task(Protocol):
    """What the trainer needs from a model family."""

    kind: str  # checkpoint kind ("draw", "classifier")
    select_key: str  # validation metric deciding the best checkpoint; lower is better

    def model_config(self) -> dict[str, Any]: ...

    def build_model(self) -> nn.Module: ...

    def train_loss(self, model: nn.Module, x: Tensor, y: Tensor | None) -> dict[str, Tensor]: ...

    def validate(
        self, model: nn.Module, dataset: ImageDataset, batch_size: int, device: torch.device
    ) -> dict[str, Any]: ...

    def epoch_end(self, model: nn.Module, run_dir: Path, epoch: int) -> None: ...


class TrainingDiverged(RuntimeError):
    """Raised when the loss or the gradient stops being finite."""


# Data options that only make sense for the training split (per-epoch resampling).
TRAIN_ONLY_OPTIONS = ("dynamic",)


def split_options(options: dict[str, Any], split: str) -> dict[str, Any]:
    """The loader options for ``split``: the training-only ones are dropped for valid/test."""
    if split == "train":
        return dict(options)
    return {k: v for k, v in options.items() if k not in TRAIN_ONLY_OPTIONS}


# --------------------------------------------------------------------------- configuration helpers
def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build config dataclass ``cls`` from ``d``, rejecting keys it does not have."""
    return cls.from_dict(d)


def _coerce(key: str, text: str, annotation: Any) -> Any:
    """Parse ``text`` as a value of the dataclass field type ``annotation``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text  # a bare string such as cpu or binarized_mnist
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(key, text, a)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(f"--set {key}={text}: expected {annotation}, got {text!r}")
    target = origin or annotation
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
        tuple: isinstance(value, list),
        dict: isinstance(value, dict),
    }.get(target)
    if not ok:
        name = getattr(target, "__name__", str(target))
        raise ValueError(f"--set {key}={text}: expected a value of type {name}, got {text!r}")
    if target is float:
        return float(value)
    if target is tuple:
        return tuple(value)
    return value


def parse_overrides(pairs: list[str], **targets: type) -> dict[str, dict[str, Any]]:
    """Turn ``["key=value", ...]`` into typed overrides, one dict per target dataclass.

    ``targets`` maps a section name (e.g. "model", "train") to its dataclass; a key is looked up in
    each, and may be written ``section.key`` when two sections share it. Values are JSON (numbers,
    true/false, null, lists) or bare strings. Unknown keys and wrongly typed values raise ValueError
    naming the valid choices, before any work is done.
    """
    out: dict[str, dict[str, Any]] = {name: {} for name in targets}
    fields = {
        name: {f.name: f for f in dataclasses.fields(cls)} for name, cls in targets.items()
    }
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        key = key.strip()
        section, _, bare = key.rpartition(".")
        candidates = [section] if section else [s for s in targets if bare in fields[s]]
        candidates = [s for s in candidates if s in fields and bare in fields[s]]
        if not candidates:
            valid = sorted(f"{s}.{k}" if section else k for s in fields for k in fields[s])
            raise ValueError(f"unknown setting {key!r}; valid settings: {', '.join(valid)}")
        if len(candidates) > 1:
            raise ValueError(f"setting {key!r} is ambiguous; write one of {[f'{s}.{bare}' for s in candidates]}")
        s = candidates[0]
        annotation = typing.get_type_hints(targets[s])[bare]
        out[s][bare] = _coerce(key, text, annotation)
    return out


# Train settings that may change when a run is resumed: bookkeeping, budgets and the learning rate
# (a lower rate for the rest of a run is a common schedule); the rest would change the experiment.
RESUMABLE_KEYS = frozenset({"epochs", "max_steps", "max_minutes", "lr", "device", "threads", "log_every",
                            "checkpoint_minutes", "tensorboard", "pictures", "valid_batch_size"})


def resume_configs(
    run_dir: Path, kind: str, model_cls: type, overrides: dict[str, dict[str, Any]]
) -> tuple[Any, TrainConfig, str | None]:
    """(model config, train config, preset) of the run in ``run_dir`` with the allowed ``overrides``."""
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"cannot resume: {config_path} not found (is {run_dir} a run directory?)")
    saved = json.loads(config_path.read_text())
    if saved.get("kind") != kind:
        raise ValueError(f"{run_dir} is a {saved.get('kind')!r} run, not {kind!r}; resume it with its own command")
    bad = sorted(set(overrides.get("model", {})) | (set(overrides.get("train", {})) - RESUMABLE_KEYS))
    if bad:
        raise ValueError(f"cannot change {bad} when resuming; only {sorted(RESUMABLE_KEYS)} may change")
    model_cfg = model_cls.from_dict(saved["model"])
    train_cfg = config_from_dict(TrainConfig, saved["train"] | overrides.get("train", {}))
    return model_cfg, train_cfg, saved.get("preset")


# --------------------------------------------------------------------------- distributed helpers
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_setting: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        use_cuda = device_setting.startswith("cuda") or (device_setting == "auto" and torch.cuda.is_available())
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(setting: str, local_rank: int = 0) -> torch.device:
    if setting == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {setting!r} asked for, but this torch has no CUDA device; use --device cpu")
    if setting == "cuda":
        return torch.device(f"cuda:{local_rank}")
    if setting != "cpu" and not setting.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {setting!r}")
    return torch.device(setting)


class _TaskLoss(nn.Module):
    """The task's loss as a module, so DistributedDataParallel sees the forward it must wrap."""

    def __init__(self, task: Task, model: nn.Module):
        super().__init__()
        self.task = task
        self.model = model

    def forward(self, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        return self.task.train_loss(self.model, x, y)


# --------------------------------------------------------------------------- the loop
class _Interrupt:
    """First Ctrl-C (or SIGTERM) asks the loop to save and stop after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        print("\ndrawnet: interrupt received; saving a checkpoint after this step (Ctrl-C again to abort)",
              file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _write_json(path: Path, obj: Any) -> None:
    ckpt_io.atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def _append_metrics(run_dir: Path, record: dict[str, Any], writer: Any) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for key, value in record.items():
            if key not in ("kind", "epoch", "step", "time") and isinstance(value, (int, float)):
                writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])
        writer.flush()


def _scalars(terms: dict[str, Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items() if isinstance(v, Tensor) and v.dim() == 0}


def _check_compatible(saved: ckpt_io.Checkpoint, task: Task, cfg: TrainConfig) -> None:
    if saved.kind != task.kind:
        raise ValueError(f"cannot resume: {saved.path} holds a {saved.kind!r} model, this run trains {task.kind!r}")
    if saved.model_config != task.model_config():
        raise ValueError(
            f"cannot resume: the model settings differ from the checkpoint's {saved.path} "
            f"(saved {saved.model_config}, now {task.model_config()}); drop the --set model overrides"
        )


def run_training(
    task: Task,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    preset: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``task`` with ``cfg`` into ``run_dir`` and return a summary dict.

    With ``resume`` the run continues from ``run_dir/checkpoints/last.safetensors`` exactly where it
    stopped (same data order, same noise). Raises :class:`TrainingDiverged` on a non-finite loss.
    """
    run_dir = Path(run_dir)
    ddp = _init_distributed(cfg.device)
    device = resolve_device(cfg.device, ddp.local_rank)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu" and ddp.rank == 0:
        from . import kernels

        print(f"drawnet: CPU kernels: {kernels.status()}", file=sys.stderr)
    if cfg.batch_size % ddp.world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {ddp.world}")
    last_path = run_dir / ckpt_io.CHECKPOINT_DIR / ckpt_io.LAST
    best_path = run_dir / ckpt_io.CHECKPOINT_DIR / ckpt_io.BEST
    if not resume and last_path.exists():
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    if resume and not last_path.exists():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {last_path}")
    if ddp.main and last_path.parent.is_dir():
        for stale in last_path.parent.glob(".*.tmp"):  # left by a process killed while saving
            stale.unlink()

    train_set = get_dataset(cfg.data, "train", **cfg.data_options)
    valid_set = get_dataset(cfg.data, "valid", **split_options(cfg.data_options, "valid"))
    expected_shape = task.model_config().get("image_shape")
    if expected_shape is not None and tuple(expected_shape) != train_set.image_shape:
        raise ValueError(
            f"the model is built for images of shape {tuple(expected_shape)} but data set {cfg.data!r} has "
            f"{train_set.image_shape}; set model image_shape to match (--set image_shape=[...])"
        )
    if cfg.valid_limit is not None and cfg.valid_limit < len(valid_set):
        valid_set = ImageDataset(
            valid_set.name, valid_set.split, valid_set.images[: cfg.valid_limit],
            None if valid_set.labels is None else valid_set.labels[: cfg.valid_limit], valid_set.num_classes,
        )

    torch.manual_seed(cfg.seed)
    model = task.build_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best": math.inf, "elapsed": 0.0}
    if resume:
        saved = ckpt_io.load_checkpoint(last_path)
        _check_compatible(saved, task, cfg)
        ckpt_io.load_state_strict(model, saved)
        ckpt_io.restore_optimizer(optimizer, saved)
        for group in optimizer.param_groups:  # a resumed run may lower the learning rate (--set lr=...)
            group["lr"] = cfg.lr
        ckpt_io.restore_rng(saved)
        state.update({k: saved.trainer_state[k] for k in state if k in saved.trainer_state})

    loss_module: nn.Module = _TaskLoss(task, model)
    if ddp.world > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )

    writer = None
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / "config.json", {
            "kind": task.kind, "preset": preset, "model": task.model_config(), "train": cfg.to_dict(),
        })
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))

    def save(path: Path) -> None:
        if ddp.main:
            ckpt_io.save_checkpoint(
                path, kind=task.kind, model=model, model_config=task.model_config(), train_config=cfg.to_dict(),
                trainer_state=dict(state), optimizer=optimizer,
            )

    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training split ({len(train_set)} images)")
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    start_time = time.time() - state["elapsed"]
    last_save = time.time()
    stopped_by = "finished"
    summary: dict[str, Any] = {}

    def out_of_time() -> bool:
        return cfg.max_minutes is not None and time.time() - start_time >= cfg.max_minutes * 60

    with _Interrupt() as interrupt:
        while state["epoch"] < cfg.epochs and state["step"] < total_steps and not out_of_time():
            epoch = state["epoch"]
            model.train()
            batches = train_set.batches(cfg.batch_size, epoch=epoch, seed=cfg.seed, shuffle=True, drop_last=True)
            bar = _progress(progress and ddp.main, steps_per_epoch, epoch, cfg.epochs, state["batch_in_epoch"])
            window: dict[str, float] = {}
            window_n, window_images, window_start = 0, 0, time.time()
            for i, (x, y) in enumerate(batches):
                if i < state["batch_in_epoch"]:
                    continue  # resuming inside an epoch: skip what was already trained on
                # Noise and any other randomness of this step depend only on (seed, step), so a
                # resumed or data-parallel run draws exactly what an uninterrupted one would.
                torch.manual_seed(derive_seed(cfg.seed, state["step"], 2))
                x_local = x[ddp.rank :: ddp.world].to(device, non_blocking=True)
                y_local = None if y is None else y[ddp.rank :: ddp.world].to(device, non_blocking=True)
                terms = loss_module(x_local, y_local)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf
                )
                scalars = _scalars(terms)
                if not (math.isfinite(scalars["loss"]) and math.isfinite(float(grad_norm))):
                    raise TrainingDiverged(
                        f"non-finite {'loss' if not math.isfinite(scalars['loss']) else 'gradient norm'} at step "
                        f"{state['step']} (epoch {epoch}); training stopped. The last good checkpoint is "
                        f"{last_path if last_path.exists() else '(none saved yet)'}. Try a lower lr or grad_clip."
                    )
                optimizer.step()
                state["step"] += 1
                state["batch_in_epoch"] = i + 1
                for k, v in scalars.items():
                    window[k] = window.get(k, 0.0) + v
                window_n += 1
                window_images += x.shape[0]
                if bar is not None:
                    rate = window_images / max(time.time() - window_start, 1e-9)
                    shown = {k: f"{window[k] / window_n:.2f}" for k in list(window)[:3]}
                    bar.set_postfix(shown | {"img/s": f"{rate:.0f}"}, refresh=False)
                    bar.update(1)
                if state["step"] % cfg.log_every == 0 and ddp.main:
                    now = time.time()
                    record = {"kind": "train", "epoch": epoch, "step": state["step"], "time": now - start_time}
                    record |= {k: v / window_n for k, v in window.items()}
                    record["images_per_s"] = window_images / max(now - window_start, 1e-9)
                    _append_metrics(run_dir, record, writer)
                    window, window_n, window_images, window_start = {}, 0, 0, now
                if interrupt.requested or state["step"] >= total_steps or out_of_time():
                    break
                if time.time() - last_save > cfg.checkpoint_minutes * 60:
                    state["elapsed"] = time.time() - start_time
                    save(last_path)
                    last_save = time.time()
            if bar is not None:
                bar.close()
            if interrupt.requested:
                stopped_by = "interrupted"
                break
            epoch_done = state["batch_in_epoch"] >= steps_per_epoch
            if not epoch_done and not out_of_time():
                break  # max_steps reached inside the epoch: save below without validating
            if not epoch_done:
                stopped_by = "time limit"
            # ---- end of epoch: validate, pictures, checkpoints
            model.eval()
            if ddp.main:
                with torch.no_grad():
                    val = task.validate(model, valid_set, cfg.valid_batch_size, device)
                record = {"kind": "valid", "epoch": epoch, "step": state["step"], "time": time.time() - start_time}
                _append_metrics(run_dir, record | val, writer)
                summary["valid"] = val
                if progress:
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in val.items() if isinstance(v, (int, float)))
                    print(f"epoch {epoch + 1}/{cfg.epochs}: validation {shown}", file=sys.stderr)
                if cfg.pictures:
                    task.epoch_end(model, run_dir, epoch)
            if epoch_done:  # a run stopped by the time limit resumes inside its epoch
                state["epoch"] = epoch + 1
                state["batch_in_epoch"] = 0
            state["elapsed"] = time.time() - start_time
            if ddp.main:
                value = float(summary["valid"][task.select_key])
                if value < state["best"]:
                    state["best"] = value
                    save(best_path)
                save(last_path)
            last_save = time.time()
            if ddp.world > 1:
                dist.barrier()

    state["elapsed"] = time.time() - start_time
    save(last_path)
    if not best_path.exists() and ddp.main:
        save(best_path)  # no epoch completed yet: the best we have is the last
    if writer is not None:
        writer.close()
    if ddp.world > 1:
        dist.barrier()
    summary |= {"stopped_by": stopped_by, "step": state["step"], "epoch": state["epoch"], "best": state["best"],
                "elapsed_s": state["elapsed"], "run_dir": str(run_dir)}
    return summary


def _progress(enabled: bool, total: int, epoch: int, epochs: int, initial: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
