"""The optimised DRAW recurrence: same mathematics as :mod:`drawnet.model`, a hand-written backward.

``DRAW.loss`` and ``DRAW.generate`` run through here by default; ``model.forward`` / ``model.step``
remain the readable reference, and tests/test_fast.py checks that this file gives the same loss and
the same gradient for every parameter (bench/speed.py measures the speed, bench/RESULTS.md records
it and what each idea below gave).

What is done differently from the readable path (none of it changes the equations):

* The whole T-step unrolled recurrence is one :class:`torch.autograd.Function`. The backward
  recurrence is written by hand and only does per step what must be sequential (the gradients of
  the hidden states); the weight gradients are products over 16 steps x batch rows at once
  (:class:`_WeightGrads`), as cuDNN does for its LSTMs, instead of one small product per step.
* Every product with h^dec is fused into one matrix product per step: h^dec_{t-1} feeds the encoder
  gates (eq. 5), the decoder's recurrent gates (eq. 7) and the read window (eq. 21), while
  h^dec_t feeds the write patch and the write window (eqs 18/28, 21); stacking those weight rows
  lets one product of h^dec_t serve the write of step t and the reads of step t + 1.
* The encoder's own input [r_t, h^enc_{t-1}] is one product against stacked weights, written into a
  preallocated buffer (no concatenation). Without read attention the image part of eq. (17),
  [x, x^_t], has a part x that never changes: its product with the weights is hoisted out of the
  loop (and its weight gradient is one product with the sum over t of the gate gradients). A
  class-conditional model's one-hot label y is such a constant input of both LSTMs: its products
  with the encoder's and the decoder's weights are hoisted the same way (in float32: they select a
  weight column each), and its weight gradients are products with those sums.
* Biases of the two LSTM products are added once; both attention axes are one stacked tensor;
  LSTM and attention work is done in place, in buffers kept from one pass to the next (fresh
  memory costs page faults on every step).
* Generation runs the decoder recurrence alone (eq. 14), with the input products of 16 noise vectors
  at a time hoisted into one product, then the writes (eq. 15) of those 16 steps at once: the canvas
  never feeds back into the decoder.

* On CPU in float32, the elementwise and attention work runs in fused C kernels
  (:mod:`drawnet.kernels`, ``_kernels.c``, compiled on first use): each LSTM cell forward and
  backward in one pass, the error image of eq. (3), and, when both read and write use attention,
  the whole read (eqs 3, 19-27) and write (19-26, 28-29, 8) of a step and their gradients, on
  blocks of 16 images with the image index innermost (so that every loop is a 16-lane vector
  operation). Without a C compiler, in another dtype or on another device, the PyTorch operations
  below do the same work (tests/test_kernels.py checks both against the readable path).

Everything else is plain PyTorch and follows the input's device, but it has only been run on CPU.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import kernels
from .attention import NORMALISER_EPS, Window, window_from_raw
from .model import noise_like

if TYPE_CHECKING:
    from .model import DRAW


# ---------------------------------------------------------------------------- attention pieces
# The same equations as drawnet.attention (19)-(29), split into a forward that keeps what its
# hand-written backward needs. ``raw`` is the (batch, 5) output of eq. (21).


class _Attention:
    """One attention layer (read or write) for a given image size.

    Both axes are computed together, as a (batch, 2, N, P) stack with P = max(A, B) pixel positions:
    [F_X; F_Y]. For a non-square image the positions past the shorter side are masked to 0, which
    leaves the normalisers, the filters and their gradients exactly as for separate axes.
    """

    def __init__(self, n: int, width: int, height: int, like: Tensor):
        self.n, self.width, self.height = n, width, height
        dtype, device = like.dtype, like.device
        P = max(width, height)
        self.grid = torch.arange(1, n + 1, dtype=dtype, device=device) - n / 2 - 0.5  # i - N/2 - 0.5, (19)-(20)
        self.pixels = torch.arange(1, P + 1, dtype=dtype, device=device)  # a, b in 1..P
        self.half = torch.tensor([(width + 1) / 2, (height + 1) / 2], dtype=dtype, device=device)
        self.stride = (P - 1) / (n - 1)  # (24): (max(A, B) - 1) / (N - 1)
        self.mask = None
        if width != height:
            self.mask = torch.zeros(2, 1, P, dtype=dtype, device=device)
            self.mask[0, :, :width] = 1
            self.mask[1, :, :height] = 1

    def filters(self, raw: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple]:
        """F_X (batch, N, A), F_Y (batch, N, B), gamma (batch,) from the (batch, 5) output of eq. (21)."""
        centre = (raw[:, :2] + 1) * self.half  # (22), (23): [g_X, g_Y]
        e = torch.exp(raw[:, 2:])  # [sigma^2, delta~, gamma]
        sigma2, gamma = e[:, 0], e[:, 2]
        delta = self.stride * e[:, 1]  # (24)
        mu = centre[:, :, None] + self.grid * delta[:, None, None]  # (19), (20): (batch, 2, N)
        diff = self.pixels - mu[:, :, :, None]  # a - mu, (batch, 2, N, P)
        f = torch.div(diff * diff, (-2 * sigma2)[:, None, None, None]).exp_()  # (25), (26) before 1/Z
        if self.mask is not None:
            f.mul_(self.mask)
        Z = f.sum(dim=3, keepdim=True)
        F = f.div_(Z.clamp_min(NORMALISER_EPS))
        return F[:, 0, :, : self.width], F[:, 1, :, : self.height], gamma, (F, Z, mu, sigma2, delta, gamma)

    def raw_backward(self, dF_X: Tensor, dF_Y: Tensor, dgamma: Tensor, saved: tuple, out: Tensor) -> None:
        """Write d(raw) (batch, 5) into ``out`` from the gradients of F_X, F_Y and gamma."""
        F, Z, mu, sigma2, delta, gamma = saved
        diff = self.pixels - mu[:, :, :, None]  # a - mu, recomputed rather than kept
        if self.mask is None:
            dF = torch.stack([dF_X, dF_Y], dim=1)  # (batch, 2, N, P)
        else:
            dF = torch.zeros_like(F)
            dF[:, 0, :, : self.width] = dF_X
            dF[:, 1, :, : self.height] = dF_Y
        # F = f / max(Z, eps): the normaliser passes gradient only where it is above its floor.
        dot = (dF * F).sum(dim=3, keepdim=True).masked_fill_(Z <= NORMALISER_EPS, 0)
        du = (dF - dot).mul_(F)  # gradient w.r.t. the exponent u = -(a - mu)^2 / (2 sigma^2), as f = Z F
        du_diff = du.mul_(diff)
        dmu = du_diff.sum(dim=3)  # times 1 / sigma^2: (batch, 2, N)
        d_sigma2 = (du_diff * diff).sum(dim=(1, 2, 3))  # times 1 / (2 sigma^4)
        torch.mul(dmu.sum(dim=2), (self.half / sigma2[:, None]), out=out[:, :2])  # through (22), (23)
        d_delta = (dmu * self.grid).sum(dim=(1, 2))  # times 1 / sigma^2
        # d raw for [log sigma^2, log delta~, log gamma]: d(exp(v)) = exp(v) dv, and delta = stride exp(v).
        grads = torch.stack([d_sigma2, d_delta, dgamma], dim=1)
        factors = torch.stack([0.5 / sigma2, delta / sigma2, gamma], dim=1)
        torch.mul(grads, factors, out=out[:, 2:])


# ---------------------------------------------------------------------------- LSTM pieces
# Gate order i, f, g, o as in torch.nn.LSTMCell: c' = f c + i g, h' = o tanh(c').


_ONE = torch.tensor(1.0)  # for 1 - tanh^2 in one operation


def _lstm_forward(gates: Tensor, c_prev: Tensor, c_out: Tensor, h_out: Tensor, tanh_out: Tensor) -> None:
    """Activate ``gates`` (batch, 4H) in place; write c', h' and tanh(c') into the given tensors."""
    H = c_prev.shape[1]
    torch.sigmoid_(gates[:, : 2 * H])  # i, f
    torch.tanh_(gates[:, 2 * H : 3 * H])  # g
    torch.sigmoid_(gates[:, 3 * H :])  # o
    i, f, g, o = gates.split(H, dim=1)
    torch.mul(f, c_prev, out=c_out)
    c_out.addcmul_(i, g)
    torch.tanh(c_out, out=tanh_out)
    torch.mul(o, tanh_out, out=h_out)


def _lstm_backward(
    dh: Tensor, dc: Tensor, act: Tensor, c_prev: Tensor, c: Tensor, dgates: Tensor, slope: Tensor, tmp: Tensor
) -> Tensor:
    """Gradients of one LSTM step: pre-activation gate gradients into ``dgates``; returns dc_prev.

    ``dc`` is the gradient reaching c' from the next step; it is updated in place and returned.
    ``slope`` (batch, 4H) and ``tmp`` (batch, H) are scratch space.
    """
    H = dh.shape[1]
    i, f, g, o = act.split(H, dim=1)
    di, df, dg, do = dgates.split(H, dim=1)
    tanh_c = torch.tanh(c, out=tmp)
    torch.mul(dh, tanh_c, out=do)
    torch.addcmul(_ONE, tanh_c, tanh_c, value=-1, out=tmp)  # 1 - tanh^2(c'), in place of tanh(c')
    dc.add_(tmp.mul_(o).mul_(dh))  # through h' = o tanh(c')
    torch.mul(dc, g, out=di)
    torch.mul(dc, c_prev, out=df)
    torch.mul(dc, i, out=dg)
    torch.addcmul(act, act, act, value=-1, out=slope)  # sigmoid' = s (1 - s) for i, f, o
    slope[:, 2 * H : 3 * H].add_(1).sub_(g)  # tanh' = 1 - g^2 = g (1 - g) + 1 - g
    dgates.mul_(slope)
    return dc.mul_(f)


# ---------------------------------------------------------------------------- matrix products


class _Products:
    """The matrix products of one pass, in float32 or with bfloat16 inputs (``precision``).

    ``"fp32"``: torch.mm / addmm. ``"bf16"``: both factors are rounded to bfloat16 and the sums are
    float32. On CPU with the fused kernels that is drawnet.kernels.gemm: the cast to bf16 happens
    inside the kernel as it packs each factor, and its result is float32 (not rounded), so a
    product can add straight into the float32 gate and gradient buffers. Elsewhere (no kernels,
    CUDA) it is PyTorch's bf16 matmul, whose result is also rounded to bf16 before it is cast back.
    Only the products see bf16: weights, Adam state, LSTM cell states, the canvas, the attention
    filterbanks and the loss stay float32.

    A weight is prepared once per pass with :meth:`weight` (packed, or cast, for bf16) and then
    used for all T steps. The packed matrices live in the pass's kept buffers (``pack.NAME``, sized
    by :meth:`pack_shapes`): fresh memory for them on every pass costs page faults (measured: 45 ms
    of a 210 ms training step).
    """

    def __init__(self, precision: str, like: Tensor):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.bf16 = precision == "bf16"
        self.packed = self.bf16 and kernels.usable(like)  # the C kernel, else PyTorch's bf16 matmul
        self.bufs: dict[str, Tensor] = {}

    def pack_shapes(self, matrices: dict[str, tuple[int, int]]) -> dict[str, tuple[int, ...]]:
        """Buffer shapes for the packed (K, N) ``matrices`` by name (none unless packing)."""
        if not self.packed:
            return {}
        return {f"pack.{name}": (kernels.packed_size(K, N),) for name, (K, N) in matrices.items()}

    def weight(self, w: Tensor, name: str):
        """``w`` (K, N), ready to be the right-hand factor of :meth:`mm`."""
        if not self.bf16:
            return w
        if self.packed:
            return kernels.PackedMatrix(w, self.bufs.get(f"pack.{name}"))
        return w.to(torch.bfloat16)  # cast once per pass

    def mm(self, out: Tensor, a: Tensor, w, add: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """``out`` = ``add`` + a @ w + ``bias`` (``add`` may be ``out`` itself); returns ``out``."""
        if self.packed:
            return kernels.gemm(out, a, w, add, bias)
        if self.bf16:
            product = torch.mm(a.to(torch.bfloat16), w).float()  # the bf16 inputs of the product
            if bias is not None:
                product += bias
            return out.copy_(product if add is None else product.add_(add))
        if add is None and bias is None:
            return torch.mm(a, w, out=out)
        if add is out:
            out.addmm_(a, w)
            return out if bias is None else out.add_(bias)
        if add is None:
            return torch.addmm(bias, a, w, out=out)
        torch.addmm(add, a, w, out=out)
        return out if bias is None else out.add_(bias)

    def accumulator(self, rows: int, cols: int, like: Tensor) -> Tensor:
        """A zeroed weight-gradient accumulator for a (rows, cols) weight, for :meth:`accumulate`."""
        # bf16 keeps it transposed: the kernel's efficient form of G^T X is (X^T G)^T.
        return like.new_zeros(cols, rows) if self.packed else like.new_zeros(rows, cols)

    def accumulate(self, acc: Tensor, g: Tensor, x: Tensor) -> None:
        """acc += g^T x for gradient rows g (n, out) and input rows x (n, in) (weight gradients)."""
        if self.packed:
            kernels.gemm(acc, x.t(), kernels.PackedMatrix(g, self.bufs.get("pack.grad")), acc)  # acc^T += x^T g
        elif self.bf16:
            acc += torch.mm(g.t().to(torch.bfloat16), x.to(torch.bfloat16)).float()
        else:
            acc.addmm_(g.t(), x)

    def gradient(self, acc: Tensor) -> Tensor:
        """The (rows, cols) weight gradient held by ``acc``."""
        return acc.t().contiguous() if self.packed else acc


# ---------------------------------------------------------------------------- the recurrence


class _Layout:
    """Where each piece lives in the fused weight matrices of one model."""

    def __init__(self, model: DRAW):
        cfg = model.config
        C, H, W = cfg.image_shape
        self.C, self.H, self.W = C, H, W
        self.T, self.E, self.D, self.Z = cfg.T, cfg.enc_size, cfg.dec_size, cfg.z_size
        self.read_n, self.write_n = cfg.read_n, cfg.write_n
        self.pixels = C * H * W
        # Encoder input r_t: two N x N glimpses per channel (27), or the x^_t half of (17) (the x half
        # is hoisted).
        self.R = 2 * C * cfg.read_n**2 if cfg.read_n is not None else self.pixels
        self.write_size = C * cfg.write_n**2 if cfg.write_n is not None else self.pixels
        # A conditional model's one-hot y (K values): encoder input [r_t, y, h^dec_{t-1}] (the read
        # being [x, x^_t] without attention), decoder input [z_t, y].
        self.K = cfg.num_classes if cfg.conditional else 0
        y_start = 2 * self.pixels if cfg.read_n is None else self.R
        self.enc_y = slice(y_start, y_start + self.K)  # y's columns of the encoder's weight_ih
        self.dec_z = slice(0, self.Z)  # z's columns of the decoder's weight_ih (the rest are y's)
        # Columns of the fused product with h^dec: [enc gates | dec gates | read raw | write raw | patch].
        E4, D4 = 4 * self.E, 4 * self.D
        self.enc = slice(0, E4)
        self.dec = slice(E4, E4 + D4)
        nr = 5 if cfg.read_n is not None else 0
        nw = 5 if cfg.write_n is not None else 0
        self.rp = slice(E4 + D4, E4 + D4 + nr)
        self.wp = slice(self.rp.stop, self.rp.stop + nw)
        self.wo = slice(self.wp.stop, self.wp.stop + self.write_size)
        self.cols = self.wo.stop
        self.write_cols = slice(self.wp.start, self.cols)  # what the product of h^dec_T is needed for


def _fused_weights(model: DRAW, lay: _Layout) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(W_hdec (cols, D), b_hdec (cols,), W_encin (4E, R + E), W_x (4E, pixels) or None)."""
    enc, dec = model.encoder, model.decoder
    in_size = enc.weight_ih.shape[1]
    hdec_rows = [enc.weight_ih[:, in_size - lay.D :], dec.weight_hh]
    hdec_bias = [enc.bias_ih + enc.bias_hh, dec.bias_ih + dec.bias_hh]
    for layer in (model.read_params, model.write_params, model.write_out):
        if layer is not None:
            hdec_rows.append(layer.weight)
            hdec_bias.append(layer.bias)
    W_hdec = torch.cat(hdec_rows, dim=0)
    b_hdec = torch.cat(hdec_bias)
    if lay.read_n is None:
        # Eq. (17): encoder input [x, x^_t, h^dec]; x's columns are hoisted, x^_t's stay in the loop.
        W_x = enc.weight_ih[:, : lay.pixels]
        W_encin = torch.cat([enc.weight_ih[:, lay.pixels : 2 * lay.pixels], enc.weight_hh], dim=1)
    else:
        W_x = None
        W_encin = torch.cat([enc.weight_ih[:, : lay.R], enc.weight_hh], dim=1)
    return W_hdec, b_hdec, W_encin, W_x


def _packed_matrices(lay: _Layout, B: int) -> dict[str, tuple[int, int]]:
    """(K, N) of every right-hand factor a training pass packs for the bf16 kernel, by name."""
    E, D, Z, RE, cols, nw = lay.E, lay.D, lay.Z, lay.R + lay.E, lay.cols, lay.cols - lay.write_cols.start
    mats = {
        "hdec_t": (D, cols), "encin_t": (RE, 4 * E), "write_t": (D, nw), "post_t": (E, 2 * Z), "z_t": (Z, 4 * D),
        "hdec": (cols, D), "write": (nw, D), "encin": (4 * E, RE), "post": (2 * Z, E), "z": (4 * D, Z),
        "grad": (min(_CHUNK, lay.T) * B, cols),  # the gradient rows of a chunk (the widest: all columns)
    }  # fmt: skip
    if lay.read_n is None:
        mats["x_t"] = (lay.pixels, 4 * E)
    return mats


def _param_list(model: DRAW) -> list[Tensor]:
    """The parameters the recurrence uses, in a fixed order (optional layers left out)."""
    names = [
        "encoder.weight_ih", "encoder.weight_hh", "encoder.bias_ih", "encoder.bias_hh",
        "decoder.weight_ih", "decoder.weight_hh", "decoder.bias_ih", "decoder.bias_hh",
        "posterior.weight", "posterior.bias", "write_out.weight", "write_out.bias",
    ]  # fmt: skip
    if model.read_params is not None:
        names += ["read_params.weight", "read_params.bias"]
    if model.write_params is not None:
        names += ["write_params.weight", "write_params.bias"]
    names += ["canvas0", "h_enc0", "c_enc0", "h_dec0", "c_dec0"]
    params = dict(model.named_parameters())
    return [params[name] for name in names]


class BufferPool:
    """The large per-pass buffers, kept for the next pass of the same shapes.

    Fresh memory of this size costs page faults on every pass (measured: several % of a training
    step). A pass takes a set (so two passes alive at once never share one) and gives it back when
    its backward is done; autograd's saved-tensor version check catches a backward through buffers
    reused meanwhile. The sets of the two most recent shapes are kept: a training loop that also
    samples (or validates at another batch size) alternates between two. An :class:`drawnet.engine.
    Engine` owns one pool; a pass given none uses fresh buffers.
    """

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._sets: dict[tuple, dict[str, Tensor]] = {}

    def take(self, shapes: dict[str, tuple[int, ...]], like: Tensor) -> tuple[tuple, dict[str, Tensor]]:
        key = (tuple(shapes.items()), like.dtype, like.device)
        bufs = self._sets.pop(key, None)
        if bufs is None:
            bufs = {name: like.new_empty(shape) for name, shape in shapes.items()}
        return key, bufs

    def give_back(self, key: tuple, bufs: dict[str, Tensor]) -> None:
        self._sets.pop(key, None)
        self._sets[key] = bufs
        while len(self._sets) > self.keep:
            del self._sets[next(iter(self._sets))]

    def clear(self) -> None:
        """Release the kept sets (a training pass's set is about the activation memory of one pass)."""
        self._sets.clear()

    def __len__(self) -> int:
        return len(self._sets)


_CHUNK = 16  # steps per weight-gradient product: large enough to be efficient, small enough for memory


class _WeightGrads:
    """Weight gradients accumulated over chunks of steps, one product per weight and chunk.

    Holds the rows k in [lo, hi] of d_proj (gradient w.r.t. the fused product of h^dec_k) and of
    d_post (gradient w.r.t. [mu_k, log sigma_k]). The backward pass runs k downwards; when it
    leaves a chunk, the complete rows lo+1..hi are multiplied into the weight gradients and row lo
    (whose write columns belong to the step below) moves to the top of the next chunk.
    """

    def __init__(
        self, lay: _Layout, B: int, bufs, x_flat: Tensor, h_dec_all, encin_all, z_all, hoisted_x: bool,
        products: _Products,
    ):
        self.lay, self.B, self.products = lay, B, products
        self.h_dec_all, self.encin_all, self.z_all = h_dec_all, encin_all, z_all
        T, E, D, Z, R = lay.T, lay.E, lay.D, lay.Z, lay.R
        zeros, acc = x_flat.new_zeros, products.accumulator
        self.dW_hdec, self.db_hdec = acc(lay.cols, D, x_flat), zeros(lay.cols)
        self.dW_encin, self.dW_z = acc(4 * E, R + E, x_flat), acc(4 * lay.D, Z, x_flat)
        self.dW_post, self.db_post = acc(2 * Z, E, x_flat), zeros(2 * Z)
        # sums over t of the encoder's (and, conditional, the decoder's) gate gradients, for the hoisted inputs
        self.d_enc_sum = zeros(B, 4 * E) if hoisted_x or lay.K else None
        self.d_dec_sum = zeros(B, 4 * lay.D) if lay.K else None
        self.d_proj = bufs["d_proj"].zero_()  # (chunk + 1, batch, cols)
        self.d_post = bufs["d_post"].zero_()
        self.hi, self.lo = T, max(0, T - _CHUNK)

    def d_proj_row(self, k: int) -> Tensor:
        return self.d_proj[k - self.lo]

    def d_post_row(self, k: int) -> Tensor:
        return self.d_post[k - self.lo]

    def flush(self, a: int, b: int) -> None:
        """Add rows a..b (complete) into the weight gradients."""
        lay, B, lo = self.lay, self.B, self.lo
        n = b - a + 1
        rows = self.d_proj[a - lo : b - lo + 1].view(n * B, lay.cols)
        accumulate = self.products.accumulate
        accumulate(self.dW_hdec, rows, self.h_dec_all[a : b + 1].view(n * B, lay.D))
        self.db_hdec += rows.sum(dim=0)
        b = min(b, lay.T - 1)  # rows past the last step have no gates and no posterior
        if b < a:
            return
        m = b - a + 1
        steps = self.d_proj[a - lo : b - lo + 1]
        d_enc = steps[:, :, lay.enc].reshape(m * B, 4 * lay.E)  # a view: rows of stride cols
        accumulate(self.dW_encin, d_enc, self.encin_all[a : b + 1].view(m * B, -1))
        if self.d_enc_sum is not None:
            self.d_enc_sum += steps[:, :, lay.enc].sum(dim=0)
        if self.d_dec_sum is not None:
            self.d_dec_sum += steps[:, :, lay.dec].sum(dim=0)
        d_dec = steps[:, :, lay.dec].reshape(m * B, 4 * lay.D)
        accumulate(self.dW_z, d_dec, self.z_all[a : b + 1].view(m * B, lay.Z))
        d_post = self.d_post[a - lo : b - lo + 1].view(m * B, 2 * lay.Z)
        h_enc = self.encin_all[a + 1 : b + 2, :, lay.R :].reshape(m * B, lay.E)  # h^enc_k, a view
        accumulate(self.dW_post, d_post, h_enc)
        self.db_post += d_post.sum(dim=0)

    def next_chunk(self) -> None:
        self.flush(self.lo + 1, self.hi)
        hi, lo = self.lo, max(0, self.lo - _CHUNK)
        top = hi - lo
        self.d_proj[top].copy_(self.d_proj[0])
        self.d_post[top].copy_(self.d_post[0])
        self.d_proj[:top].zero_()
        self.hi, self.lo = hi, lo


# ---------------------------------------------------------------------------- one step's operations
# The loop bodies of _Recurrence mirror DRAW.step: read (eqs 3-4), encoder (5), posterior and
# sample (1, 2, 6), decoder (7), write (8). Each operation has one implementation per way of doing
# it, chosen once per pass (_Recurrence._ops): the read and the write without attention (eqs 17,
# 18), with attention in PyTorch operations, or with attention in the fused C kernels on blocked
# images (drawnet.kernels.BlockedAttention); the LSTM cell in PyTorch or in C. Each keeps, per step
# t, what its backward needs.


class _Lstm:
    """The LSTM cell's elementwise part, eqs (5) and (7) after their products (gate order i, f, g, o)."""

    def __init__(self, use_kernels: bool, bufs: dict[str, Tensor], B: int):
        self.use_kernels = use_kernels
        self.tanh_c = bufs["tmp"][: B * (bufs["tmp"].numel() // B)].view(B, -1)
        self.slope, self.tmp = bufs["slope"], bufs["tmp"]
        self.B = B

    def forward(self, gates: Tensor, c_prev: Tensor, c_out: Tensor, h_out: Tensor) -> None:
        if self.use_kernels:
            kernels.lstm_forward(gates, c_prev, c_out, h_out)
        else:
            _lstm_forward(gates, c_prev, c_out, h_out, self.tanh_c[:, : c_prev.shape[1]])

    def backward(self, dh: Tensor, dh2: Tensor | None, dc: Tensor, act: Tensor, c_prev: Tensor, c: Tensor,
                 dgates: Tensor) -> Tensor:
        """Gate gradients into ``dgates`` from dh (+ dh2) reaching h' and dc reaching c'; returns dc_prev."""
        if self.use_kernels:
            return kernels.lstm_backward(dh, dh2, dc, act, c_prev, c, dgates)
        if dh2 is not None:
            dh += dh2
        H = dh.shape[1]
        slope, tmp = self.slope[: self.B * 4 * H].view(self.B, -1), self.tmp[: self.B * H].view(self.B, -1)
        return _lstm_backward(dh, dc, act, c_prev, c, dgates, slope, tmp)


class _PlainRead:
    """Eqs (3), (17): r_t = x^_t = x - sigmoid(c_{t-1}) (the x half of [x, x^_t] is hoisted)."""

    def __init__(self, x_flat: Tensor, encin_all: Tensor, R: int, px: Tensor, use_kernels: bool):
        self.x, self.encin_all, self.R, self.px, self.use_kernels = x_flat, encin_all, R, px, use_kernels

    def forward(self, t: int, canvas: Tensor, raw: Tensor, r: Tensor) -> None:
        if self.use_kernels:
            kernels.error_image(self.x, canvas, r)
        else:
            torch.sub(self.x, torch.sigmoid(canvas, out=self.px[0]), out=r)

    def backward(self, t: int, d_r: Tensor, d_raw: Tensor, d_canvas: Tensor) -> None:
        """d_canvas += the gradient reaching c_{t-1} through x^_t."""
        x_hat = self.encin_all[t, :, : self.R]
        if self.use_kernels:
            kernels.error_image_backward(self.x, x_hat, d_r, d_canvas)
            return
        sig = torch.sub(self.x, x_hat, out=self.px[0])  # sigmoid(c_{t-1})
        slope_sig = torch.sub(sig, 1, out=self.px[2]).mul_(sig)  # - sigmoid'(c_{t-1})
        d_canvas.addcmul_(d_r, slope_sig)


class _TorchRead:
    """Eqs (3), (19)-(27) in PyTorch operations: r_t = gamma [F_Y x F_X^T, F_Y x^_t F_X^T]."""

    def __init__(self, attention: _Attention, x_flat: Tensor, x_hat_all: Tensor, lay: _Layout, px: Tensor):
        self.attn, self.x, self.x_hat_all, self.lay, self.px = attention, x_flat, x_hat_all, lay, px
        self.saved: dict[int, tuple] = {}

    def forward(self, t: int, canvas: Tensor, raw: Tensor, r: Tensor) -> None:
        lay, B = self.lay, self.x.shape[0]
        C, H, W = lay.C, lay.H, lay.W
        x_hat = torch.sub(self.x, torch.sigmoid(canvas, out=self.px[0]), out=self.x_hat_all[t])  # (3)
        F_X, F_Y, gamma, saved = self.attn.filters(raw)  # (21)-(26), from h^dec_{t-1}
        F_Xt = F_X.transpose(1, 2)
        x_rows, x_hat_rows = self.x.view(B, C * H, W), x_hat.view(B, C * H, W)
        left = torch.cat([torch.bmm(x_rows, F_Xt), torch.bmm(x_hat_rows, F_Xt)], dim=1)  # [x, x^] F_X^T
        left = left.view(B, 2 * C, H, -1)  # (batch, 2C, B, N)
        glimpse = F_Y[:, None] @ left  # (batch, 2C, N, N): F_Y [x, x^] F_X^T
        torch.mul(glimpse.view(B, lay.R), gamma[:, None], out=r)  # (27)
        self.saved[t] = (F_X, F_Y, gamma, saved, left, glimpse)

    def backward(self, t: int, d_r: Tensor, d_raw: Tensor, d_canvas: Tensor) -> None:
        lay, B = self.lay, self.x.shape[0]
        C, H, W, N, R = lay.C, lay.H, lay.W, lay.read_n, lay.R
        x_hat = self.x_hat_all[t]
        F_X, F_Y, gamma, saved, left, glimpse = self.saved.pop(t)
        d_glimpse = (d_r * gamma[:, None]).view(B, 2 * C, N, N)  # (27)
        dgamma = (d_r * glimpse.view(B, R)).sum(dim=1)
        v = F_Y.transpose(1, 2)[:, None] @ d_glimpse  # (batch, 2C, B, N): F_Y^T dG
        v_x, v_x_hat = v[:, :C].reshape(B, C * H, N), v[:, C:].reshape(B, C * H, N)
        dF_X = torch.bmm(v_x.transpose(1, 2), self.x.view(B, C * H, W))
        dF_X.baddbmm_(v_x_hat.transpose(1, 2), x_hat.view(B, C * H, W))
        dF_Y = torch.bmm(
            d_glimpse.transpose(1, 2).reshape(B, N, 2 * C * N), left.transpose(2, 3).reshape(B, 2 * C * N, H)
        )
        d_x_hat = torch.bmm(v_x_hat, F_X, out=self.px[1].view(B, C * H, W)).view(B, lay.pixels)  # F_Y^T dG F_X
        self.attn.raw_backward(dF_X, dF_Y, dgamma, saved, d_raw)
        sig = torch.sub(self.x, x_hat, out=self.px[0])  # sigmoid(c_{t-1})
        slope_sig = torch.sub(sig, 1, out=self.px[2]).mul_(sig)  # - sigmoid'(c_{t-1})
        d_canvas.addcmul_(d_x_hat, slope_sig)  # (3)


class _KernelRead:
    """Eqs (3), (19)-(27) in one C kernel per step, on the blocked x, canvas and x^."""

    def __init__(self, state: kernels.BlockedAttention, x_blocked: Tensor, x_hat_all: Tensor):
        self.state, self.x, self.x_hat_all = state, x_blocked, x_hat_all

    def forward(self, t: int, canvas: Tensor, raw: Tensor, r: Tensor) -> None:
        self.state.read_forward(t, self.x, canvas, self.x_hat_all[t], raw, r)

    def backward(self, t: int, d_r: Tensor, d_raw: Tensor, d_canvas: Tensor) -> None:
        self.state.read_backward(t, self.x, self.x_hat_all[t], d_r, d_raw, d_canvas)


class _PlainWrite:
    """Eqs (8), (18): c_t = c_{t-1} + L(h^dec_t) (the product is a column block of the fused one)."""

    def forward(self, t: int, raw: Tensor, patch: Tensor, canvas: Tensor) -> None:
        canvas += patch

    def backward(self, t: int, d_canvas: Tensor, d_patch: Tensor, d_raw: Tensor) -> None:
        d_patch.copy_(d_canvas)


class _TorchWrite:
    """Eqs (8), (19)-(26), (28)-(29) in PyTorch operations: c_t = c_{t-1} + F_Y^T w_t F_X / gamma."""

    def __init__(self, attention: _Attention, lay: _Layout, px: Tensor):
        self.attn, self.lay, self.px = attention, lay, px
        self.saved: dict[int, tuple] = {}

    def forward(self, t: int, raw: Tensor, patch_rows: Tensor, canvas: Tensor) -> None:
        lay, B = self.lay, canvas.shape[0]
        C, H, W, N = lay.C, lay.H, lay.W, lay.write_n
        F_X, F_Y, gamma, saved = self.attn.filters(raw)  # (21)-(26), from h^dec_t
        patch = patch_rows.reshape(B, C, N, N).clone()  # (28): w_t (a copy: the product rows are not kept)
        right = torch.bmm(patch.view(B, C * N, N), F_X).view(B, C, N, W)  # w F_X
        if C == 1:
            increment = torch.bmm(F_Y.transpose(1, 2), right.view(B, N, W), out=self.px[1].view(B, H, -1))
        else:
            increment = F_Y.transpose(1, 2)[:, None] @ right
        canvas.addcdiv_(increment.view(B, lay.pixels), gamma[:, None])  # (8) with (29): F_Y^T w F_X / gamma
        self.saved[t] = (F_X, F_Y, gamma, saved, patch, right)

    def backward(self, t: int, d_canvas: Tensor, d_patch: Tensor, d_raw: Tensor) -> None:
        lay, B = self.lay, d_canvas.shape[0]
        C, H, W, N = lay.C, lay.H, lay.W, lay.write_n
        F_X, F_Y, gamma, saved, patch, right = self.saved.pop(t)
        d_u = torch.div(d_canvas, gamma[:, None], out=self.px[0]).view(B, C, H, W)  # gradient of F_Y^T w F_X
        d_right = F_Y[:, None] @ d_u  # (batch, C, N, A)
        d_patch.copy_(torch.bmm(d_right.view(B, C * N, W), F_X.transpose(1, 2)).view(B, C * N * N))
        dF_X = torch.bmm(patch.reshape(B, C * N, N).transpose(1, 2), d_right.view(B, C * N, W))
        dF_Y = torch.bmm(right.transpose(1, 2).reshape(B, N, C * W), d_u.transpose(2, 3).reshape(B, C * W, H))
        dgamma = (right * d_right).sum(dim=(1, 2, 3)).div_(gamma).neg_()
        self.attn.raw_backward(dF_X, dF_Y, dgamma, saved, d_raw)


class _KernelWrite:
    """Eqs (8), (19)-(26), (28)-(29) in one C kernel per step, on the blocked canvas."""

    def __init__(self, state: kernels.BlockedAttention):
        self.state = state

    def forward(self, t: int, raw: Tensor, patch: Tensor, canvas: Tensor) -> None:
        self.state.write_forward(t, raw, patch, canvas)

    def backward(self, t: int, d_canvas: Tensor, d_patch: Tensor, d_raw: Tensor) -> None:
        self.state.write_backward(t, d_canvas, d_patch, d_raw)


class _Recurrence(torch.autograd.Function):
    """Eqs (3)-(8) for t = 1..T over a batch; returns (c_T (batch, C, H, W), mu (T, batch, Z), log_sigma).
    ``y`` (batch, K): a conditional model's one-hot labels, else None."""

    @staticmethod
    def _shapes(lay: _Layout, B: int, P: _Products, blocked: bool) -> dict[str, tuple[int, ...]]:
        T, E, D, Z, R, C = lay.T, lay.E, lay.D, lay.Z, lay.R, lay.C
        shapes = {
            "h_dec_all": (T + 1, B, D),  # h^dec_0 .. h^dec_T
            "c_dec_all": (T + 1, B, D),  # decoder cell states
            "c_enc_all": (T + 1, B, E),
            "encin_all": (T + 1, B, R + E),  # [r_t, h^enc_{t-1}], the encoder's input; row T holds h^enc_T
            "act_enc": (T, B, 4 * E),  # activated gates i, f, g, o
            "act_dec": (T, B, 4 * D),
            "z_all": (T, B, Z),
            "x_hat_all": (T if lay.read_n is not None else 0, B, lay.pixels),  # no read attention: in encin_all
            # used by the backward only (see _WeightGrads)
            "d_proj": (min(_CHUNK, T) + 1, B, lay.cols),
            "d_post": (min(_CHUNK, T) + 1, B, 2 * Z),
            "proj": (2, B, lay.cols),  # the products of h^dec_{t-1} and h^dec_t (forward scratch)
            # scratch space: fresh memory of this size costs a page fault per 4 KiB on every use
            "px": (3, B, lay.pixels),
            "slope": (B * 4 * max(E, D),),
            "tmp": (B * max(E, D),),
            "dh_dec": (B, D),
            "dh_enc": (B, E),
            "dz": (B, Z),
            "d_encin": (B, R + E),
        }
        shapes.update(P.pack_shapes(_packed_matrices(lay, B)))
        if blocked:  # x, x^ and the canvas in blocks of 16 images, and the attention's saved state
            nb, lanes = kernels.blocks(B), kernels.LANES
            shapes["x_hat_all"] = (T, nb, lay.pixels, lanes)
            shapes["blocked"] = (2, nb, lay.pixels, lanes)  # x and the canvas, blocked
            for kind, n in (("read", lay.read_n), ("write", lay.write_n)):
                for name, shape in kernels.BlockedAttention.shapes(T, B, (C, lay.H, lay.W), n, kind).items():
                    shapes[f"{kind}.{name}"] = shape
        return shapes

    @staticmethod
    def _ops(lay: _Layout, x_flat: Tensor, bufs: dict[str, Tensor], use_kernels: bool, blocked: bool):
        """(read, write, lstm, x blocked or None): this pass's implementation of each step operation."""
        B = x_flat.shape[0]
        lstm = _Lstm(use_kernels, bufs, B)
        if blocked:
            states = {
                kind: kernels.BlockedAttention(
                    B, (lay.C, lay.H, lay.W), n,
                    {k.split(".")[1]: v for k, v in bufs.items() if k.startswith(kind + ".")},
                )
                for kind, n in (("read", lay.read_n), ("write", lay.write_n))
            }
            x_blocked = bufs["blocked"][0]
            read = _KernelRead(states["read"], x_blocked, bufs["x_hat_all"])
            return read, _KernelWrite(states["write"]), lstm, x_blocked
        if lay.read_n is None:
            read = _PlainRead(x_flat, bufs["encin_all"], lay.R, bufs["px"], use_kernels)
        else:
            read = _TorchRead(_Attention(lay.read_n, lay.W, lay.H, x_flat), x_flat, bufs["x_hat_all"], lay, bufs["px"])
        if lay.write_n is None:
            write = _PlainWrite()
        else:
            write = _TorchWrite(_Attention(lay.write_n, lay.W, lay.H, x_flat), lay, bufs["px"])
        return read, write, lstm, None

    @staticmethod
    def forward(ctx, model: DRAW, x: Tensor, eps: Tensor, y: Tensor | None, needs_backward: bool, precision: str,
                pool: BufferPool, *params: Tensor):
        # ``params`` are only there so that autograd routes their gradients; the values are read
        # from ``model`` (the same tensors).
        lay = _Layout(model)
        B = x.shape[0]
        T, E, Z, R = lay.T, lay.E, lay.Z, lay.R
        W_hdec, b_hdec, W_encin, W_x = _fused_weights(model, lay)
        x_flat = x.reshape(B, lay.pixels).contiguous()  # (batch, C*H*W)
        new = x.new_empty
        P = _Products(precision, x)
        # The fused CPU kernels (drawnet.kernels): LSTM and error image whenever they load; the
        # attention too when both read and write use it (the paper's model), on blocked images
        # (blocks of 16 images, image index innermost) with its state in buffers.
        use_kernels = kernels.usable(x)
        blocked = use_kernels and lay.read_n is not None and lay.write_n is not None
        key, bufs = pool.take(_Recurrence._shapes(lay, B, P, blocked), x)
        P.bufs = bufs
        h_dec_all, c_dec_all, c_enc_all = bufs["h_dec_all"], bufs["c_dec_all"], bufs["c_enc_all"]
        encin_all, act_enc, act_dec, z_all = bufs["encin_all"], bufs["act_enc"], bufs["act_dec"], bufs["z_all"]
        read, write, lstm, x_blocked = _Recurrence._ops(lay, x_flat, bufs, use_kernels, blocked)
        W_hdec_t, W_encin_t = P.weight(W_hdec.t(), "hdec_t"), P.weight(W_encin.t(), "encin_t")
        W_write_t = P.weight(W_hdec.t()[:, lay.write_cols], "write_t")  # h^dec_T feeds only the last write
        W_post_t, b_post = P.weight(model.posterior.weight.t(), "post_t"), model.posterior.bias
        W_z_t = P.weight(model.decoder.weight_ih[:, lay.dec_z].t(), "z_t")
        mu_ls = new(T, B, 2 * Z)  # (1), (2): [mu_t, log sigma_t], returned

        h_dec_all[0] = model.h_dec0
        c_dec_all[0] = model.c_dec0
        c_enc_all[0] = model.c_enc0
        encin_all[0, :, R:] = model.h_enc0
        canvas = model.canvas0.reshape(1, lay.pixels).expand(B, -1).clone()  # c_0, (batch, C*H*W)
        # hoisted x columns of eq. (17)
        x_part = P.mm(new(B, 4 * E), x_flat, P.weight(W_x.t(), "x_t")) if W_x is not None else None
        y_dec = None
        if y is not None:  # the label's constant parts of the gates of eqs (5) and (7)
            y_enc = torch.mm(y, model.encoder.weight_ih[:, lay.enc_y].t())  # (batch, 4E)
            x_part = y_enc if x_part is None else x_part.add_(y_enc)
            y_dec = torch.mm(y, model.decoder.weight_ih[:, lay.Z :].t())  # (batch, 4D)
        if blocked:
            kernels.to_blocked(x_flat, x_blocked)
            canvas_rows, canvas = canvas, kernels.to_blocked(canvas, bufs["blocked"][1])  # c_0, blocked

        proj_buf = bufs["proj"]
        proj = P.mm(proj_buf[0], h_dec_all[0], W_hdec_t, bias=b_hdec)  # products of h^dec_0
        for t in range(T):
            read.forward(t, canvas, proj[:, lay.rp], encin_all[t, :, :R])  # (3), (4): r_t from h^dec_{t-1}
            # (5): encoder gates = [r_t, h^enc_{t-1}] W + h^dec_{t-1} W' (+ x W'' without read attention)
            gates = P.mm(act_enc[t], encin_all[t], W_encin_t, add=proj[:, lay.enc])
            if x_part is not None:
                gates += x_part
            h_enc = encin_all[t + 1, :, R:]
            lstm.forward(gates, c_enc_all[t], c_enc_all[t + 1], h_enc)
            P.mm(mu_ls[t], h_enc, W_post_t, bias=b_post)  # (1), (2)
            mu, log_sigma = mu_ls[t].split(Z, dim=1)
            torch.addcmul(mu, torch.exp(log_sigma), eps[t], out=z_all[t])  # (6)
            gates = P.mm(act_dec[t], z_all[t], W_z_t, add=proj[:, lay.dec])  # (7)
            if y_dec is not None:
                gates += y_dec
            lstm.forward(gates, c_dec_all[t], c_dec_all[t + 1], h_dec_all[t + 1])
            if t + 1 < T:  # the products of h^dec_t: the write of step t, the read and gates of t + 1
                proj = P.mm(proj_buf[(t + 1) % 2], h_dec_all[t + 1], W_hdec_t, bias=b_hdec)
            else:  # h^dec_T only feeds the last write
                cols = lay.write_cols
                proj = proj_buf[T % 2]
                P.mm(proj[:, cols], h_dec_all[T], W_write_t, bias=b_hdec[cols])
            write.forward(t, proj[:, lay.wp], proj[:, lay.wo], canvas)  # (8): c_t = c_{t-1} + write(h^dec_t)

        if blocked:
            canvas = kernels.from_blocked(canvas, canvas_rows)  # c_T, rows again
        if not needs_backward:
            pool.give_back(key, bufs)
        else:
            ctx.model, ctx.lay, ctx.key, ctx.bufs, ctx.products, ctx.pool = model, lay, key, bufs, P, pool
            ctx.read, ctx.write, ctx.lstm, ctx.blocked = read, write, lstm, blocked
            ctx.y = y
            ctx.clip = model.attention_clip  # TrainConfig.attention_grad_clip (ours): None, or rows to clip
            # save_for_backward also makes autograd check that the buffers were not reused meanwhile
            ctx.save_for_backward(
                x_flat, h_dec_all, c_dec_all, c_enc_all, encin_all, act_enc, act_dec, mu_ls, z_all, bufs["x_hat_all"]
            )
        return canvas.view(x.shape), mu_ls[:, :, :Z], mu_ls[:, :, Z:]

    @staticmethod
    def backward(ctx, d_canvas: Tensor, d_mu: Tensor, d_log_sigma: Tensor):
        model, lay = ctx.model, ctx.lay
        x_flat, h_dec_all, c_dec_all, c_enc_all, encin_all, act_enc, act_dec, mu_ls, z_all, _ = ctx.saved_tensors
        T, E, D, Z, R, C = lay.T, lay.E, lay.D, lay.Z, lay.R, lay.C
        H, W = lay.H, lay.W
        B = x_flat.shape[0]
        W_hdec_f, _, W_encin, W_x = _fused_weights(model, lay)
        P, read, write, lstm, bufs = ctx.products, ctx.read, ctx.write, ctx.lstm, ctx.bufs
        W_hdec, W_write = P.weight(W_hdec_f, "hdec"), P.weight(W_hdec_f[lay.write_cols], "write")
        W_encin = P.weight(W_encin, "encin")
        W_post, W_z = P.weight(model.posterior.weight, "post"), P.weight(model.decoder.weight_ih[:, lay.dec_z], "z")
        new = x_flat.new_empty

        # d_proj[k]: gradient w.r.t. the fused product of h^dec_k (its encoder, decoder and read
        # columns belong to step k + 1, its write columns to step k); d_post[k]: gradient w.r.t.
        # [mu_k, log sigma_k]. Only a chunk of rows lo..hi is kept; once complete, rows go into the
        # weight gradients as one product per weight (see _WeightGrads).
        acc = _WeightGrads(lay, B, bufs, x_flat, h_dec_all, encin_all, z_all, W_x is not None, P)
        y, clip = ctx.y, ctx.clip
        # dL/dc_T (autograd gives 0 for unused outputs, possibly as an expanded tensor)
        d_canvas = d_canvas.reshape(B, lay.pixels).clone(memory_format=torch.contiguous_format)
        if ctx.blocked:  # dL/dc_T, blocked like the canvas
            d_canvas = kernels.to_blocked(d_canvas, x_flat.new_empty(kernels.blocks(B), lay.pixels, kernels.LANES))
        dc_dec = x_flat.new_zeros(B, D)
        dc_enc = x_flat.new_zeros(B, E)
        d_encin_next = None  # gradient w.r.t. the encoder input of step t + 1
        for t in reversed(range(T)):
            if t < acc.lo:
                acc.next_chunk()
            row_next, row, d_post = acc.d_proj_row(t + 1), acc.d_proj_row(t), acc.d_post_row(t)
            # (8): c_t = c_{t-1} + write(h^dec_t); d_canvas is dL/dc_t here.
            write.backward(t, d_canvas, row_next[:, lay.wo], row_next[:, lay.wp])
            if clip is not None and lay.write_n is not None:  # before it flows on (attention.GradientClip)
                clip.clip_(row_next[:, lay.wp])
            # The product of h^dec_t served the write of step t and (t < T) the reads and gates of step t + 1.
            if t + 1 == T:
                dh_dec = P.mm(bufs["dh_dec"], row_next[:, lay.write_cols], W_write)
            else:
                dh_dec = P.mm(bufs["dh_dec"], row_next, W_hdec)
            # (7): decoder LSTM step; its gate gradients are the decoder columns of d_proj[t] (row).
            d_gates = row[:, lay.dec]
            dc_dec = lstm.backward(dh_dec, None, dc_dec, act_dec[t], c_dec_all[t], c_dec_all[t + 1], d_gates)
            dz = P.mm(bufs["dz"], d_gates, W_z)  # (batch, Z)
            # (6): z = mu + exp(log sigma) eps; the loss also depends on mu and log sigma directly (KL).
            mu = mu_ls[t, :, :Z]
            torch.add(d_mu[t], dz, out=d_post[:, :Z])
            torch.addcmul(d_log_sigma[t], dz, z_all[t] - mu, out=d_post[:, Z:])  # exp(log sigma) eps = z - mu
            # (1), (2), then (5): the encoder LSTM step, also reached by the next step's encoder input
            dh_enc = P.mm(bufs["dh_enc"], d_post, W_post)
            d_gates = row[:, lay.enc]
            dh_next = d_encin_next[:, R:] if d_encin_next is not None else None
            dc_enc = lstm.backward(dh_enc, dh_next, dc_enc, act_enc[t], c_enc_all[t], c_enc_all[t + 1], d_gates)
            d_encin_next = P.mm(bufs["d_encin"], d_gates, W_encin)  # (batch, R + E)
            # (3)-(4): the gradient reaching the read's window and, through x^_t, c_{t-1}
            read.backward(t, d_encin_next[:, :R], row[:, lay.rp], d_canvas)
            if clip is not None and lay.read_n is not None:
                clip.clip_(row[:, lay.rp])

        # Gradients w.r.t. the learned initial state (broadcast over the batch).
        dh_dec0 = P.mm(new(B, D), acc.d_proj_row(0), W_hdec)
        dh_enc0 = d_encin_next[:, R:]
        acc.flush(0, acc.hi)
        dW_hdec, dW_encin, dW_z, dW_post = (P.gradient(g) for g in (acc.dW_hdec, acc.dW_encin, acc.dW_z, acc.dW_post))
        db_hdec, db_post = acc.db_hdec, acc.db_post

        # Back to the model's own parameters (in the order of _param_list).
        in_size = model.encoder.weight_ih.shape[1]
        dW_ih_enc = new(4 * E, in_size)
        dW_ih_enc[:, in_size - D :] = dW_hdec[lay.enc]
        if W_x is None:
            dW_ih_enc[:, :R] = dW_encin[:, :R]
        else:  # the hoisted x columns: one product with the sum over t of the gate gradients
            torch.mm(acc.d_enc_sum.t(), x_flat, out=dW_ih_enc[:, : lay.pixels])
            dW_ih_enc[:, lay.pixels : 2 * lay.pixels] = dW_encin[:, :R]
        dW_ih_dec = dW_z
        if y is not None:  # the hoisted label columns, as the hoisted x columns
            torch.mm(acc.d_enc_sum.t(), y, out=dW_ih_enc[:, lay.enc_y])
            dW_ih_dec = torch.cat([dW_z, torch.mm(acc.d_dec_sum.t(), y)], dim=1)
        grads = [
            dW_ih_enc, dW_encin[:, R:], db_hdec[lay.enc], db_hdec[lay.enc].clone(),
            dW_ih_dec, dW_hdec[lay.dec], db_hdec[lay.dec], db_hdec[lay.dec].clone(),
            dW_post, db_post, dW_hdec[lay.wo], db_hdec[lay.wo],
        ]  # fmt: skip
        if model.read_params is not None:
            grads += [dW_hdec[lay.rp], db_hdec[lay.rp]]
        if model.write_params is not None:
            grads += [dW_hdec[lay.wp], db_hdec[lay.wp]]
        grads += [
            (kernels.blocked_sum(d_canvas, B) if ctx.blocked else d_canvas.sum(dim=0)).view(C, H, W),
            dh_enc0.sum(dim=0),
            dc_enc.sum(dim=0),  # now dL/dc^enc_0
            dh_dec0.sum(dim=0),
            dc_dec.sum(dim=0),  # now dL/dc^dec_0
        ]
        ctx.pool.give_back(ctx.key, ctx.bufs)
        ctx.bufs = None
        return (None, None, None, None, None, None, None, *grads)


def noise_for(model: DRAW, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The (T, batch, Z) noise of eq. (6), drawn exactly as the readable path draws it step by step."""
    B = x.shape[0]
    return torch.stack([noise_like((B, model.config.z_size), x, generator) for _ in range(model.config.T)])


# The DRAWConfig fields this file implements, with the values it accepts (None: any value). A field
# missing here (one added to DRAWConfig later) is not implemented: unsupported() names it, and
# drawnet.engine then runs the readable model instead.
IMPLEMENTS: dict[str, tuple | None] = {
    "image_shape": None, "T": None, "enc_size": None, "dec_size": None, "z_size": None,
    "read_n": None, "write_n": None, "attention_sigma_init": None, "canvas_init": None,  # c_0 is a parameter
    "layer_norm": (False,),  # the layer-normalised LSTM runs in the readable model only
    "conditional": None, "num_classes": None,
}  # fmt: skip


def unsupported(model: DRAW) -> list[str]:
    """Why this file cannot run ``model`` ("field=value" for each config field it does not implement,
    or the parameter dtypes); empty when it can."""
    why = []
    for f in dataclasses.fields(model.config):
        value = getattr(model.config, f.name)
        if f.name not in IMPLEMENTS or (IMPLEMENTS[f.name] is not None and value not in IMPLEMENTS[f.name]):
            why.append(f"{f.name}={value!r}")
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        why.append(f"parameters of dtypes {sorted(map(str, dtypes))} (one floating dtype needed)")
    return why


def supports(model: DRAW, x: Tensor | None = None, noise: Tensor | None = None) -> bool:
    """Whether this file handles ``model`` (and the images ``x`` and ``noise`` of a loss).

    The config fields of :data:`IMPLEMENTS`, floating-point parameters of one dtype, images of that
    dtype, and no gradient wanted for the images or the noise (the hand-written backward computes
    parameter gradients only).
    """
    if unsupported(model):
        return False
    dtype = next(model.parameters()).dtype
    if x is not None and (x.dtype != dtype or x.requires_grad):
        return False
    return noise is None or not noise.requires_grad


def forward(
    model: DRAW, x: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None,
    precision: str = "fp32", pool: BufferPool | None = None, labels: Tensor | None = None,
):
    """(c_T logits (batch, C, H, W), mu (T, batch, Z), log sigma (T, batch, Z)), differentiable.

    The same values as ``model.forward(x, noise=noise, labels=labels)``'s canvas, mu and log_sigma;
    ``noise`` is drawn as the readable path would draw it when not given. ``pool`` keeps the pass's
    buffers for the next pass (an engine passes its own); without one they are fresh.
    """
    if noise is None:
        noise = noise_for(model, x, generator)
    expected = (model.config.T, x.shape[0], model.config.z_size)
    if tuple(noise.shape) != expected:
        raise ValueError(f"noise must have shape (T, batch, z_size) = {expected}, got {tuple(noise.shape)}")
    why = unsupported(model)
    if why:
        raise ValueError(f"drawnet.fast does not implement {'; '.join(why)}; use model.loss(x) (the readable model)")
    if not supports(model, x, noise):
        raise ValueError(
            "drawnet.fast computes parameter gradients only, in one floating dtype; for gradients with "
            "respect to the images or the noise, or mixed dtypes, use model.loss(x) (the readable model)"
        )
    y = model.label_input(labels, x.shape[0], x)
    params = _param_list(model)
    needs_backward = torch.is_grad_enabled() and any(p.requires_grad for p in params)
    pool = pool if pool is not None else BufferPool()
    return _Recurrence.apply(model, x, noise, y, needs_backward, precision, pool, *params)


@torch.no_grad()
def generate(
    model: DRAW, n: int, generator: torch.Generator | None = None, precision: str = "fp32",
    pool: BufferPool | None = None, labels: Tensor | None = None,
):
    """Eqs (13)-(16) as in ``model.generate``: returns (canvases sigma(c~_t) (T, n, C, H, W), write windows);
    a conditional model draws the classes ``labels`` (n,)."""
    why = unsupported(model)
    if why:
        raise ValueError(
            f"drawnet.fast does not implement {'; '.join(why)}; use model.generate(n) (the readable model)"
        )
    cfg = model.config
    C, H, W = cfg.image_shape
    T, D, N = cfg.T, cfg.dec_size, cfg.write_n
    pixels = C * H * W
    dec = model.decoder
    like = model.h_dec0
    bias = dec.bias_ih + dec.bias_hh
    P = _Products(precision, like)
    attn = _Attention(N, W, H, like) if N is not None else None
    use_kernels = kernels.usable(like)
    lstm_forward = kernels.lstm_forward if use_kernels else _lstm_forward
    # Scratch buffers, kept for the next call like the training pass's (8 MiB of fresh gates for
    # 128 samples cost 3-4 ms of page faults per call).
    shapes = {
        "eps": (T, n, cfg.z_size), "h": (min(_CHUNK, T), n, D), "gates": (min(_CHUNK, T), n, 4 * D),
        "c": (n, D), "tanh_c": (n, D),
    }  # fmt: skip
    # With the bf16 kernel, one product per step of [z~_t, h_{t-1}] (kept side by side in "zh") and
    # [W_z; W_hh] replaces the hoisted z product of _CHUNK steps plus the per-step h product: the
    # hoisted one writes (and the steps re-read) 8 MiB of gates per 16 steps for 128 samples and runs
    # memory-bound (140 against 194 GFLOP/s on one core, bench/RESULTS.md), while one step's gates
    # stay in cache. float32 keeps the hoisted product, which MKL runs well.
    concat = P.packed
    if concat:
        shapes["zh"] = (T + 1, n, cfg.z_size + D)
        shapes["gates"] = (n, 4 * D)
        del shapes["h"]
    blocked = use_kernels and attn is not None  # the canvas blocked, for the blocked write kernel
    if blocked:
        shapes["canvas"] = (kernels.blocks(n), pixels, kernels.LANES)
        for name, shape in kernels.BlockedAttention.shapes(1, n, (C, H, W), N, "write").items():
            shapes[f"write.{name}"] = shape
    recurrent = {"zh_t": (cfg.z_size + D, 4 * D)} if concat else {"ih_t": (cfg.z_size, 4 * D), "hh_t": (D, 4 * D)}
    shapes.update(P.pack_shapes(recurrent | {
        "out_t": (D, model.write_out.out_features), "params_t": (D, 5),
    }))  # fmt: skip
    pool = pool if pool is not None else BufferPool()
    key, bufs = pool.take(shapes, like)
    P.bufs = bufs
    if concat:
        W_zh_t = P.weight(torch.cat([dec.weight_ih[:, : cfg.z_size], dec.weight_hh], dim=1).t(), "zh_t")
    else:
        W_ih_t, W_hh_t = P.weight(dec.weight_ih[:, : cfg.z_size].t(), "ih_t"), P.weight(dec.weight_hh.t(), "hh_t")
    y = model.label_input(labels, n, like)
    y_dec = None if y is None else torch.mm(y, dec.weight_ih[:, cfg.z_size :].t())  # (n, 4D): the label's part
    W_out_t = P.weight(model.write_out.weight.t(), "out_t")
    W_params_t = P.weight(model.write_params.weight.t(), "params_t") if N is not None else None
    # (13): the same noise, drawn in the same order, as the readable path
    eps = torch.stack([noise_like((n, cfg.z_size), like, generator) for _ in range(T)], out=bufs["eps"])  # (T, n, Z)
    h = model.h_dec0.expand(n, D)
    c = bufs["c"].copy_(model.c_dec0.expand(n, D))
    tanh_c = bufs["tanh_c"]
    canvas = model.canvas0.reshape(1, pixels).expand(n, -1).clone()
    canvases = like.new_empty(T, n, pixels)
    windows = []
    if blocked:
        write_bufs = {k.split(".")[1]: v for k, v in bufs.items() if k.startswith("write.")}
        state = kernels.BlockedAttention(n, (C, H, W), N, write_bufs)
        canvas = kernels.to_blocked(canvas, bufs["canvas"])
    if concat:
        Z = cfg.z_size
        zh = bufs["zh"]  # zh[t] = [z~_t, h_{t-1}]: the LSTM of step t writes h_t into zh[t + 1]
        zh[:T, :, :Z].copy_(eps)
        zh[0, :, Z:].copy_(h)
    else:
        h_chunk, gates_chunk = bufs["h"], bufs["gates"]
    for start in range(0, T, _CHUNK):
        k = min(_CHUNK, T - start)
        if concat:
            gates = bufs["gates"]
            for t in range(start, start + k):
                P.mm(gates, zh[t], W_zh_t, add=y_dec, bias=bias)  # (14), with [z~_t, y] for a conditional model
                lstm_forward(gates, c, c, zh[t + 1, :, Z:], tanh_c)
            rows = zh[start + 1 : start + k + 1].view(k * n, Z + D)[:, Z:]  # h of these k steps
        else:
            # The decoder's input products of k steps in one product (z~ does not depend on the recurrence).
            gates = gates_chunk[:k]
            P.mm(gates.view(k * n, 4 * D), eps[start : start + k].view(k * n, -1), W_ih_t, bias=bias)
            if y_dec is not None:
                gates += y_dec  # [z~_t, y] of eq. (14) for a conditional model
            for j in range(k):
                P.mm(gates[j], h, W_hh_t, add=gates[j])  # (14)
                lstm_forward(gates[j], c, c, h_chunk[j], tanh_c)
                h = h_chunk[j]
            rows = h_chunk[:k].view(k * n, D)
        # The writes of these k steps at once: the canvas never feeds back into the decoder.
        if attn is None and use_kernels:
            out = P.mm(like.new_empty(k * n, pixels), rows, W_out_t)  # (18); its bias is added with the canvas
            for j in range(k):  # (15), and sigma(c~_t), the mean of D(X | c~_t) as the paper shows
                kernels.accumulate_sigmoid(canvas, out[j * n : (j + 1) * n], model.write_out.bias, canvases[start + j])
            continue
        out = P.mm(like.new_empty(k * n, model.write_out.out_features), rows, W_out_t, bias=model.write_out.bias)
        if attn is None:
            increments = out.view(k, n, pixels)  # (18)
        else:
            raw = P.mm(like.new_empty(k * n, 5), rows, W_params_t, bias=model.write_params.bias)  # (21)
            windows.append(window_from_raw(raw, N, W, H))  # (22)-(24), as model.generate returns them
        if blocked:
            for j in range(k):
                step = slice(j * n, (j + 1) * n)
                state.write_forward(0, raw[step], out[step], canvas)  # (15), (19)-(29)
                kernels.from_blocked(canvas, canvases[start + j], sigmoid=True)
            continue
        if attn is not None:
            F_X, F_Y, gamma, _ = attn.filters(raw)  # (19)-(20), (25)-(26)
            patch = out.view(k * n, C, N, N)  # (28)
            increments = (F_Y.transpose(1, 2)[:, None] @ patch @ F_X[:, None]) / gamma[:, None, None, None]  # (29)
            increments = increments.view(k, n, pixels)
        for j in range(k):
            canvas += increments[j]  # (15)
            torch.sigmoid(canvas, out=canvases[start + j])  # the mean of D(X | c~_t), as the paper shows
    pool.give_back(key, bufs)
    window = None if attn is None else Window(*(torch.cat(field).view(T, n) for field in zip(*windows, strict=True)))
    return canvases.view(T, n, C, H, W), window
