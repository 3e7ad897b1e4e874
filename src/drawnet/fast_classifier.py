"""The optimised glimpse recurrence of the classifier (section 4.1): same mathematics as
:class:`drawnet.classifier.AttentionClassifier`, a hand-written backward, the fused CPU kernels.

The readable model runs each glimpse as about forty small PyTorch operations (a filterbank, two
batched products, the LSTM cell) and autograd records all of them; on one core it trains at about
940 images a second (bench/RESULTS.md). Here the whole recurrence of T glimpses is one
:class:`torch.autograd.Function`, as :mod:`drawnet.fast` does for DRAW:

* each glimpse (eqs 21-27, image only) and its gradient is one call of the C read kernel on
  blocks of 16 images (:meth:`drawnet.kernels.BlockedAttention.glimpse_forward`);
* each LSTM cell and its gradient is one C kernel call;
* the products of h_{t-1} with the recurrent weights and with the window's linear layer (eq. 21)
  are one product against stacked weights, and the weight gradients are one product over all
  T x batch rows at the end instead of one per step;
* with ``precision="bf16"`` the matrix products take bfloat16 inputs and sum in float32
  (drawnet.fast._Products); the filterbanks, the glimpses, the LSTM cell states and the loss stay
  float32.

Only the final hidden state h_T comes out of the Function; the softmax layer and the cross-entropy
after it stay in PyTorch. tests/test_fast_classifier.py checks the logits and the gradient of
every parameter against the readable model; bench/classifier_speed.py measures the speed.
It runs on CPU in float32 with drawnet's kernels loaded; anywhere else :func:`supported` is false
and the readable model is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import kernels
from .fast import BufferPool, _Products

if TYPE_CHECKING:
    from .classifier import AttentionClassifier


def supported(model: AttentionClassifier, x: Tensor | None = None) -> bool:
    """Whether this path runs ``model`` (on ``x``): CPU, float32, drawnet's kernels loaded."""
    param = next(model.parameters())
    like = param if x is None else x
    return all(t.dtype == torch.float32 and kernels.usable(t) for t in (param, like))


def _params(model: AttentionClassifier) -> list[Tensor]:
    """The parameters the recurrence uses, in the order of the gradients it returns."""
    lstm, read = model.lstm, model.read_params
    return [lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh, read.weight, read.bias, model.h0, model.c0]


