""""Differentiable RAM": classification with DRAW's read attention alone (paper section 4.1, Table 1).

An LSTM takes one N x N glimpse of the image per step, read with the same Gaussian filterbank as the
generative model (:mod:`drawnet.attention`, eqs 19-27, image only: there is no canvas and so no
error image). The attention parameters of each glimpse come from the previous hidden state through
a linear layer (eq. 21). After the last glimpse a linear softmax layer classifies the image and the
loss is the cross-entropy.

The pieces a training run needs are here too: :class:`ClassifierTask` (the trainer's ``Task``
protocol, see :mod:`drawnet.train`) and :func:`evaluate_classifier`. Its configuration
(:class:`drawnet.config.ClassifierConfig`) and presets (:data:`drawnet.presets.CLASSIFIER_PRESETS`)
live with the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import attention, engine, fast_classifier, kernels
from .attention import Window
from .config import ClassifierConfig, TrainConfig, check_image_batch
from .fast import BufferPool
from .tasks import unwrap


class ClassifierOutput(NamedTuple):
    """A pass of the classifier over a batch."""

    logits: Tensor  # (batch, num_classes), before the softmax
    windows: Window | None  # read window of every glimpse, each field (glimpses, batch), if asked for
    glimpses: Tensor | None  # the glimpses themselves (glimpses, batch, C, N, N), if asked for


class GlimpseSequence(NamedTuple):
    """What the classifier looked at and what it decided, for pictures and animations (paper Fig. 5)."""

    windows: Window  # each field (glimpses, batch), pixel units, 1-indexed (see drawnet.attention)
    glimpses: Tensor  # (glimpses, batch, C, N, N): the patches the LSTM received
    probabilities: Tensor  # (batch, num_classes), softmax of the logits
    predicted: Tensor  # (batch,) int64, the predicted class


class AttentionClassifier(nn.Module):
    """LSTM classifier with DRAW's differentiable read attention ("Differentiable RAM", section 4.1)."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        C, H, W = config.image_shape
        n = config.read_n
        self.lstm = nn.LSTMCell(C * n * n, config.hidden_size)  # one glimpse per step in, h_t out
        self.read_params = nn.Linear(config.hidden_size, 5)  # eq. (21) from h_{t-1}
        self.classify = nn.Linear(config.hidden_size, config.num_classes)  # softmax layer after the last glimpse
        if config.attention_sigma_init:
            # Departure from the paper (which gives no initialisation): sigma = delta/2 at the start,
            # as in drawnet.model.DRAW; see the comment on ClassifierConfig.attention_sigma_init.
            with torch.no_grad():
                self.read_params.bias[2] = attention.initial_log_sigma2(n, W, H)
        # Learned initial state, like DRAW's h_0 ("learned biases", section 2.1); the first window is
        # therefore the same for every image.
        self.h0 = nn.Parameter(torch.zeros(config.hidden_size))
        self.c0 = nn.Parameter(torch.zeros(config.hidden_size))

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError unless ``x`` is a float tensor (batch, C, H, W) of the configured shape."""
        check_image_batch(x, self.config.image_shape, "ClassifierConfig")

    def read(self, x: Tensor, h_prev: Tensor) -> tuple[Tensor, Window]:
        """One glimpse gamma * F_Y x F_X^T (eq. 27, image only) with parameters from h_{t-1}."""
        n, (_, H, W) = self.config.read_n, self.config.image_shape
        window = attention.window_from_raw(self.read_params(h_prev), n, W, H)  # (21)-(24)
        F_X, F_Y = attention.filterbank_from_window(window, n, W, H)  # (19)-(20), (25)-(26)
        return attention.read_glimpse(x, F_X, F_Y, window.gamma), window  # (27): (batch, C, N, N)

    def forward(self, x: Tensor, *, keep_steps: bool = False) -> ClassifierOutput:
        """Logits for images ``x`` (batch, C, H, W); with ``keep_steps`` also every window and glimpse."""
        self.check_input(x)
        B = x.shape[0]
        h = self.h0.expand(B, -1)  # (batch, hidden)
        c = self.c0.expand(B, -1)
        windows: list[Window] = []
        patches: list[Tensor] = []
        for _ in range(self.config.glimpses):
            glimpse, window = self.read(x, h)  # (batch, C, N, N)
            h, c = self.lstm(glimpse.reshape(B, -1), (h, c))  # glimpse flattened to (batch, C*N*N)
            if keep_steps:
                windows.append(window)
                patches.append(glimpse)
        logits = self.classify(h)  # softmax layer after the last glimpse (section 4.1), as logits
        if not keep_steps:
            return ClassifierOutput(logits, None, None)
        stacked = Window(*(torch.stack(field) for field in zip(*windows, strict=True)))  # each (glimpses, batch)
        return ClassifierOutput(logits, stacked, torch.stack(patches))  # glimpses (T, batch, C, N, N)

    @torch.no_grad()
    def glimpse_sequence(self, x: Tensor) -> GlimpseSequence:
        """The windows and glimpses of every step and the prediction for ``x``, for animations."""
        out = self(x, keep_steps=True)
        probabilities = torch.softmax(out.logits, dim=1)
        return GlimpseSequence(out.windows, out.glimpses, probabilities, probabilities.argmax(dim=1))

    def loss(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Mean cross-entropy ("loss") and the fraction misclassified ("error", no gradient)."""
        return loss_terms(self(x).logits, y)


