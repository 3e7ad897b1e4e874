"""The training loop. It knows nothing about DRAW: a :class:`Task` supplies the model, its loss,
its validation and its per-epoch pictures (see :mod:`drawnet.tasks` and :mod:`drawnet.classifier`).

Features: Adam with gradient-norm clipping, a learning-rate schedule, an exponential moving average
of the weights, seeded and reproducible (data order and noise depend only on the seed and the
step), a progress bar, metrics as JSONL and TensorBoard, atomic last/best checkpoints with
optimizer and RNG state, exact resume, Ctrl-C saves and exits, a non-finite loss, gradient or
weight stops training and keeps the last good checkpoint, one writer per run directory (a lock),
and data-parallel training under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on GPU).

A run is :class:`Trainer` in named steps: prepare the run directory, load the data, build the model
and optimizer, restore (when resuming), then one epoch after another (``train_epoch``) each
followed by ``end_of_epoch`` (validate, pictures, checkpoints), and ``finish``. Everything that
must survive a resume is in :class:`TrainerState`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import checkpoint as ckpt_io
from . import rundir
from .config import TrainConfig
from .data import ImageDataset, check_options, derive_seed, get_dataset

__all__ = ["Task", "TrainConfig", "Trainer", "TrainerState", "TrainingDiverged", "learning_rate", "run_training"]


class Task(Protocol):
    """What the trainer needs from a model family."""

    kind: str  # checkpoint kind ("draw", "classifier")
    select_key: str  # validation metric deciding the best checkpoint; lower is better

    def model_config(self) -> dict[str, Any]: ...

    def build_model(self) -> nn.Module: ...

    def configure(self, model: nn.Module, cfg: TrainConfig, device: torch.device) -> str:
        """Choose how the model runs for this run's settings; returns one line saying how."""
        ...

    def train_loss(
        self, model: nn.Module, x: Tensor, y: Tensor | None, *, generator: torch.Generator, shard: tuple[int, int]
    ) -> dict[str, Tensor]:
        """The loss of this process's rows ``x`` (rows ``rank::world`` of the global batch, ``shard`` =
        (rank, world)); any randomness comes from ``generator``, seeded by the trainer for the step."""
        ...

    def validate(
        self, model: nn.Module, dataset: ImageDataset, batch_size: int, device: torch.device
    ) -> dict[str, Any]: ...

    def epoch_end(self, model: nn.Module, run_dir: Path, epoch: int) -> None: ...


class TrainingDiverged(RuntimeError):
    """Raised when the loss, the gradient or the weights stop being finite."""


# Data options that only make sense for the training split (per-epoch resampling).
TRAIN_ONLY_OPTIONS = ("dynamic",)


def split_options(options: dict[str, Any], split: str) -> dict[str, Any]:
    """The loader options for ``split``: the training-only ones are dropped for valid/test."""
    if split == "train":
        return dict(options)
    return {k: v for k, v in options.items() if k not in TRAIN_ONLY_OPTIONS}


# Train settings that may change when a run is resumed: bookkeeping, budgets, the step size (the
# learning rate's peak, a warm restart of it, the gradient-norm clips) and how the model runs (fast,
# precision); the rest would change the experiment.
RESUMABLE_KEYS = frozenset({"epochs", "max_steps", "max_minutes", "lr", "lr_restart_epoch", "lr_restart_warmup_steps",
                            "grad_clip", "attention_grad_clip", "attention_grad_clip_epochs",
                            "attention_grad_clip_after",
                            "swa_start_epoch", "swa_lr",
                            "device", "threads",
                            "log_every", "checkpoint_minutes", "tensorboard", "pictures", "valid_batch_size",
                            "valid_limit", "valid_every", "fast", "precision"})


