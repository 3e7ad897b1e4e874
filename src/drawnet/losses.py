"""The variational bound of eqs (9)-(12), in nats per image, as pure functions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def reconstruction_nll(canvas_logits: Tensor, x: Tensor) -> Tensor:
    """Eq. (9): L^x = -log D(x | c_T) for a Bernoulli D with means sigma(c_T), per image (batch,).

    Uses the logits form (binary cross-entropy with logits), never sigmoid-then-log. For colour
    data each intensity in [0, 1] is treated as a Bernoulli probability, as the paper does.
    """
    nll = F.binary_cross_entropy_with_logits(canvas_logits, x, reduction="none")  # (batch, C, H, W)
    return nll.flatten(1).sum(dim=1)  # (batch,): summed over pixels and channels


def kl_per_step(mu: Tensor, log_sigma: Tensor) -> Tensor:
    """Eq. (11) before the sum over t: KL(N(mu, sigma^2) || N(0, I)) for each step and image.

    ``mu``, ``log_sigma``: (T, batch, Z) -> (T, batch).

    The paper prints the constant as -T/2; summed over the Z latent dimensions it is -T*Z/2, i.e.
    -Z/2 per step, which is what is subtracted here (docs/DESIGN.md, The KL constant).
    """
    Z = mu.shape[-1]
    sigma2 = torch.exp(2 * log_sigma)
    # (11): 1/2 sum_k (mu^2 + sigma^2 - log sigma^2) - Z/2, with log sigma^2 = 2 log sigma
    return 0.5 * (mu**2 + sigma2 - 2 * log_sigma).sum(dim=-1) - Z / 2


def log_normal(z: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """log N(z; mu, diag(sigma^2)) summed over the last dimension."""
    return (-0.5 * ((z - mu) / torch.exp(log_sigma)) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)


def loss_terms(canvas_logits: Tensor, x: Tensor, mu: Tensor, log_sigma: Tensor) -> dict[str, Tensor]:
    """Eqs (9)-(12) with one sample of z, as a dict of tensors in nats per image.

    ``loss`` (scalar, mean over the batch of L^x + L^z) is what training minimises; ``L_x`` and
    ``L_z`` are batch means; ``kl_per_step`` (T,) is the batch mean of each step's KL;
    ``bound_per_image`` (batch,) is L^x + L^z for each image (used by evaluation).
    """
    L_x = reconstruction_nll(canvas_logits, x)  # (9), (batch,)
    kl = kl_per_step(mu, log_sigma)  # (T, batch)
    L_z = kl.sum(dim=0)  # (10)/(11), (batch,)
    bound = L_x + L_z  # (12) with a single z sample
    return {
        "loss": bound.mean(),
        "L_x": L_x.mean(),
        "L_z": L_z.mean(),
        "kl_per_step": kl.mean(dim=1),
        "bound_per_image": bound,
    }


def log_importance_weight(canvas_logits: Tensor, x: Tensor, z: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """log p(x, z) - log q(z | x) for one posterior sample per image: (batch,).

    ``z``, ``mu``, ``log_sigma``: (T, batch, Z). The prior of every z_t is N(0, I) (eq. 13).
    Averaging exp of this over K samples gives the importance-weighted estimate of p(x)
    (docs/DESIGN.md, Evaluation); its negative expectation equals the bound of eq. (12).
    """
    log_px_z = -reconstruction_nll(canvas_logits, x)  # (batch,)
    zeros = torch.zeros_like(mu)
    log_prior = log_normal(z, zeros, zeros).sum(dim=0)  # (batch,)
    log_q = log_normal(z, mu, log_sigma).sum(dim=0)  # (batch,)
    return log_px_z + log_prior - log_q