def loss_terms(logits: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Mean cross-entropy ("loss") of ``logits`` for labels ``y`` and the fraction misclassified ("error")."""
    return {
        "loss": F.cross_entropy(logits, y),
        "error": (logits.detach().argmax(dim=1) != y).float().mean(),
    }


@torch.no_grad()
def evaluate_classifier(
    model: AttentionClassifier, dataset: Any, batch_size: int, device: str | torch.device = "cpu",
    *, details: bool = False, fast: bool = True,
) -> dict[str, Any]:
    """Mean cross-entropy, error rate and image count of ``model`` on a labelled ImageDataset.

    With ``details``, also the confusion matrix (``confusion[true][predicted]``, counts) and the
    indices in ``dataset`` of the misclassified images (``misclassified``, in data set order).
    With ``fast`` (the default) the logits come from drawnet.fast_classifier in float32 where it
    runs, else from the readable model (the same numbers to float rounding)."""
    if dataset.labels is None:
        raise ValueError(f"{dataset.name}/{dataset.split} has no labels; a classifier needs a labelled data set")
    if tuple(dataset.image_shape) != tuple(model.config.image_shape):
        raise ValueError(
            f"{dataset.name}/{dataset.split} has images of shape {dataset.image_shape} but the classifier "
            f"was built for {model.config.image_shape}; use matching data options or model image_shape"
        )
    was_training = model.training
    model.eval()
    K = model.config.num_classes
    total_loss, wrong, count = 0.0, 0, 0
    confusion = torch.zeros(K, K, dtype=torch.long)
    misclassified: list[int] = []
    pool = BufferPool(keep=1)
    try:
        for x, y in dataset.batches(batch_size):  # in data set order (no shuffling)
            x, y = x.to(device), y.to(device)
            logits = fast_classifier.logits(model, x, pool=pool) if fast else model(x).logits
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            predicted = logits.argmax(dim=1)
            miss = predicted != y
            wrong += int(miss.sum())
            if details:
                confusion += torch.bincount((y * K + predicted).cpu(), minlength=K * K).view(K, K)
                misclassified += (count + torch.nonzero(miss.cpu()).flatten()).tolist()
            count += y.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError(f"{dataset.name}/{dataset.split} is empty; nothing to evaluate")
    result: dict[str, Any] = {"loss": total_loss / count, "error": wrong / count, "num_images": count}
    if details:
        result |= {"confusion": confusion.tolist(), "misclassified": misclassified}
    return result


def confused_pairs(confusion: list[list[int]], top: int = 3) -> list[tuple[int, int, int]]:
    """The ``top`` most frequent mistakes of a confusion matrix, as (true, predicted, count)."""
    pairs = [(n, t, p) for t, row in enumerate(confusion) for p, n in enumerate(row) if t != p and n > 0]
    return [(t, p, n) for n, t, p in sorted(pairs, key=lambda q: (-q[0], q[1], q[2]))[:top]]


class ClassifierTask:
    """The trainer's ``Task`` protocol (drawnet.train) for an :class:`AttentionClassifier`."""

    kind = "classifier"
    select_key = "error"  # the best checkpoint is the one with the lowest validation error

    def __init__(self, config: ClassifierConfig):
        self.config = config
        self.fast, self.precision = False, "fp32"  # set by configure()
        self.pool = BufferPool()  # drawnet.fast_classifier's buffers, kept from one step to the next

    def model_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    def build_model(self) -> nn.Module:
        return AttentionClassifier(self.config)

    def configure(self, model: nn.Module, cfg: TrainConfig, device: torch.device) -> str:
        """Choose how the training steps run: drawnet.fast_classifier (CPU, float32 model, drawnet's
        kernels) or the readable model, and the precision of the fast path's matrix products."""
        model = unwrap(model)  # inside DistributedDataParallel
        if cfg.attention_grad_clip > 0:
            raise ValueError(f"train setting attention_grad_clip={cfg.attention_grad_clip:g} is implemented for "
                             "DRAW's training only, not the classifier's: leave it at 0")
        notes = []
        self.fast = cfg.fast and fast_classifier.supported(model)
        why_slow = "fast=false" if not cfg.fast else f"drawnet's CPU kernels: {kernels.status()}"
        if cfg.fast and not self.fast:
            notes.append(f"the fast glimpse recurrence needs a float32 model on CPU with drawnet's kernels "
                         f"({why_slow}): running the readable model")
        precision = cfg.precision
        if not self.fast:
            if precision == "bf16":
                raise ValueError(f"bf16 products need the fast glimpse recurrence (a float32 model on CPU with "
                                 f"drawnet's kernels; here {why_slow}); use --set precision=fp32 (or auto)")
            self.precision = "fp32"
            return "classifier (readable PyTorch model), float32" + "".join(f"; {n}" for n in notes)
        native, _ = engine.native_bf16(device)
        if precision == "auto":
            # Unlike DRAW's, the classifier's "auto" stays float32 even where bf16 is native: one pair
            # of short runs is all that measured bf16's effect on its error (bench/QUALITY.md, Table 1);
            # ask for bf16 by name.
            precision = "fp32"
            notes.append("precision auto: float32 (bf16 products for the classifier: --set precision=bf16)")
        elif precision == "bf16" and not native:
            notes.append("bf16 products emulated (no native bfloat16 here): slower than float32")
        self.precision = precision
        how = "classifier, fast glimpse recurrence (drawnet.fast_classifier), fused C kernels, "
        how += "bf16 matrix products" if precision == "bf16" else "float32"
        return how + "".join(f"; {n}" for n in notes)

    def train_loss(
        self, model: nn.Module, x: Tensor, y: Tensor | None, *, generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> dict[str, Tensor]:
        """The cross-entropy of the batch (the classifier draws no random numbers)."""
        if y is None:
            raise ValueError("the classifier needs labelled data; the training set has no labels")
        if not self.fast:
            return model.loss(x, y)
        model.check_input(x)
        return loss_terms(fast_classifier.logits(model, x, precision=self.precision, pool=self.pool), y)

    def validate(self, model: nn.Module, dataset: Any, batch_size: int, device: str | torch.device) -> dict[str, float]:
        # In float32 whatever the training precision (as DRAWTask validates), so runs compare directly.
        result = evaluate_classifier(model, dataset, batch_size, device, fast=self.fast)
        return {"loss": result["loss"], "error": result["error"]}

    def epoch_end(self, model: nn.Module, run_dir: Path, epoch: int) -> None:
        """Nothing to write per epoch: the glimpse animation is made on demand by ``drawnet animate``."""
        return None


# Table 1 of the paper (paper section 4.1): test error on 100x100 cluttered translated MNIST.
PAPER_TABLE1: list[tuple[str, float]] = [
    ("Convolutional, 2 layers", 0.1435),
    ("RAM, 4 glimpses, 12x12, 4 scales", 0.0941),
    ("RAM, 8 glimpses, 12x12, 4 scales", 0.0811),
    ("Differentiable RAM, 4 glimpses, 12x12", 0.0418),
    ("Differentiable RAM, 8 glimpses, 12x12", 0.0336),
]

def table1_lines(error: float, label: str = "this model") -> list[str]:
    """The paper's Table 1 with this model's test error beside it, as text lines."""
    lines = ["Test error on 100x100 cluttered translated MNIST (paper Table 1)", ""]
    lines += [f"  {name:<40} {value * 100:6.2f} %" for name, value in PAPER_TABLE1]
    lines.append("  " + "-" * 49)
    lines.append(f"  {label:<40} {error * 100:6.2f} %")
    return lines