def resume_configs(
    run_dir: Path, kind: str, model_cls: type, overrides: dict[str, dict[str, Any]]
) -> tuple[Any, TrainConfig, str | None]:
    """(model config, train config, preset) of the run in ``run_dir`` with the allowed ``overrides``."""
    saved = rundir.read_config(run_dir)
    if saved is None:
        raise FileNotFoundError(
            f"cannot resume: {Path(run_dir) / rundir.CONFIG_FILE} not found (is {run_dir} a run directory?)"
        )
    for key in ("kind", "model", "train"):
        if key not in saved:
            raise ValueError(f"{Path(run_dir) / rundir.CONFIG_FILE} has no {key!r} entry; it is not a drawnet run")
    if saved["kind"] != kind:
        raise ValueError(f"{run_dir} is a {saved['kind']!r} run, not {kind!r}; resume it with its own command")
    bad = sorted(set(overrides.get("model", {})) | (set(overrides.get("train", {})) - RESUMABLE_KEYS))
    if bad:
        raise ValueError(f"cannot change {bad} when resuming; only {sorted(RESUMABLE_KEYS)} may change")
    for key in ("model", "train"):
        if not isinstance(saved[key], dict):
            raise ValueError(f"{Path(run_dir) / rundir.CONFIG_FILE}: its {key!r} entry is not a JSON object; "
                             f"it is damaged")
    model_cfg = model_cls.from_dict(saved["model"])
    train_cfg = TrainConfig.from_dict(saved["train"] | overrides.get("train", {}))
    return model_cfg, train_cfg, saved.get("preset")


