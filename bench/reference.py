"""A plain eager DRAW, the baseline of bench/speed.py.

Written the way a straightforward PyTorch implementation is written: nn.LSTMCell, nn.Linear, a
Python loop over the T steps, autograd for the backward pass, no fusion and no hoisting. It
computes the same equations as drawnet (arXiv:1502.04623, eqs 3-29, with drawnet's decisions:
1-indexed filter grid, learned initial states, KL constant -T*Z/2) and has the same parameters,
so ``load_drawnet_state`` can copy a drawnet model's weights in and bench/speed.py checks that both
give the same loss before timing them. It imports nothing from drawnet on purpose: it is the fixed
yardstick that drawnet's speed is measured against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def filterbank(g: Tensor, delta: Tensor, sigma2: Tensor, n: int, size: int) -> Tensor:
    """Eqs (19)-(20), (25)-(26) for one axis: (batch, n, size), rows summing to 1."""
    i = torch.arange(1, n + 1, dtype=g.dtype)
    mu = g[:, None] + (i - n / 2 - 0.5) * delta[:, None]  # (batch, n)
    a = torch.arange(1, size + 1, dtype=g.dtype)
    f = torch.exp(-((a - mu[:, :, None]) ** 2) / (2 * sigma2[:, None, None]))
    return f / f.sum(dim=2, keepdim=True).clamp_min(1e-8)


class ReferenceDRAW(nn.Module):
    def __init__(self, image_shape=(1, 28, 28), T=64, enc_size=256, dec_size=256, z_size=100, read_n=2, write_n=5):
        super().__init__()
        C, H, W = image_shape
        self.image_shape, self.T, self.z_size = tuple(image_shape), T, z_size
        self.read_n, self.write_n = read_n, write_n
        read_size = 2 * C * (H * W if read_n is None else read_n**2)
        write_size = C * (H * W if write_n is None else write_n**2)
        self.encoder = nn.LSTMCell(read_size + dec_size, enc_size)
        self.decoder = nn.LSTMCell(z_size, dec_size)
        self.posterior = nn.Linear(enc_size, 2 * z_size)
        self.write_out = nn.Linear(dec_size, write_size)
        self.read_params = nn.Linear(dec_size, 5) if read_n is not None else None
        self.write_params = nn.Linear(dec_size, 5) if write_n is not None else None
        self.canvas0 = nn.Parameter(torch.zeros(C, H, W))
        self.h_enc0 = nn.Parameter(torch.zeros(enc_size))
        self.c_enc0 = nn.Parameter(torch.zeros(enc_size))
        self.h_dec0 = nn.Parameter(torch.zeros(dec_size))
        self.c_dec0 = nn.Parameter(torch.zeros(dec_size))

    def load_drawnet_state(self, state_dict: dict[str, Tensor]) -> None:
        """Copy the weights of a drawnet.DRAW with the same configuration (same parameter names)."""
        self.load_state_dict(state_dict)

    def window(self, layer: nn.Linear, h: Tensor, n: int):
        C, H, W = self.image_shape
        gx_, gy_, log_sigma2, log_delta, log_gamma = layer(h).unbind(1)
        gx = (W + 1) / 2 * (gx_ + 1)
        gy = (H + 1) / 2 * (gy_ + 1)
        delta = (max(W, H) - 1) / (n - 1) * torch.exp(log_delta)
        sigma2 = torch.exp(log_sigma2)
        F_X = filterbank(gx, delta, sigma2, n, W)
        F_Y = filterbank(gy, delta, sigma2, n, H)
        return F_X, F_Y, torch.exp(log_gamma)

    def read(self, x: Tensor, x_hat: Tensor, h_dec: Tensor) -> Tensor:
        B = x.shape[0]
        if self.read_n is None:
            return torch.cat([x.reshape(B, -1), x_hat.reshape(B, -1)], dim=1)
        F_X, F_Y, gamma = self.window(self.read_params, h_dec, self.read_n)
        gx = F_Y[:, None] @ x @ F_X.transpose(1, 2)[:, None]
        gxh = F_Y[:, None] @ x_hat @ F_X.transpose(1, 2)[:, None]
        return gamma[:, None] * torch.cat([gx.reshape(B, -1), gxh.reshape(B, -1)], dim=1)

    def write(self, h_dec: Tensor) -> Tensor:
        B = h_dec.shape[0]
        C, H, W = self.image_shape
        if self.write_n is None:
            return self.write_out(h_dec).view(B, C, H, W)
        w = self.write_out(h_dec).view(B, C, self.write_n, self.write_n)
        F_X, F_Y, gamma = self.window(self.write_params, h_dec, self.write_n)
        return (F_Y.transpose(1, 2)[:, None] @ w @ F_X[:, None]) / gamma[:, None, None, None]

    def loss(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """Mean over the batch of L^x + L^z (eqs 9-12), nats per image."""
        B = x.shape[0]
        canvas = self.canvas0.expand(B, *self.image_shape)
        h_enc, c_enc = self.h_enc0.expand(B, -1), self.c_enc0.expand(B, -1)
        h_dec, c_dec = self.h_dec0.expand(B, -1), self.c_dec0.expand(B, -1)
        kl = 0.0
        for t in range(self.T):
            x_hat = x - torch.sigmoid(canvas)
            r = self.read(x, x_hat, h_dec)
            h_enc, c_enc = self.encoder(torch.cat([r, h_dec], dim=1), (h_enc, c_enc))
            mu, log_sigma = self.posterior(h_enc).chunk(2, dim=1)
            eps = torch.randn(B, self.z_size) if noise is None else noise[t]
            z = mu + torch.exp(log_sigma) * eps
            h_dec, c_dec = self.decoder(z, (h_dec, c_dec))
            canvas = canvas + self.write(h_dec)
            kl = kl + 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 2 * log_sigma).sum(1) - self.z_size / 2
        nll = F.binary_cross_entropy_with_logits(canvas, x, reduction="none").reshape(B, -1).sum(1)
        return (nll + kl).mean()

    @torch.no_grad()
    def generate(self, n: int) -> Tensor:
        """sigma(c~_t) after every step (T, n, C, H, W), eqs (13)-(16)."""
        canvas = self.canvas0.expand(n, *self.image_shape)
        h_dec, c_dec = self.h_dec0.expand(n, -1), self.c_dec0.expand(n, -1)
        canvases = []
        for _ in range(self.T):
            z = torch.randn(n, self.z_size)
            h_dec, c_dec = self.decoder(z, (h_dec, c_dec))
            canvas = canvas + self.write(h_dec)
            canvases.append(torch.sigmoid(canvas))
        return torch.stack(canvases)
