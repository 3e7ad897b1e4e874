"""The configurations: frozen dataclasses, every field explained.

:class:`DRAWConfig` builds a DRAW network, :class:`ClassifierConfig` the cluttered-MNIST classifier
(:mod:`drawnet.classifier`), :class:`TrainConfig` describes a training run. The named presets (the
paper's Table 3 rows) are in :mod:`drawnet.presets`. Every field is checked when the config is
built, so a bad setting fails before any work with a message naming the key, the value and what
is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


def check_image_shape(value: Any) -> tuple[int, int, int]:
    """``value`` as a (channels, height, width) tuple of positive ints, else a ValueError."""
    shape = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"image_shape must be three positive ints (channels, height, width), got {value!r}")
    return shape  # type: ignore[return-value]


def check_image_batch(x: Any, image_shape: tuple[int, int, int], config_name: str) -> None:
    """Raise a ValueError unless ``x`` is a float tensor (batch, *image_shape)."""
    expected = tuple(image_shape)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"expected images of shape (batch, {', '.join(map(str, expected))}) as configured by "
            f"image_shape={expected}, got {tuple(x.shape)}; resize the data or build the model "
            f"with {config_name}(image_shape=...) matching it"
        )
    if not x.is_floating_point():
        raise ValueError(f"expected a float tensor with values in [0, 1], got dtype {x.dtype}")


class DictConfig:
    """JSON round trip for the frozen config dataclasses (checkpoints store them as JSON)."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        if "image_shape" in d:
            d["image_shape"] = list(d["image_shape"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Build from a dict (e.g. a checkpoint's JSON), rejecting keys this version does not know."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__} settings must be a JSON object of key: value, got {d!r:.60}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class DRAWConfig(DictConfig):
    """Everything needed to build a :class:`drawnet.DRAW` network.

    The defaults are the paper's MNIST row of Table 3 (T=64, LSTM 256, z=100, read 2x2, write 5x5).
    """

    # (channels, height, width) of the images the model reads and draws. The model never assumes
    # 28x28: every size in the network is derived from this field.
    image_shape: tuple[int, int, int] = (1, 28, 28)
    # Number of glimpses / drawing steps T (Table 3: 64 for MNIST, 32 for SVHN, 64 for CIFAR).
    T: int = 64
    # Hidden units of the encoder LSTM RNN^enc (Table 3 "LSTM #h": 256 for MNIST).
    enc_size: int = 256
    # Hidden units of the decoder LSTM RNN^dec; kept separate from enc_size so the two can differ.
    dec_size: int = 256
    # Dimension Z of each latent code z_t (Table 3 "#z": 100 for MNIST).
    z_size: int = 100
    # Read attention grid size N (eqs 19-27), or None for the attention-free read of eq. (17).
    read_n: int | None = 2
    # Write attention patch size N (eqs 28-29), or None for the attention-free write of eq. (18).
    write_n: int | None = 5
    # Initialise the log sigma^2 bias of each attention layer so neighbouring filters overlap at the
    # start (sigma = delta/2). The paper gives no initialisation; without this the 2x2 read samples
    # four black corner pixels and training stalls near 200 nats (docs/DESIGN.md, "Initialising the
    # attention").
    attention_sigma_init: bool = True
    # The value every pixel of the learned initial canvas c_0 starts at (a logit: the first canvas
    # sigma(c_0) is sigmoid(canvas_init) grey). The paper says only that c_0 is a learned bias; 0 (a
    # grey 0.5 first image) is the default. A negative value (e.g. -6: near-black) starts the canvas
    # where binarized digits mostly are, so the writes draw strokes instead of first painting the
    # background dark (ericjang/draw issue 10; docs/DESIGN.md, "The initial canvas"); ours, not the paper's.
    canvas_init: float = 0.0
    # Layer-normalised LSTM cells for RNN^enc and RNN^dec (Ba, Kiros & Hinton 2016, "Layer
    # Normalization", arXiv:1607.06450, section 6.5 trains this DRAW model with them). Not in the
    # DRAW paper; off by default (the paper's LSTM). Only the readable model implements it:
    # drawnet.engine runs such a model there and says so.
    layer_norm: bool = False
    # Class-conditional DRAW: the one-hot class label y is an extra input to the encoder (eq. 5) and
    # the decoder (eqs 7 and 14) at every step, so the model learns p(x | y) and generation draws a
    # chosen class. Not in the DRAW paper (a conditional VAE in the manner of Kingma et al. 2014's M2
    # and Sohn et al. 2015; the prior of z stays N(0, I)); off by default: the paper's model.
    conditional: bool = False
    # The number of classes K of a conditional model (the size of the one-hot y). None: not yet known;
    # drawnet.tasks.fit_to_data takes it from the training data before the model is built. Must stay
    # None for an unconditional model.
    num_classes: int | None = None

    def __post_init__(self) -> None:
        # lists from JSON become a tuple
        object.__setattr__(self, "image_shape", check_image_shape(self.image_shape))
        for name in ("T", "enc_size", "dec_size", "z_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("attention_sigma_init", "layer_norm", "conditional"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("read_n", "write_n"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                raise ValueError(
                    f"{name} must be None (no attention) or an int >= 2 (an N x N Gaussian grid; "
                    f"eq. 24 divides by N - 1), got {value!r}"
                )
        c0 = self.canvas_init
        if not _is_number(c0) or not math.isfinite(c0):
            raise ValueError(f"canvas_init must be a finite number (the logit every pixel of c_0 starts at, "
                             f"e.g. 0 or -6), got {c0!r}")
        k = self.num_classes
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ValueError(f"num_classes must be a positive int (the number of classes) or None, got {k!r}")
        if k is not None and not self.conditional:
            raise ValueError(f"num_classes={k} is set but conditional is false; set conditional=true for a "
                             f"class-conditional model, or drop num_classes")


@dataclass(frozen=True)
class ClassifierConfig(DictConfig):
    """Everything needed to build an :class:`AttentionClassifier`.

    The defaults are the paper's 100x100 cluttered MNIST row of Table 3 (8 glimpses, LSTM 256, read
    12x12).
    """

    # (channels, height, width) of the images; every size in the network is derived from it.
    image_shape: tuple[int, int, int] = (1, 100, 100)
    # Number of glimpses T before the classification (Table 1: 4 or 8; Table 3: 8).
    glimpses: int = 8
    # Hidden units of the LSTM (Table 3 "LSTM #h": 256).
    hidden_size: int = 256
    # Read attention grid size N: each glimpse is N x N per channel (Table 1 / Table 3: 12).
    read_n: int = 12
    # Number of classes of the softmax layer (10 MNIST digits).
    num_classes: int = 10
    # Initialise the log sigma^2 bias so that sigma = delta/2 at the start (attention.initial_log_sigma2),
    # as the DRAW model does; the paper gives no initialisation (docs/DESIGN.md, "Initialising the
    # attention"). With the initial
    # stride delta_0 = (max(A, B) - 1)/(N - 1) (9 pixels for 12x12 on 100x100) the first glimpse spans the
    # whole image: a low-resolution view (one filter per 9x9 pixels, overlapping) in which a 28x28
    # digit is a visible 3x3 blob, so the network can find the digit and then zoom in by lowering
    # delta. Without it sigma = 1 pixel: 144 isolated pixels that mostly miss the digit.
    attention_sigma_init: bool = True

    def __post_init__(self) -> None:
        # lists from JSON become a tuple
        object.__setattr__(self, "image_shape", check_image_shape(self.image_shape))
        for name, low in (("glimpses", 1), ("hidden_size", 1), ("read_n", 2), ("num_classes", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                why = " (an N x N Gaussian grid; eq. 24 divides by N - 1)" if name == "read_n" else ""
                raise ValueError(f"{name} must be an int >= {low}{why}, got {value!r}")
        if not isinstance(self.attention_sigma_init, bool):
            raise ValueError(f"attention_sigma_init must be true or false, got {self.attention_sigma_init!r}")


# --------------------------------------------------------------------------- training settings
LR_SCHEDULES = ("constant", "cosine", "exponential", "step", "plateau")
PRECISIONS = ("fp32", "bf16", "auto")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig(DictConfig):
    """Optimisation and bookkeeping settings of a training run.

    The paper says only "Adam was used throughout" (section 4); the defaults are this project's
    (docs/DESIGN.md, "Training settings"), and the presets set the measured recipe (bench/QUALITY.md).
    """

    # Data set name in drawnet.data.DATASETS, and keyword options for its loader (e.g. {"dynamic":
    # true}: binarized MNIST's training images sampled afresh every epoch). "images" is the user's own
    # (drawnet.data.custom): data_options {"path": folder or .npy/.npz, "size": ..., ...}, set by
    # `drawnet train --data PATH`.
    data: str = "binarized_mnist"
    data_options: dict[str, Any] = field(default_factory=dict)
    # Passes over the training split.
    epochs: int = 10
    # Global batch size; under torchrun it is split evenly across the processes.
    batch_size: int = 128
    # Adam learning rate: the peak of the schedule below (reproductions use 3e-4 to 1e-3).
    lr: float = 1e-3
    # Learning-rate schedule over the run's steps (epochs x steps per epoch, or max_steps if fewer):
    #   constant     lr throughout;
    #   cosine       lr to lr_final along half a cosine;
    #   exponential  lr to lr_final geometrically (the same factor every step);
    #   step         lr times lr_decay every lr_step_epochs epochs (not below lr_final);
    #   plateau      lr times lr_decay when the validation value has not improved for
    #                plateau_patience epochs (not below lr_final).
    # All but plateau are functions of the step alone, so a resumed run continues them exactly; the
    # plateau state is saved in the checkpoint. Warm-up: lr rises linearly from 0 over
    # lr_warmup_steps first (then the schedule runs over the remaining steps).
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    # A warm restart (SGDR, Loshchilov & Hutter 2017, arXiv:1608.03983) of the cosine or exponential
    # schedule: before epoch lr_restart_epoch the schedule runs from the warm-up to lr_final at that
    # epoch; from it, it starts again at lr (no second warm-up; Adam's moments and the averaged weights
    # carry on) and runs to lr_final at the end of the run. It may be set on resume, with a new lr
    # and epochs, to give a finished run another cycle: the config then describes the latest cycle,
    # metrics.jsonl keeps the rates the earlier ones used. 0: no restart.
    lr_restart_epoch: int = 0
    # A warm-up for the restart (ours): the new cycle's rate rises linearly from 0 to lr over this many
    # steps, like the run's first warm-up, and the decay starts after it. 0 (the default, SGDR's
    # restart): the rate jumps to lr at once. Measured on the two-digit model (bench/QUALITY.md): a jump
    # from 1e-5 to 5e-4 put its training loss up 25-75 nats for 800 steps without coming back.
    lr_restart_warmup_steps: int = 0
    lr_final: float = 0.0
    lr_decay: float = 0.5
    lr_step_epochs: int = 1
    plateau_patience: int = 5
    # Adam betas: PyTorch's defaults, as the paper gives none.
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    # Clip the global gradient norm to this value (about 10 in reproductions); 0 disables clipping. The train
    # records of metrics.jsonl hold the norm before clipping (grad_norm) and the fraction of steps clipped.
    grad_clip: float = 10.0
    # Clip the gradient w.r.t. the attention parameters (ours, not the paper's): with a value > 0 the
    # gradient of each image's loss with respect to the five raw outputs of eq. (21) is norm-clipped
    # to it, at every step and for read and write apart, before it flows on into the attention layer
    # and h^dec (derivative clipping as in Graves 2013, arXiv:1308.0850). The forward pass and the
    # bound are unchanged. 0 (the default): no such clip. On the two-digit model 0.1 % of those rows
    # carried 99.6-99.8 % of the attention's squared gradient (bench/QUALITY.md). The train records then
    # also hold clipped_attention, the fraction of rows clipped. DRAW only, not the classifier.
    attention_grad_clip: float = 0.0
    # Only during the first this many epochs (ours): from epoch attention_grad_clip_epochs on, the
    # clip is attention_grad_clip_after instead. 0: attention_grad_clip for the whole run. Measured on
    # the two-digit model (bench/QUALITY.md): the clip takes it out of the start's one-digit program
    # far sooner, then holds it on a plateau that it leaves, lower than the unclipped run, once the
    # clip is off or much looser.
    attention_grad_clip_epochs: int = 0
    # The clip from epoch attention_grad_clip_epochs on (ours; 0: none, the gradient flows unclipped).
    # A loose clip that scales only the rarest rows: at 1e4 (about 0.15 % of the two-digit rows) a
    # restarted cosine stayed stable where the unclipped one's bound rose by 4 nats (bench/QUALITY.md).
    attention_grad_clip_after: float = 0.0
    # Exponential moving average of the weights, updated after every step with this decay (e.g.
    # 0.999); validation, the best checkpoint, evaluation and sampling then use the averaged
    # weights, training goes on with the raw ones. None: no averaging.
    ema_decay: float | None = None
    # Stochastic weight averaging (SWA; Izmailov et al. 2018, arXiv:1803.05407), ours: the paper
    # trains with plain Adam. From epoch swa_start_epoch on (after that many finished epochs) the
    # learning rate is held at swa_lr, and the averaged weights (validated, saved as the best
    # checkpoint, shipped) become the plain mean of the raw weights at the end of each epoch from
    # then on; the per-step exponential average, if any, stops there. Both may be set on resume,
    # with a larger epochs, to give a finished run an averaging phase; a swa_start_epoch already
    # past starts the mean at the next epoch end. 0: no SWA.
    swa_start_epoch: int = 0
    swa_lr: float = 0.0
    # Seed of the model's initialisation, the data order and every noise sample.
    seed: int = 0
    # Start from another model's weights instead of a random initialisation (ours; the paper trains
    # every model from scratch): a run directory or checkpoint file (its best weights, the averaged
    # ones if it averaged) or "pretrained:NAME" for a model shipped with drawnet. Same kind and
    # parameter shapes; a DRAW with attention may differ in image size, and then its attention is
    # rescaled so windows keep their size in pixels (drawnet.transfer). Read when the run starts; a
    # resumed run continues from its own checkpoint. None: random initialisation (seed).
    init_from: str | None = None
    # "auto" (CUDA when available), "cpu" or "cuda" / "cuda:N".
    device: str = "auto"
    # How the model runs (drawnet.engine): the optimised recurrence (true) or the readable model
    # (false), and the precision of the optimised recurrence's matrix products: "fp32", "bf16"
    # (bfloat16 inputs, float32 sums) or "auto" (bf16 where the hardware has it natively).
    # Validation is always computed in float32.
    fast: bool = True
    precision: str = "auto"
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
    # Validate (and draw the epoch's pictures, and keep the best checkpoint) every this many epochs,
    # and at the end of the run; a long run on one core spends about a sixth of its time validating
    # 10,000 images in float32 after every epoch.
    valid_every: int = 1
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
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"train setting {name}={getattr(self, name)!r} is invalid: {allowed}")

        for name in ("epochs", "batch_size", "valid_batch_size", "log_every", "lr_step_epochs", "plateau_patience",
                     "valid_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(name, "expected a positive integer")
        for name in ("seed", "lr_warmup_steps", "lr_restart_epoch", "lr_restart_warmup_steps", "swa_start_epoch",
                     "attention_grad_clip_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                fail(name, "expected an integer >= 0")
        for name, low, high, what in (
            ("lr", 0, math.inf, "a finite number > 0"),
            ("checkpoint_minutes", 0, math.inf, "a finite number of minutes > 0"),
            ("lr_decay", 0, 1, "a factor in (0, 1]"),
        ):
            value = getattr(self, name)
            if not _is_number(value) or not (low < value <= high) or not math.isfinite(value):
                fail(name, f"expected {what}")
        for name, zero in (("lr_final", ""), ("grad_clip", " (0 disables clipping)"),
                           ("attention_grad_clip", " (0: no clip)"), ("attention_grad_clip_after", " (0: no clip)")):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                fail(name, "expected a finite number >= 0" + zero)
        if self.attention_grad_clip_epochs and not self.attention_grad_clip:
            fail("attention_grad_clip_epochs", "applies only with attention_grad_clip > 0 (the clip it limits to the "
                 "first epochs); set both")
        if self.attention_grad_clip_after and not self.attention_grad_clip_epochs:
            fail("attention_grad_clip_after", "is the clip from epoch attention_grad_clip_epochs on; set that (and "
                 "attention_grad_clip, the clip before it) too")
        if self.lr_final > self.lr:
            fail("lr_final", f"expected at most lr={self.lr}")
        if self.lr_schedule == "exponential" and self.lr_final <= 0:
            fail("lr_final", "the exponential schedule needs a final learning rate > 0")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                fail(name, "expected a number in [0, 1)")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            fail("init_from", "expected a run directory, a checkpoint file or pretrained:NAME (or null)")
        if self.ema_decay is not None and (not _is_number(self.ema_decay) or not 0 < self.ema_decay < 1):
            fail("ema_decay", "expected a number in (0, 1) (e.g. 0.999) or null for no averaging")
        if self.swa_start_epoch:
            if self.swa_start_epoch >= self.epochs:
                fail("swa_start_epoch", f"expected an epoch before the run's end (epochs={self.epochs}); raise epochs "
                                        "to give the averaging phase room")
            if not _is_number(self.swa_lr) or not math.isfinite(self.swa_lr) or self.swa_lr <= 0:
                fail("swa_lr", "set the constant learning rate of the averaging phase (a finite number > 0, e.g. "
                               "a tenth of lr)")
        elif self.swa_lr != 0:
            fail("swa_lr", "applies only with swa_start_epoch > 0 (the epoch the averaging phase starts); set both")
        if self.lr_schedule not in LR_SCHEDULES:
            fail("lr_schedule", f"expected one of {', '.join(LR_SCHEDULES)}")
        if self.lr_restart_epoch:
            if self.lr_schedule not in ("cosine", "exponential"):
                fail("lr_restart_epoch", "a restart applies to the cosine and exponential schedules only "
                                         f"(lr_schedule={self.lr_schedule!r}); set it to 0")
            if self.lr_restart_epoch >= self.epochs:
                fail("lr_restart_epoch", f"expected an epoch before the run's end (epochs={self.epochs}); raise epochs "
                                         "to give the new cycle room")
        elif self.lr_restart_warmup_steps:
            fail("lr_restart_warmup_steps", "applies only with a restart; set lr_restart_epoch too (the epoch the new "
                                            "cycle starts)")
        if self.precision not in PRECISIONS:
            fail("precision", f"expected one of {', '.join(PRECISIONS)}")
        for name in ("fast", "tensorboard", "pictures"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "expected true or false")
        for name in ("max_steps", "valid_limit", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                fail(name, "expected a positive integer or null")
        if self.max_minutes is not None and (
            not _is_number(self.max_minutes) or not math.isfinite(self.max_minutes) or self.max_minutes <= 0
        ):
            fail("max_minutes", "expected a finite number of minutes > 0 or null")
        if not isinstance(self.data, str) or not self.data:
            fail("data", "expected a data set name (see 'drawnet data info')")
        if not isinstance(self.data_options, dict):
            fail("data_options", "expected a JSON object of loader options, e.g. {\"dynamic\": true}")
        if not isinstance(self.device, str):
            fail("device", "expected auto, cpu, cuda or cuda:N")