# --------------------------------------------------------------------------- schedule and averaging
def learning_rate(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int, lr_scale: float = 1.0) -> float:
    """The learning rate of optimisation step ``step`` (0-based) of a run of ``total_steps``."""
    warm = cfg.lr_warmup_steps
    if cfg.swa_start_epoch and step >= cfg.swa_start_epoch * steps_per_epoch:
        return cfg.swa_lr  # the averaging phase (TrainConfig.swa_start_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    schedule = cfg.lr_schedule
    if schedule == "constant":
        return cfg.lr
    if schedule == "plateau":
        return max(cfg.lr * lr_scale, cfg.lr_final)
    if schedule == "step":
        return max(cfg.lr * cfg.lr_decay ** ((step - warm) // (cfg.lr_step_epochs * steps_per_epoch)), cfg.lr_final)
    start, end = warm, total_steps
    restart = cfg.lr_restart_epoch * steps_per_epoch
    if restart > warm:  # a warm restart: two cycles, [warm, restart) and [restart, total)
        if step < restart:
            start, end = warm, restart
        else:  # the new cycle decays after its own warm-up (TrainConfig.lr_restart_warmup_steps; 0: none)
            start, end = restart + cfg.lr_restart_warmup_steps, total_steps
            if step < start:
                return cfg.lr * (step - restart + 1) / cfg.lr_restart_warmup_steps
    progress = min((step - start) / max(end - start, 1), 1.0)
    if schedule == "cosine":
        return cfg.lr_final + (cfg.lr - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.lr_final / cfg.lr) ** progress  # exponential


class WeightAverage:
    """Averaged copy of a model's parameters. ``update``: the exponential moving average (Polyak
    averaging), avg <- decay avg + (1 - decay) w after every step, with the decay ramped up as
    min(decay, (1 + n) / (10 + n)) over the first updates so that the average forgets the
    initialisation quickly; with ``decay`` None it just follows the raw weights (a run with SWA and
    no exponential average, before its averaging phase). ``swa_update``: the plain mean of the raw
    weights over the calls (stochastic weight averaging, TrainConfig.swa_start_epoch)."""

    def __init__(self, model: nn.Module, decay: float | None):
        self.decay = decay
        self.params = [p for p in model.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0
        self.swa_updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = 0.0 if self.decay is None else min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)

    @torch.no_grad()
    def swa_update(self) -> None:
        """avg <- avg + (w - avg) / (n + 1): the mean of the n + 1 weights seen (the first call copies)."""
        self.swa_updates += 1
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 / self.swa_updates)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's weights and the averaged ones (call again to swap back)."""
        for p, s in zip(self.params, self.shadow, strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


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

    def __init__(self, task: Task, model: nn.Module, shard: tuple[int, int]):
        super().__init__()
        self.task = task
        self.model = model
        self.shard = shard

    def forward(self, x: Tensor, y: Tensor | None, generator: torch.Generator) -> dict[str, Tensor]:
        return self.task.train_loss(self.model, x, y, generator=generator, shard=self.shard)


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


def _scalars(terms: dict[str, Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items() if isinstance(v, Tensor) and v.dim() == 0}


# --------------------------------------------------------------------------- the run
REWARM_STEPS = 300  # least re-warm-up after a resume from a lean snapshot (Trainer.restore)


@dataclass
class TrainerState:
    """What a resumed run needs besides weights, optimizer and RNG (saved as checkpoint metadata)."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch done
    step: int = 0  # optimisation steps done
    best: float = math.inf  # best validation value so far (task.select_key)
    elapsed: float = 0.0  # seconds of training so far, over all resumes
    lr_scale: float = 1.0  # plateau schedule: the factor applied to lr so far
    plateau_best: float = math.inf
    plateau_bad: int = 0  # epochs since plateau_best improved
    # After a resume from a lean snapshot (no Adam moments, checkpoint.lean_copy): the learning rate is
    # warmed up again over rewarm_steps steps from step rewarm_start (0 steps: no re-warm-up).
    rewarm_start: int = 0
    rewarm_steps: int = 0

    REQUIRED = ("epoch", "batch_in_epoch", "step")  # in every checkpoint any drawnet wrote

    @classmethod
    def from_saved(cls, saved: dict[str, Any], path: Path | None) -> TrainerState:
        """The state stored in checkpoint ``path``; a missing or malformed entry is a clear error."""
        state = cls()
        for f in dataclasses.fields(cls):
            if f.name not in saved:
                if f.name in cls.REQUIRED:
                    raise ValueError(f"{path}: its trainer state has no {f.name!r}; the file is damaged")
                continue
            value = saved[f.name]
            counts = isinstance(f.default, int)
            if counts:
                ok, what = isinstance(value, int) and not isinstance(value, bool) and value >= 0, "an integer >= 0"
            else:
                ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
                ok = ok and not math.isnan(value)
            if not ok:
                raise ValueError(f"{path}: trainer state {f.name}={value!r} is not {what}; the file is damaged")
            setattr(state, f.name, type(f.default)(value))
        return state


class Trainer:
    """One training run of ``task`` with ``cfg`` in ``run_dir``; :meth:`run` does it all."""

    def __init__(self, task: Task, cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                 preset: str | None = None, progress: bool = True):
        self.task, self.cfg, self.run_dir = task, cfg, Path(run_dir)
        self.resume, self.preset, self.progress = resume, preset, progress
        self.last_path = rundir.checkpoint_path(self.run_dir, rundir.LAST)
        self.best_path = rundir.checkpoint_path(self.run_dir, rundir.BEST)
        self.state = TrainerState()
        self.writer: Any = None
        self.summary: dict[str, Any] = {}
        self.stopped_by = "finished"
        self.initial: tuple[dict[str, Tensor], str] | None = None  # init_from's weights (run() reads them)

    # ---- the steps of a run
    def run(self) -> dict[str, Any]:
        """Train and return a summary dict; raises :class:`TrainingDiverged` on a non-finite loss."""
        own_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
        self.ddp = _init_distributed(self.cfg.device)
        self.device = resolve_device(self.cfg.device, self.ddp.local_rank)
        if self.cfg.threads is not None:
            torch.set_num_threads(self.cfg.threads)
        check_options(self.cfg.data, self.cfg.data_options)  # a bad data set or option fails before any work
        if self.cfg.init_from is not None and not self.resume:  # so does a source that does not fit
            from . import transfer

            self.initial = transfer.initial_weights(self.task.build_model(), self.task.kind, self.cfg.init_from)
        lock = rundir.RunLock(self.run_dir) if self.ddp.main else None
        if lock is not None:
            self.check_run_dir()  # before anything is created in it
            lock.acquire()
        try:
            if lock is not None:
                self.check_run_dir()  # again, under the lock: a writer that held it may have left a run here
            self.prepare_run_dir()
            self.load_data()
            self.build()
            if self.resume:
                self.restore()
            self.start_logging()
            with _Interrupt() as self.interrupt:
                while self.more_to_do():
                    finished_epoch = self.train_epoch()
                    if self.interrupt.requested:
                        self.stopped_by = "interrupted"
                        break
                    if not finished_epoch and not self.out_of_time():
                        break  # max_steps reached inside the epoch: saved below without validating
                    self.end_of_epoch(finished_epoch)
            self.finish()
        finally:
            if self.writer is not None:
                self.writer.close()
            if lock is not None:
                lock.release()
            if own_group and dist.is_initialized():
                # Left to the interpreter's exit, the group's threads can be torn down while still
                # running: a rank then aborts after its run is done ("terminate called without an
                # active exception", seen once in CI's data-parallel classifier test).
                dist.destroy_process_group()
        return self.summary | {
            "stopped_by": self.stopped_by, "step": self.state.step, "epoch": self.state.epoch,
            "best": self.state.best, "elapsed_s": self.state.elapsed, "run_dir": str(self.run_dir),
        }

    def check_run_dir(self) -> None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"--out {self.run_dir} is a file, not a directory; choose another --out")
        if self.resume:
            if not self.last_path.exists():
                raise FileNotFoundError(f"cannot resume: no checkpoint at {self.last_path}")
            return
        if self.last_path.exists():
            raise ValueError(
                f"{self.run_dir} already holds a run; continue it with --resume {self.run_dir} or choose another --out"
            )
        old = [name for name in (rundir.CONFIG_FILE, rundir.METRICS_FILE, rundir.CHECKPOINT_DIR)
               if (self.run_dir / name).exists()]
        if old:
            raise ValueError(
                f"{self.run_dir} holds files of an earlier run ({', '.join(old)}) but no {rundir.LAST} to resume "
                f"from; choose another --out, or delete them to start afresh"
            )

    def prepare_run_dir(self) -> None:
        """Clean what a killed process left, and (main process) write config.json."""
        cfg, ddp = self.cfg, self.ddp
        if cfg.batch_size % ddp.world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {ddp.world}")
        if not ddp.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in rundir.remove_leftovers(self.run_dir):
            print(f"drawnet: removed {stale}, left by a process killed while writing it", file=sys.stderr)

    def load_data(self) -> None:
        cfg = self.cfg
        self.train_set = get_dataset(cfg.data, "train", **cfg.data_options)
        valid_set = get_dataset(cfg.data, "valid", **split_options(cfg.data_options, "valid"))
        expected_shape = self.task.model_config().get("image_shape")
        if expected_shape is not None and tuple(expected_shape) != self.train_set.image_shape:
            raise ValueError(
                f"the model is built for images of shape {tuple(expected_shape)} but data set {cfg.data!r} has "
                f"{self.train_set.image_shape}; set model image_shape to match (--set image_shape=[...])"
            )
        if cfg.valid_limit is not None and cfg.valid_limit < len(valid_set):
            valid_set = ImageDataset(
                valid_set.name, valid_set.split, valid_set.images[: cfg.valid_limit],
                None if valid_set.labels is None else valid_set.labels[: cfg.valid_limit], valid_set.num_classes,
            )
        self.valid_set = valid_set
        self.steps_per_epoch = len(self.train_set) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {cfg.batch_size} is larger than the training split ({len(self.train_set)} images)"
            )
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

    def build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.model = self.task.build_model()
        if self.initial is not None:  # before the optimizer and the averaged weights copy them
            state, how = self.initial
            self.model.load_state_dict(state)
            self.initial = None
            if self.ddp.main:
                print(f"drawnet: starting from {how}", file=sys.stderr)
        self.model = self.model.to(self.device)
        # PyTorch's fused Adam (one kernel over all parameters) where it has one: the same update,
        # 0.6 ms instead of 4.9 ms a step for the mnist model on one CPU thread (about 1 % of a step).
        params = list(self.model.parameters())
        settings = {"lr": cfg.lr, "betas": (cfg.adam_beta1, cfg.adam_beta2)}
        self.optimizer = None
        if self.device.type in ("cpu", "cuda") and all(p.dtype == torch.float32 for p in params):
            try:
                self.optimizer = torch.optim.Adam(params, fused=True, **settings)
            except (RuntimeError, ValueError):  # a PyTorch without a fused Adam for this device (CPU: < 2.4)
                self.optimizer = None
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(params, **settings)
        averaging = cfg.ema_decay is not None or cfg.swa_start_epoch > 0
        self.average = WeightAverage(self.model, cfg.ema_decay) if averaging else None
        how = self.task.configure(self.model, cfg, self.device)
        if self.ddp.main:
            from . import kernels

            if self.device.type == "cpu":
                print(f"drawnet: CPU kernels: {kernels.status()}", file=sys.stderr)
            print(f"drawnet: training runs the {how}", file=sys.stderr)
        self.how = how
        self.loss_module: nn.Module = _TaskLoss(self.task, self.model, (self.ddp.rank, self.ddp.world))
        if self.ddp.world > 1:
            self.loss_module = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    def restore(self) -> None:
        """Weights, averaged weights, optimizer, RNG and trainer state from the last checkpoint."""
        saved = ckpt_io.load_checkpoint(self.last_path)
        if saved.kind != self.task.kind:
            raise ValueError(
                f"cannot resume: {saved.path} holds a {saved.kind!r} model, this run trains {self.task.kind!r}"
            )
        if saved.model_config != self.task.model_config():
            raise ValueError(
                f"cannot resume: the model settings differ from the checkpoint's {saved.path} "
                f"(saved {saved.model_config}, now {self.task.model_config()}); drop the --set model overrides"
            )
        raw = {k[len("raw."):]: v for k, v in saved.extra.items() if k.startswith("raw.")}
        averaged = bool(raw)
        # SWA added on resume to a run without an exponential average: its saved weights are the raw
        # ones, and the average starts from them.
        adds_swa = not averaged and self.average is not None and self.cfg.ema_decay is None
        if averaged != (self.average is not None) and not adds_swa:
            raise ValueError(f"cannot resume: {saved.path} was {'' if averaged else 'not '}saved with averaged weights "
                             f"(ema_decay or swa_start_epoch), this run {'has' if self.average else 'has none'}; "
                             f"resume with the run's own settings")
        if averaged:
            ckpt_io.load_state_strict(self.model, dataclasses.replace(saved, model_state=raw))
            with torch.no_grad():
                own = dict(self.model.named_parameters())
                missing = sorted(set(own) - set(saved.model_state))
                if missing:
                    raise ValueError(f"cannot resume: {saved.path} has no averaged weights for {missing[:5]}")
                for name, shadow in zip(own, self.average.shadow, strict=True):
                    shadow.copy_(saved.model_state[name])
            for key, attr in (("ema_updates", "updates"), ("swa_updates", "swa_updates")):
                count = saved.trainer_state.get(key, 0)
                if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                    raise ValueError(f"{saved.path}: trainer state {key}={count!r} is not an integer >= 0; "
                                     f"the file is damaged")
                setattr(self.average, attr, count)
        else:
            ckpt_io.load_state_strict(self.model, saved)
            if adds_swa:
                with torch.no_grad():
                    torch._foreach_copy_(self.average.shadow, [p.detach() for p in self.model.parameters()])
        lean = ckpt_io.is_lean(saved)
        if not lean:
            ckpt_io.restore_optimizer(self.optimizer, saved)
        ckpt_io.restore_rng(saved)
        self.state = TrainerState.from_saved(saved.trainer_state, saved.path)
        if lean:
            # Departure from an exact resume, asked for by resuming a lean snapshot: Adam's moments
            # start at zero, and its first updates would be about lr per parameter whatever the
            # gradient's scale, so the learning rate is warmed up again while they settle.
            s = self.state
            s.rewarm_start, s.rewarm_steps = s.step, max(self.cfg.lr_warmup_steps, REWARM_STEPS)
            if self.ddp.main:
                print(f"drawnet: {saved.path} is a lean snapshot (no optimizer state): Adam starts afresh at step "
                      f"{s.step}, the learning rate warmed up again over {s.rewarm_steps} steps; this is not an "
                      f"exact continuation", file=sys.stderr)
        if self.ddp.main:
            dropped = rundir.truncate_metrics(self.run_dir, self.state.step)
            if dropped:
                print(f"drawnet: resuming at step {self.state.step}: dropped {dropped} metrics record(s) written "
                      f"after it", file=sys.stderr)

    def start_logging(self) -> None:
        if self.ddp.main:
            rundir.write_json(self.run_dir / rundir.CONFIG_FILE, {
                "kind": self.task.kind, "preset": self.preset, "model": self.task.model_config(),
                "train": self.cfg.to_dict(),
            })
            if self.cfg.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / rundir.TENSORBOARD_DIR))
        # the clock of max_minutes starts here, after the set-up
        self.start_time = time.time() - self.state.elapsed
        self.last_save = time.time()

    def more_to_do(self) -> bool:
        s = self.state
        return s.epoch < self.cfg.epochs and s.step < self.total_steps and not self.out_of_time()

    def out_of_time(self) -> bool:
        cfg = self.cfg
        return cfg.max_minutes is not None and time.time() - self.start_time >= cfg.max_minutes * 60

    def train_epoch(self) -> bool:
        """Train the rest of the current epoch (or until a budget or Ctrl-C stops it); returns
        whether the epoch was completed."""
        cfg, s, ddp = self.cfg, self.state, self.ddp
        epoch = s.epoch
        self.model.train()
        batches = self.train_set.batches(cfg.batch_size, epoch=epoch, seed=cfg.seed, shuffle=True, drop_last=True)
        bar = _progress(self.progress and ddp.main, self.steps_per_epoch, epoch, cfg.epochs, s.batch_in_epoch)
        window: dict[str, float] = {}
        window_n, window_images, window_start = 0, 0, time.time()
        for i, (x, y) in enumerate(batches):
            if i < s.batch_in_epoch:
                continue  # resuming inside an epoch: skip what was already trained on
            scalars = self.train_step(x, y)
            s.batch_in_epoch = i + 1
            for k, v in scalars.items():
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            window_images += x.shape[0]
            if bar is not None:
                rate = window_images / max(time.time() - window_start, 1e-9)
                shown = {k: f"{window[k] / window_n:.2f}" for k in list(window)[:3]}
                bar.set_postfix(shown | {"img/s": f"{rate:.0f}"}, refresh=False)
                bar.update(1)
            if s.step % cfg.log_every == 0 and ddp.main:
                now = time.time()
                record = {"kind": "train", "epoch": epoch, "step": s.step, "time": now - self.start_time}
                record |= {k: v / window_n for k, v in window.items()}
                record["images_per_s"] = window_images / max(now - window_start, 1e-9)
                self.log(record)
                window, window_n, window_images, window_start = {}, 0, 0, now
            if self.interrupt.requested or s.step >= self.total_steps or self.out_of_time():
                break
            # Not after the epoch's last batch: end_of_epoch validates and saves next. A checkpoint from
            # between the two would, on resume, validate (and log) that epoch a second time.
            if time.time() - self.last_save > cfg.checkpoint_minutes * 60 and s.batch_in_epoch < self.steps_per_epoch:
                s.elapsed = time.time() - self.start_time
                self.save(self.last_path)
                self.last_save = time.time()
        if bar is not None:
            bar.close()
        return s.batch_in_epoch >= self.steps_per_epoch

    def train_step(self, x: Tensor, y: Tensor | None) -> dict[str, float]:
        """One optimisation step on the global batch ``x``; returns its scalar loss terms."""
        cfg, s, ddp = self.cfg, self.state, self.ddp
        lr = learning_rate(cfg, s.step, self.total_steps, self.steps_per_epoch, s.lr_scale)
        if s.rewarm_steps and s.step < s.rewarm_start + s.rewarm_steps:
            lr *= (s.step - s.rewarm_start + 1) / s.rewarm_steps  # fresh Adam moments (see restore)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        attention_clip = getattr(self.task, "attention_clip", None)  # DRAWTask: TrainConfig.attention_grad_clip
        if attention_clip is not None:  # ... for the first attention_grad_clip_epochs epochs (0: all), then
            # attention_grad_clip_after (0: none)
            early = not cfg.attention_grad_clip_epochs or s.epoch < cfg.attention_grad_clip_epochs
            attention_clip.max_norm = cfg.attention_grad_clip if early else cfg.attention_grad_clip_after
            attention_clip.active = attention_clip.max_norm > 0
        # The noise and any other randomness of this step depend only on (seed, step), so a resumed
        # or data-parallel run draws exactly what an uninterrupted one would.
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, s.step, 2))
        x_local = x[ddp.rank :: ddp.world].to(self.device, non_blocking=True)
        y_local = None if y is None else y[ddp.rank :: ddp.world].to(self.device, non_blocking=True)
        terms = self.loss_module(x_local, y_local, generator)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        )
        scalars = _scalars(terms)
        norm = float(grad_norm)  # the global norm before clipping
        if not (math.isfinite(scalars["loss"]) and math.isfinite(norm)):
            what = "loss" if not math.isfinite(scalars["loss"]) else "gradient norm"
            raise TrainingDiverged(f"non-finite {what} at step {s.step} (epoch {s.epoch}); training stopped. "
                                   f"{self.last_good()} Try a lower lr or grad_clip.")
        # The global norm before clipping, and whether the clip scaled this step; the train records hold their
        # means over the logged steps (grad_norm, clipped: the fraction of steps clipped).
        scalars["grad_norm"] = norm
        scalars["clipped"] = float(0 < cfg.grad_clip < norm)
        if attention_clip is not None:  # the fraction of (image, step, layer) rows of d(raw) it scaled down (0: off)
            scalars["clipped_attention"] = attention_clip.take_fraction()
        self.optimizer.step()
        if self.average is not None and not self.in_swa(s.epoch):
            self.average.update()
        s.step += 1
        scalars["lr"] = lr
        return scalars

    def in_swa(self, epoch: int) -> bool:
        """Whether (0-based) epoch ``epoch`` belongs to the averaging phase (TrainConfig.swa_start_epoch)."""
        return bool(self.cfg.swa_start_epoch) and epoch >= self.cfg.swa_start_epoch

    def end_of_epoch(self, finished_epoch: bool) -> None:
        """Validate, write pictures and save the checkpoints (also when the time limit cut the epoch)."""
        cfg, s, ddp = self.cfg, self.state, self.ddp
        epoch = s.epoch
        if finished_epoch and self.average is not None and self.in_swa(epoch):
            self.average.swa_update()  # SWA: the raw weights at the end of each epoch of the phase
        if not finished_epoch:
            self.stopped_by = "time limit"
        # Validate every valid_every epochs, and always at the end of the run or when a limit cuts it.
        last = (not finished_epoch or epoch + 1 >= cfg.epochs or s.step >= self.total_steps
                or self.out_of_time() or self.interrupt.requested)
        if finished_epoch and not last and (epoch + 1) % cfg.valid_every:
            s.epoch, s.batch_in_epoch = epoch + 1, 0
            s.elapsed = time.time() - self.start_time
            self.save(self.last_path)
            self.last_save = time.time()
            return
        self.model.eval()
        if ddp.main:
            if self.average is not None:
                self.average.swap()  # validate (and draw) with the averaged weights
            try:
                with torch.no_grad():
                    val = self.task.validate(self.model, self.valid_set, cfg.valid_batch_size, self.device)
                if cfg.pictures:
                    self.task.epoch_end(self.model, self.run_dir, epoch)
            finally:
                if self.average is not None:
                    self.average.swap()
            record = {"kind": "valid", "epoch": epoch, "step": s.step, "time": time.time() - self.start_time}
            self.log(record | val)
            self.summary["valid"] = val
            if self.progress:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in val.items() if isinstance(v, (int, float)))
                print(f"epoch {epoch + 1}/{cfg.epochs}: validation {shown}", file=sys.stderr)
            value = float(val[self.task.select_key])
            if not math.isfinite(value):
                raise TrainingDiverged(f"non-finite validation {self.task.select_key} ({value}) after epoch "
                                       f"{epoch + 1}; training stopped. {self.last_good()}")
        if finished_epoch:  # a run stopped by the time limit resumes inside its epoch
            s.epoch = epoch + 1
            s.batch_in_epoch = 0
            if cfg.lr_schedule == "plateau" and ddp.main:
                self.plateau_step(value)
        s.elapsed = time.time() - self.start_time
        if ddp.main:
            if value < s.best:
                s.best = value
                self.save(self.best_path, best=True)
            self.save(self.last_path)
        if ddp.world > 1:
            self.broadcast_state()
            dist.barrier()
        self.last_save = time.time()

    def plateau_step(self, value: float) -> None:
        s = self.state
        if value < s.plateau_best:
            s.plateau_best, s.plateau_bad = value, 0
            return
        s.plateau_bad += 1
        if s.plateau_bad >= self.cfg.plateau_patience:
            s.lr_scale *= self.cfg.lr_decay
            s.plateau_bad = 0
            if self.progress:
                print(f"drawnet: validation flat for {self.cfg.plateau_patience} epochs: learning rate now "
                      f"{max(self.cfg.lr * s.lr_scale, self.cfg.lr_final):.3g}", file=sys.stderr)

    def broadcast_state(self) -> None:
        """The plateau schedule is decided on the main process; every process must use its factor."""
        scale = torch.tensor([self.state.lr_scale], dtype=torch.float64)
        dist.broadcast(scale, 0)
        self.state.lr_scale = float(scale)

    def finish(self) -> None:
        self.state.elapsed = time.time() - self.start_time
        self.save(self.last_path)
        if not self.best_path.exists() and self.ddp.main:
            # no best checkpoint: no epoch completed yet, or the run was restored from a snapshot, which
            # keeps only the last one; the best we have is the last
            self.save(self.best_path, best=True)
        if self.ddp.world > 1:
            dist.barrier()

    # ---- helpers
    def log(self, record: dict[str, Any]) -> None:
        rundir.append_metrics(self.run_dir, record)
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("kind", "epoch", "step", "time") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])
            self.writer.flush()

    def last_good(self) -> str:
        if self.last_path.exists():
            return f"The last good checkpoint is {self.last_path}."
        return "No checkpoint was saved yet."

    def save(self, path: Path, *, best: bool = False) -> None:
        """Save a checkpoint, only if every weight and optimizer moment is finite (else stop: the last
        good one stays).

        The model tensors are the weights to use (the averaged ones when ema_decay or swa_start_epoch is set); with
        averaging, ``raw.*`` holds the training weights too. ``best`` checkpoints omit the optimizer
        state (they are for evaluation; a run resumes from ``last``).
        """
        if not self.ddp.main:
            return
        raw = [p.detach() for p in self.model.parameters()]
        use = self.average.shadow if self.average is not None else raw
        bad = [name for (name, _), t, a in zip(self.model.named_parameters(), raw, use, strict=True)
               if not (torch.isfinite(t).all() and torch.isfinite(a).all())]
        bad += [f"Adam state of {name}" for name, p in self.model.named_parameters()
                if not all(torch.isfinite(v).all() for v in self.optimizer.state.get(p, {}).values()
                           if isinstance(v, Tensor))]
        if bad:
            raise TrainingDiverged(
                f"non-finite weights or optimizer state after step {self.state.step} ({', '.join(bad[:4])}"
                f"{', ...' if len(bad) > 4 else ''}); "
                f"not saved. {self.last_good()} Try a lower lr or grad_clip."
            )
        names = [name for name, _ in self.model.named_parameters()]
        state = dataclasses.asdict(self.state)
        extra = {}
        weights = dict(zip(names, use, strict=True))
        if self.average is not None:
            extra = {f"raw.{name}": t for name, t in zip(names, raw, strict=True)}
            state["ema_updates"] = self.average.updates
            state["swa_updates"] = self.average.swa_updates
        buffers = {name: b for name, b in self.model.named_buffers()}
        ckpt_io.save_checkpoint(
            path, kind=self.task.kind, state_dict=weights | buffers, model_config=self.task.model_config(),
            train_config=self.cfg.to_dict(), trainer_state=state,
            optimizer=None if best else self.optimizer, save_rng=not best, extra_tensors=None if best else extra,
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
    stopped (same data order, same noise, same schedule). Raises :class:`TrainingDiverged` on a
    non-finite loss, gradient or weight.
    """
    return Trainer(task, cfg, run_dir, resume=resume, preset=preset, progress=progress).run()


def _progress(enabled: bool, total: int, epoch: int, epochs: int, initial: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