class _Glimpses(torch.autograd.Function):
    """The T glimpses and LSTM steps of the classifier over a batch; returns h_T (batch, hidden)."""

    @staticmethod
    def _shapes(model: AttentionClassifier, B: int, P: _Products) -> dict[str, tuple[int, ...]]:
        cfg = model.config
        T, Hd, (C, H, W), n = cfg.glimpses, cfg.hidden_size, cfg.image_shape, cfg.read_n
        R, cols, nb = C * n * n, 4 * Hd + 5, kernels.blocks(B)
        shapes = {
            "h_all": (T + 1, B, Hd),  # h_0 .. h_T
            "c_all": (T + 1, B, Hd),
            "act": (T, B, 4 * Hd),  # activated gates i, f, g, o
            "r_all": (T, B, R),  # gamma times the glimpses, the LSTM's inputs (eq. 27)
            "proj": (B, cols),  # the product of h_{t-1}: [recurrent gate part | raw window of eq. (21)]
            "x_blocked": (nb, C * H * W, kernels.LANES),
            "d_proj": (T, B, cols),  # backward: gradients w.r.t. each step's proj
            "dh": (B, Hd),
            "d_r": (B, R),
        }
        for name, shape in kernels.BlockedAttention.shapes(T, B, (C, H, W), n, "glimpse").items():
            shapes[f"read.{name}"] = shape
        shapes.update(P.pack_shapes({"h_t": (Hd, cols), "ih_t": (R, 4 * Hd), "h": (cols, Hd), "ih": (4 * Hd, R),
                                     "grad": (T * B, cols)}))
        return shapes

    @staticmethod
    def _weights(model: AttentionClassifier) -> tuple[Tensor, Tensor]:
        """[W_hh; W_read] (4H + 5, H) and its bias [b_ih + b_hh; b_read]: everything that multiplies h_{t-1}."""
        lstm, read = model.lstm, model.read_params
        return torch.cat([lstm.weight_hh, read.weight]), torch.cat([lstm.bias_ih + lstm.bias_hh, read.bias])

    @staticmethod
    def forward(ctx, model: AttentionClassifier, x: Tensor, needs_backward: bool, precision: str, pool: BufferPool,
                *params: Tensor):
        # ``params`` are only there so that autograd routes their gradients; the values are read
        # from ``model`` (the same tensors).
        cfg = model.config
        T, Hd, (C, H, W), n = cfg.glimpses, cfg.hidden_size, cfg.image_shape, cfg.read_n
        B = x.shape[0]
        P = _Products(precision, x)
        key, bufs = pool.take(_Glimpses._shapes(model, B, P), x)
        P.bufs = bufs
        h_all, c_all, act, r_all, proj = bufs["h_all"], bufs["c_all"], bufs["act"], bufs["r_all"], bufs["proj"]
        read = kernels.BlockedAttention(
            B, (C, H, W), n, {k.split(".")[1]: v for k, v in bufs.items() if k.startswith("read.")}
        )
        W_h, b_h = _Glimpses._weights(model)
        W_h_t, W_ih_t = P.weight(W_h.t(), "h_t"), P.weight(model.lstm.weight_ih.t(), "ih_t")
        x_blocked = kernels.to_blocked(x.reshape(B, C * H * W).contiguous(), bufs["x_blocked"])
        h_all[0] = model.h0  # learned initial state, the same for every image
        c_all[0] = model.c0
        for t in range(T):
            P.mm(proj, h_all[t], W_h_t, bias=b_h)  # W_hh h_{t-1} + b, and eq. (21): the window from h_{t-1}
            read.glimpse_forward(t, x_blocked, proj[:, 4 * Hd :], r_all[t])  # (22)-(27)
            gates = P.mm(act[t], r_all[t], W_ih_t, add=proj[:, : 4 * Hd])  # the LSTM's gates
            kernels.lstm_forward(gates, c_all[t], c_all[t + 1], h_all[t + 1])
        h_T = h_all[T].clone()  # the buffers go back to the pool
        if not needs_backward:
            pool.give_back(key, bufs)
        else:
            ctx.model, ctx.key, ctx.bufs, ctx.products, ctx.pool, ctx.read = model, key, bufs, P, pool, read
            # save_for_backward also makes autograd check that these buffers (not the read's saved
            # state, which comes from the same set) were not reused meanwhile
            ctx.save_for_backward(h_all, c_all, act, r_all, x_blocked)
        return h_T

    @staticmethod
    @once_differentiable
    def backward(ctx, d_h_T: Tensor):
        if ctx.bufs is None:
            raise RuntimeError("drawnet.fast_classifier: the backward of a pass runs once (its buffers are reused)")
        model, P, bufs, read = ctx.model, ctx.products, ctx.bufs, ctx.read
        h_all, c_all, act, r_all, x_blocked = ctx.saved_tensors
        T, Hd = model.config.glimpses, model.config.hidden_size
        B, R, cols = h_all.shape[1], r_all.shape[2], 4 * Hd + 5
        W_h_f, _ = _Glimpses._weights(model)
        W_h, W_ih = P.weight(W_h_f, "h"), P.weight(model.lstm.weight_ih, "ih")
        d_proj, d_r = bufs["d_proj"], bufs["d_r"]
        dh = d_h_T.contiguous()  # dL/dh_t, from the softmax layer for t = T (the kernels only read it)
        dc = h_all.new_zeros(B, Hd)  # dL/dc_t
        for t in reversed(range(T)):
            d_gates = d_proj[t, :, : 4 * Hd]
            dc = kernels.lstm_backward(dh, None, dc, act[t], c_all[t], c_all[t + 1], d_gates)
            P.mm(d_r, d_gates, W_ih)  # dL/dr_t
            read.glimpse_backward(t, x_blocked, d_r, d_proj[t, :, 4 * Hd :])  # dL/d raw_t
            dh = P.mm(bufs["dh"], d_proj[t], W_h)  # dL/dh_{t-1}: through the gates and the window
        # Weight gradients: one product over all T x batch rows.
        rows = d_proj.view(T * B, cols)
        dW_h, dW_ih = P.accumulator(cols, Hd, rows), P.accumulator(4 * Hd, R, rows)
        P.accumulate(dW_h, rows, h_all[:T].reshape(T * B, Hd))
        P.accumulate(dW_ih, rows[:, : 4 * Hd], r_all.view(T * B, R))
        dW_h, dW_ih = P.gradient(dW_h), P.gradient(dW_ih)
        db = rows.sum(dim=0)
        grads = [
            dW_ih, dW_h[: 4 * Hd], db[: 4 * Hd], db[: 4 * Hd].clone(), dW_h[4 * Hd :], db[4 * Hd :],
            dh.sum(dim=0), dc.sum(dim=0),  # the learned h_0 and c_0, broadcast over the batch
        ]  # fmt: skip
        ctx.pool.give_back(ctx.key, ctx.bufs)
        ctx.bufs = None
        return (None, None, None, None, None, *grads)


def final_state(
    model: AttentionClassifier, x: Tensor, *, precision: str = "fp32", pool: BufferPool | None = None
) -> Tensor:
    """h_T (batch, hidden) after the T glimpses of ``x`` (batch, C, H, W), as the readable forward
    computes it; differentiable w.r.t. the model's parameters. Needs :func:`supported`."""
    if not supported(model, x):
        raise ValueError("drawnet.fast_classifier runs float32 models on CPU with drawnet's kernels only")
    model.check_input(x)
    params = _params(model)
    needs_backward = torch.is_grad_enabled() and any(p.requires_grad for p in params)
    pool = pool if pool is not None else BufferPool()
    return _Glimpses.apply(model, x.contiguous(), needs_backward, precision, pool, *params)


def logits(model: AttentionClassifier, x: Tensor, *, precision: str = "fp32", pool: BufferPool | None = None) -> Tensor:
    """The classifier's logits for ``x``: this path where :func:`supported`, else the readable model."""
    if not supported(model, x):
        return model(x).logits
    return model.classify(final_state(model, x, precision=precision, pool=pool))
