"""The one place that decides how a DRAW model is run: the readable model or the optimised recurrence.

:class:`drawnet.DRAW` (``model.forward``, ``model.step``, ``model.loss``, ``model.generate``) is the
readable reference and runs exactly the paper's equations. :mod:`drawnet.fast` computes the same
loss, gradients and samples faster (a hand-written backward, fused products, C kernels on CPU, and
optionally bfloat16 matrix products). :func:`choose` picks one from the model's config, its device
and dtype, and the ``fast`` and ``precision`` settings, and records why; training, evaluation,
sampling, animation and the benchmark all run through the :class:`Engine` it returns.

    engine = choose(model, fast=True, precision="auto")
    print(engine.describe())          # e.g. "fast recurrence, fused C kernels, bf16 products"
    terms = engine.loss(model, x)     # the bound of eqs (9)-(12), as model.loss(x)
    images = engine.generate(model, 16, generator)

A class-conditional model (``DRAWConfig.conditional``) takes the class of every image as
``labels=`` in each of these calls (and only such a model does), on either path.

Precision: ``"fp32"`` (everything float32), ``"bf16"`` (the matrix products of the recurrence take
bfloat16 inputs and sum in float32; weights, optimizer state, LSTM cell states, canvas, attention
and loss stay float32; see drawnet.fast._Products), or ``"auto"``: bf16 where the hardware
multiplies bfloat16 natively (a CPU with AVX512-BF16 and drawnet's kernels built for it, or a CUDA
device that supports bf16), else fp32 with a note saying why. The readable path always runs in
the model's own dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import fast as fast_path
from . import kernels, losses
from .model import DRAW, Generation

PRECISIONS = ("fp32", "bf16", "auto")


def check_precision(value: str) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (for drawnet), and why not."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, ""
        return False, f"{torch.cuda.get_device_name(device)} has no native bfloat16"
    if device.type != "cpu":
        return False, f"bf16 products are only chosen automatically on CPU and CUDA, not {device.type}"
    if kernels.library() is None:
        return False, f"drawnet's CPU kernels are not in use ({kernels.status()})"
    if not kernels.bf16_native():
        return False, "this CPU (or the compiler's build for it) has no AVX512-BF16 instructions"
    return True, ""


@dataclass(frozen=True)
class Engine:
    """How a model is run: ``fast`` (drawnet.fast) or the readable model, in ``precision``."""

    fast: bool
    precision: str  # "fp32" or "bf16", resolved
    kernels: bool  # drawnet.fast uses the fused C kernels (CPU, float32)
    notes: tuple[str, ...] = ()  # why something asked for was not used
    # the fast path's buffers, kept from one pass to the next (drawnet.fast.BufferPool)
    pool: fast_path.BufferPool = field(default_factory=fast_path.BufferPool, compare=False, repr=False)

    def describe(self) -> str:
        if not self.fast:
            text = "readable model (model.step), float32"
        else:
            text = "fast recurrence (drawnet.fast), " + ("fused C kernels" if self.kernels else "PyTorch operations")
            text += ", bf16 matrix products" if self.precision == "bf16" else ", float32"
        return text + "".join(f"; {note}" for note in self.notes)

    def loss(
        self, model: DRAW, x: Tensor, noise: Tensor | None = None, *, labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The bound of eqs (9)-(12) in nats per image (see :func:`drawnet.losses.loss_terms`); of
        -log p(x | y) for a conditional model given ``labels``."""
        if not self.fast:
            return model.loss(x, noise, labels=labels)
        model.check_input(x)
        canvas, mu, log_sigma = fast_path.forward(
            model, x, noise, precision=self.precision, pool=self.pool, labels=labels
        )
        return losses.loss_terms(canvas, x, mu, log_sigma)

    def posterior(
        self, model: DRAW, x: Tensor, generator: torch.Generator | None, *, labels: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """(c_T logits, mu, log sigma, z) for one posterior sample per image, the noise drawn as
        ``model(x, generator=...)`` draws it (so both paths give the same numbers)."""
        if not self.fast:
            out = model(x, generator=generator, labels=labels)
            return out.canvas, out.mu, out.log_sigma, out.z
        model.check_input(x)
        noise = fast_path.noise_for(model, x, generator)
        canvas, mu, log_sigma = fast_path.forward(
            model, x, noise, precision=self.precision, pool=self.pool, labels=labels
        )
        return canvas, mu, log_sigma, mu + torch.exp(log_sigma) * noise  # (6)

    @torch.no_grad()
    def generate(
        self, model: DRAW, n: int, generator: torch.Generator | None = None, *, labels: Tensor | None = None
    ) -> Generation:
        """``n`` images from the prior (eqs 13-16), as :meth:`drawnet.DRAW.generate`; a conditional
        model draws image i of class ``labels[i]``."""
        if not self.fast:
            return model.generate(n, generator, labels=labels)
        if n <= 0:
            raise ValueError(f"number of samples must be positive, got {n}")
        return Generation(
            *fast_path.generate(model, n, generator, precision=self.precision, pool=self.pool, labels=labels)
        )


def choose(
    model: DRAW, device: torch.device | str | None = None, *, fast: bool = True, precision: str = "fp32"
) -> Engine:
    """The engine for ``model`` on ``device`` (default: where its parameters are)."""
    check_precision(precision)
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    notes: list[str] = []
    if fast:
        why = fast_path.unsupported(model)
        if why:
            notes.append(f"drawnet.fast does not implement {'; '.join(why)}: running the readable model")
            fast = False
    elif precision == "bf16":
        notes.append("the readable model runs in float32 (bf16 products are a fast-path feature)")
    if not fast:
        return Engine(fast=False, precision="fp32", kernels=False, notes=tuple(notes))
    if precision == "auto":
        native, why_not = native_bf16(device)
        precision = "bf16" if native else "fp32"
        if not native:
            notes.append(f"precision auto: float32 ({why_not})")
    elif precision == "bf16" and not native_bf16(device)[0]:
        notes.append("bf16 products emulated by PyTorch (no native bfloat16 here): slower than float32")
    use_kernels = device.type == "cpu" and param.dtype == torch.float32 and kernels.library() is not None
    return Engine(fast=True, precision=precision, kernels=use_kernels, notes=tuple(notes))

