"""DRAW's differentiable 2-D Gaussian attention (paper section 3.2, eqs 19-29), as pure functions.

Coordinate convention (docs/DESIGN.md, Coordinates):

* A is the image width (number of columns, the x axis), B its height (rows, the y axis).
* Pixel positions are **1-indexed**: column a is in {1..A}, row b in {1..B}; the grid indices
  i, j are in {1..N}. With g~ = 0 the grid centre (g_X, g_Y) = ((A+1)/2, (B+1)/2) is then exactly
  the image centre, and the filter centres mu^i = g + (i - N/2 - 0.5) * delta are symmetric about
  g. (Several public implementations use 0-indexing and are off by up to one stride.)
* ``F_X`` has shape (batch, N, A) and ``F_Y`` (batch, N, B); each row sums to 1 (a small floor on
  the normaliser keeps a filter that lies far outside the image at zero instead of NaN).
* Images are (batch, C, B, A) = (batch, C, height, width); the same filters are used for every
  channel.

Nothing here holds state; the learned linear layers that produce the raw parameters live in
:mod:`drawnet.model`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

# Floor on the filter normalisers Z_X, Z_Y (eqs 25-26): a filter far outside the image has all
# its weights underflow to 0 and would otherwise divide 0 by 0.
NORMALISER_EPS = 1e-8


class Window(NamedTuple):
    """Attention parameters in pixel units, each of shape (batch,).

    ``gx, gy``: grid centre (1-indexed pixel coordinates); ``delta``: stride between filters;
    ``sigma2``: isotropic variance of each Gaussian filter; ``gamma``: intensity.
    """

    gx: Tensor
    gy: Tensor
    sigma2: Tensor
    delta: Tensor
    gamma: Tensor


def window_from_raw(raw: Tensor, n: int, width: int, height: int) -> Window:
    """Turn the five outputs of eq. (21) into pixel-unit attention parameters (eqs 22-24).

    ``raw``: (batch, 5) = (g~_X, g~_Y, log sigma^2, log delta~, log gamma).
    """
    if raw.dim() != 2 or raw.shape[1] != 5:
        raise ValueError(f"raw attention parameters must have shape (batch, 5), got {tuple(raw.shape)}")
    if n < 2:
        raise ValueError(f"attention grid size N must be >= 2 (eq. 24 divides by N - 1), got {n}")
    gx_t, gy_t, log_sigma2, log_delta_t, log_gamma = raw.unbind(dim=1)  # (21), each (batch,)
    gx = (width + 1) / 2 * (gx_t + 1)  # (22)
    gy = (height + 1) / 2 * (gy_t + 1)  # (23)
    delta = (max(width, height) - 1) / (n - 1) * torch.exp(log_delta_t)  # (24)
    return Window(gx=gx, gy=gy, sigma2=torch.exp(log_sigma2), delta=delta, gamma=torch.exp(log_gamma))


def initial_log_sigma2(n: int, width: int, height: int) -> float:
    """log sigma^2 that makes sigma = delta_0 / 2 when log delta~ = 0 (docs/DESIGN.md, Initialising the attention).

    drawnet's own initialisation, not the paper's: it makes neighbouring filters overlap at the
    start so the read sees the image instead of a few black corner pixels.
    """
    delta0 = (max(width, height) - 1) / (n - 1)
    return 2.0 * math.log(delta0 / 2.0)


def _filters(centre: Tensor, sigma2: Tensor, delta: Tensor, n: int, size: int) -> Tensor:
    """One axis of the filterbank: (batch, n, size), rows normalised to sum to 1."""
    i = torch.arange(1, n + 1, dtype=centre.dtype, device=centre.device)  # grid index, 1..N
    mu = centre[:, None] + (i - n / 2 - 0.5) * delta[:, None]  # (19)/(20): (batch, n)
    a = torch.arange(1, size + 1, dtype=centre.dtype, device=centre.device)  # pixel index, 1..size
    f = torch.exp(-((a - mu[:, :, None]) ** 2) / (2 * sigma2[:, None, None]))  # (25)/(26): (batch, n, size)
    return f / f.sum(dim=2, keepdim=True).clamp_min(NORMALISER_EPS)  # divide by Z_X / Z_Y


def filterbank(
    gx: Tensor, gy: Tensor, sigma2: Tensor, delta: Tensor, n: int, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """Gaussian filterbank matrices of eqs (19)-(20) and (25)-(26).

    Args:
        gx, gy: grid centre in 1-indexed pixel coordinates, shape (batch,).
        sigma2: filter variance in pixels^2, shape (batch,).
        delta: stride between neighbouring filters in pixels, shape (batch,).
        n: grid size N (N x N filters).
        width, height: image size A (columns) and B (rows).

    Returns:
        ``F_X`` of shape (batch, n, width) and ``F_Y`` of shape (batch, n, height), each row summing
        to 1 (up to the normaliser floor for filters entirely outside the image).
    """
    for name, t in (("gx", gx), ("gy", gy), ("sigma2", sigma2), ("delta", delta)):
        if t.dim() != 1:
            raise ValueError(f"{name} must have shape (batch,), got {tuple(t.shape)}")
    F_X = _filters(gx, sigma2, delta, n, width)  # (batch, N, A)
    F_Y = _filters(gy, sigma2, delta, n, height)  # (batch, N, B)
    return F_X, F_Y


def filterbank_from_window(window: Window, n: int, width: int, height: int) -> tuple[Tensor, Tensor]:
    return filterbank(window.gx, window.gy, window.sigma2, window.delta, n, width, height)


def read_glimpse(image: Tensor, F_X: Tensor, F_Y: Tensor, gamma: Tensor) -> Tensor:
    """gamma * F_Y image F_X^T for each channel (one half of eq. 27).

    ``image``: (batch, C, B, A) -> glimpse (batch, C, N, N).
    """
    glimpse = F_Y[:, None] @ image @ F_X.transpose(1, 2)[:, None]  # (batch, C, N, N)
    return gamma[:, None, None, None] * glimpse


def read_attention(x: Tensor, x_hat: Tensor, F_X: Tensor, F_Y: Tensor, gamma: Tensor) -> Tensor:
    """Eq. (27): read = gamma * [F_Y x F_X^T, F_Y x_hat F_X^T], flattened to (batch, 2*C*N*N)."""
    B = x.shape[0]
    both = torch.cat([x, x_hat], dim=1)  # (batch, 2C, B, A): one product for image and error image
    return read_glimpse(both, F_X, F_Y, gamma).reshape(B, -1)  # (batch, 2*C*N*N)


def write_attention(patch: Tensor, F_X: Tensor, F_Y: Tensor, gamma: Tensor) -> Tensor:
    """Eq. (29): write = (1 / gamma^) F^_Y^T w F^_X.

    ``patch`` w: (batch, C, N, N) -> canvas increment (batch, C, B, A).
    """
    canvas = F_Y.transpose(1, 2)[:, None] @ patch @ F_X[:, None]  # (batch, C, B, A)
    return canvas / gamma[:, None, None, None]


# ------------------------------------------------------------------ clipping the attention's gradient
# Ours, not the paper's (training option TrainConfig.attention_grad_clip; docs/DESIGN.md, "Clipping the
# attention's gradient"): the gradient of each image's loss with respect to the five raw outputs of
# eq. (21) at each step is norm-clipped, in the spirit of the derivative clipping Graves (2013,
# arXiv:1308.0850) used for LSTMs. The forward pass is unchanged.
class GradientClip:
    """Clips rows of the gradient w.r.t. the raw attention parameters (batch, 5) in place.

    ``max_norm`` is in units of one image's loss: the gradient reaching a row is that of the batch's
    mean loss, so a row is scaled down when ``batch * |row|`` exceeds it. ``rows`` and ``clipped``
    count the rows seen and the rows scaled down (the latter a tensor, so counting does not
    synchronise a GPU).
    """

    def __init__(self, max_norm: float):
        if not (max_norm > 0 and math.isfinite(max_norm)):
            raise ValueError(f"the attention gradient clip must be a finite number > 0, got {max_norm}")
        self.max_norm = float(max_norm)
        self.active = True  # False: passes started meanwhile leave their gradient as it is
        self.rows = 0
        self.clipped = torch.zeros((), dtype=torch.int64)

    def clip_(self, grad: Tensor) -> Tensor:
        """Scale each row of ``grad`` (batch, 5) so that batch * its norm is at most max_norm."""
        limit = self.max_norm / grad.shape[0]
        norm = torch.linalg.vector_norm(grad, dim=1, dtype=torch.promote_types(grad.dtype, torch.float32))
        over = norm > limit
        grad.mul_(torch.where(over, limit / norm, 1.0).to(grad.dtype).unsqueeze(1))
        if self.clipped.device != grad.device:
            self.clipped = self.clipped.to(grad.device)
        self.rows += grad.shape[0]
        self.clipped += over.sum()
        return grad

    def take_fraction(self) -> float:
        """The fraction of rows clipped since the last call (0 if none were seen); resets the counts."""
        rows, clipped = self.rows, int(self.clipped)
        self.rows = 0
        self.clipped.zero_()
        return clipped / rows if rows else 0.0


class _ClipGradient(torch.autograd.Function):
    """The identity forward; clips the incoming gradient's rows (GradientClip) backward."""

    @staticmethod
    def forward(ctx, raw: Tensor, clip: GradientClip) -> Tensor:
        ctx.clip = clip
        return raw.view_as(raw)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.clip.clip_(grad.clone()), None


def clip_gradient(raw: Tensor, clip: GradientClip | None) -> Tensor:
    """``raw`` (batch, 5) unchanged, its gradient clipped by ``clip`` on the way back (None: as is)."""
    return raw if clip is None else _ClipGradient.apply(raw, clip)
