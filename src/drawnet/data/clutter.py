"""Data sets composed from MNIST digits: two-digit MNIST (DRAW 4.3) and cluttered MNIST (4.1).

Both are built from a *plan* (which digits, where) drawn for a whole epoch at once, then rendered
batch by batch with index arithmetic: every patch is added into a flat canvas with one
``index_add_``, then the canvas is clipped to 1. No per-image Python work.

Digit pools keep the splits apart: train uses the first 50,000 MNIST training digits, valid the
last 10,000 training digits, test the 10,000 test digits; distractors come from the same pool as
the labelled digit. Valid and test are fixed (seed :data:`FIXED_SEED`); train is drawn afresh
every epoch from ``(seed, epoch)`` unless ``on_the_fly=False``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .base import OnTheFlyDataset, derive_seed
from .mnist import MNIST, SPLITS, load_idx_family, split_arrays, splitmix64

FIXED_SEED = 150204623  # arXiv 1502.04623; seeds of the fixed valid/test sets derive from it
SPLIT_INDEX = {"train": 0, "valid": 1, "test": 2}


def paste(canvas: Tensor, patches: Tensor, positions: Tensor) -> Tensor:
    """Add ``patches`` (B, K, h, w) into ``canvas`` (B, H, W) in place at top-left ``positions`` (B, K, 2) = (y, x)."""
    B, H, W = canvas.shape
    _, K, h, w = patches.shape
    inside = positions.numel() == 0 or (
        positions.min() >= 0 and positions[..., 0].max() <= H - h and positions[..., 1].max() <= W - w
    )
    if not inside:
        raise ValueError(f"patch positions must keep a {h}x{w} patch inside the {H}x{W} canvas")
    # Flat index of pixel (i, j) of patch k of image b: (b*H + y + i)*W + x + j = corner[b, k] + offset[i, j].
    corner = (torch.arange(B)[:, None] * H + positions[..., 0]) * W + positions[..., 1]  # (B, K)
    offset = torch.arange(h)[:, None] * W + torch.arange(w)  # (h, w)
    flat = corner[..., None, None] + offset  # (B, K, h, w)
    canvas.view(-1).index_add_(0, flat.view(-1), patches.reshape(-1).to(canvas.dtype))
    return canvas


def crop_patches(pool: Tensor, source: Tensor, offsets: Tensor, size: int) -> Tensor:
    """Crops ``size`` x ``size`` of ``pool[source]`` (pool (P, h, w); source (B, K)) at ``offsets`` (B, K, 2)."""
    _, h, w = pool.shape
    corner = (source * h + offsets[..., 0]) * w + offsets[..., 1]  # (B, K) flat index of each crop's corner
    flat = corner[..., None, None] + torch.arange(size)[:, None] * w + torch.arange(size)  # (B, K, size, size)
    return torch.take(pool, flat)


# ---- cluttered translated MNIST ---------------------------------------------------------------------


class ClutterPlan(NamedTuple):
    digit: Tensor  # (n,) pool index of the labelled digit
    digit_pos: Tensor  # (n, 2) top-left (y, x) of the digit on the canvas
    source: Tensor  # (n, K) pool index of the digit each distractor is cut from
    crop_pos: Tensor  # (n, K, 2) top-left of each distractor crop inside its source digit
    distractor_pos: Tensor  # (n, K, 2) top-left of each distractor on the canvas


def sample_clutter_plan(
    digit: Tensor, pool_size: int, *, size: int, distractors: int, patch: int, digit_size: int, generator
) -> ClutterPlan:
    """Uniform positions for digit ``digit`` (n,) and ``distractors`` random crops of random pool digits.

    A distractor may (rarely, p = 1/pool_size) be cut from the labelled digit itself; Mnih et al.
    describe crops of other random digits, and we do not exclude this rare case.
    """
    n, K = digit.shape[0], distractors
    g = generator
    return ClutterPlan(
        digit=digit,
        digit_pos=torch.randint(0, size - digit_size + 1, (n, 2), generator=g),
        source=torch.randint(0, pool_size, (n, K), generator=g),
        crop_pos=torch.randint(0, digit_size - patch + 1, (n, K, 2), generator=g),
        distractor_pos=torch.randint(0, size - patch + 1, (n, K, 2), generator=g),
    )


def render_clutter(pool: Tensor, plan: ClutterPlan, idx: Tensor, *, size: int, patch: int) -> Tensor:
    """Images ``idx`` of ``plan``: (len(idx), 1, size, size) float32 in [0, 1]; pool is uint8 (P, h, w)."""
    B = idx.shape[0]
    canvas = torch.zeros(B, size, size)
    digits = pool[plan.digit[idx]].unsqueeze(1)  # (B, 1, h, w)
    paste(canvas, digits, plan.digit_pos[idx].unsqueeze(1))
    if plan.source.shape[1]:
        crops = crop_patches(pool, plan.source[idx], plan.crop_pos[idx], patch)  # (B, K, patch, patch)
        paste(canvas, crops, plan.distractor_pos[idx])
    return canvas.div_(255.0).clamp_(max=1.0).unsqueeze(1)  # intensities added, clipped to 1


class MNISTComposition(OnTheFlyDataset):
    """Common machinery: a pool of uint8 digits, a plan per epoch (or one fixed plan), rendering."""

    tag = 0  # distinguishes the random streams of the composed data sets

    def __init__(self, name, split, pool, pool_labels, n, image_shape, num_classes, fixed_seed):
        super().__init__(name, split, n, image_shape, num_classes)
        self.pool = pool  # (P, h, w) uint8
        self.pool_labels = pool_labels  # (P,) int64
        self.fixed_seed = fixed_seed  # None: a new plan every epoch

    def plan_seed(self, epoch: int, seed: int) -> int:
        return self.fixed_seed if self.fixed_seed is not None else derive_seed(seed, epoch, self.tag)

    def epoch_batcher(self, epoch: int, seed: int):
        if self.fixed_seed is None:
            return super().epoch_batcher(epoch, seed)
        images, labels = self.images, self.labels  # a fixed set is rendered once and indexed

        def take(idx):
            return images[idx], labels[idx]

        return len(self), take

    def epoch_images(self, epoch: int, seed: int):
        if self.fixed_seed is not None and self._reference is not None:
            return self._reference
        return super().epoch_images(epoch, seed)


class ClutteredMNIST(MNISTComposition):
    """Cluttered translated MNIST: one labelled digit plus 8x8 distractor crops, added and clipped."""

    tag = 0xC1

    def __init__(self, split, pool, pool_labels, *, size, distractors, patch, n, fixed_seed):
        self.size, self.distractors, self.patch = size, distractors, patch
        super().__init__("cluttered_mnist", split, pool, pool_labels, n, (1, size, size), 10, fixed_seed)

    def plan(self, epoch: int, seed: int) -> ClutterPlan:
        g = torch.Generator().manual_seed(self.plan_seed(epoch, seed))
        P = self.pool.shape[0]
        # Each pool digit once per epoch (in pool order; batches() shuffles), cycling if n > P.
        digit = torch.arange(len(self)) % P
        return sample_clutter_plan(
            digit, P, size=self.size, distractors=self.distractors, patch=self.patch,
            digit_size=self.pool.shape[1], generator=g,
        )

    def build(self, plan: ClutterPlan, idx: Tensor):
        images = render_clutter(self.pool, plan, idx, size=self.size, patch=self.patch)
        return images, self.pool_labels[plan.digit[idx]]


# ---- two-digit MNIST ----------------------------------------------------------------------------------


class TwoDigitPlan(NamedTuple):
    digits: Tensor  # (n, 2) pool indices of the two digits
    positions: Tensor  # (n, 2, 2) top-left (y, x) of each digit on the canvas
    noise_seed: int  # seed of the per-pixel uniforms of the binarization


def sample_two_digit_plan(n: int, pool_size: int, *, size: int, digit_size: int, generator) -> TwoDigitPlan:
    g = generator
    digits = torch.randint(0, pool_size, (n, 2), generator=g)
    positions = torch.randint(0, size - digit_size + 1, (n, 2, 2), generator=g)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return TwoDigitPlan(digits, positions, noise_seed)


def pixel_uniforms(idx: Tensor, pixels: int, seed: int) -> Tensor:
    """Uniforms in [0, 1) for every pixel of images ``idx``: (len(idx), pixels) float64.

    Counter-based, so a batch gets the same values whatever other images it is built with, and
    epoch_images agrees with batches(): u = (SplitMix64 output number image * pixels + pixel, seeded
    with ``seed``) >> 11, divided by 2**53, as for binarized MNIST. (A torch version of a 32-bit hash
    measured slower here than this numpy one.)
    """
    counters = idx.numpy().astype(np.uint64)[:, None] * np.uint64(pixels) + np.arange(pixels, dtype=np.uint64)
    r = splitmix64(counters, seed) >> np.uint64(11)
    return torch.from_numpy(r.astype(np.float64) * 2.0**-53)


def render_two_digit(pool: Tensor, plan: TwoDigitPlan, idx: Tensor, *, size: int, binarize: bool) -> Tensor:
    """Images ``idx``: two digits added and clipped to 1, then (if ``binarize``) each pixel ~ Bernoulli."""
    B = idx.shape[0]
    canvas = torch.zeros(B, size, size)
    paste(canvas, pool[plan.digits[idx]], plan.positions[idx])  # patches (B, 2, h, w)
    canvas.div_(255.0).clamp_(max=1.0)  # overlaps: intensities added, clipped to 1
    if binarize:
        u = pixel_uniforms(idx, size * size, plan.noise_seed).view(B, size, size)
        canvas = (u < canvas.double()).float()
    return canvas.unsqueeze(1)  # (B, 1, size, size)


class TwoDigitMNIST(MNISTComposition):
    """Two random MNIST digits at random places on a 60x60 canvas.

    ``labels`` are 10 * first + second (100 classes); the plan keeps both digits and positions.
    """

    tag = 0x2D

    def __init__(self, split, pool, pool_labels, *, size, binarize, n, fixed_seed):
        self.size, self.binarize = size, binarize
        super().__init__("two_digit_mnist", split, pool, pool_labels, n, (1, size, size), 100, fixed_seed)

    def plan(self, epoch: int, seed: int) -> TwoDigitPlan:
        g = torch.Generator().manual_seed(self.plan_seed(epoch, seed))
        return sample_two_digit_plan(len(self), self.pool.shape[0], size=self.size, digit_size=self.pool.shape[1],
                                     generator=g)

    def build(self, plan: TwoDigitPlan, idx: Tensor):
        images = render_two_digit(self.pool, plan, idx, size=self.size, binarize=self.binarize)
        pair = self.pool_labels[plan.digits[idx]]  # (B, 2)
        return images, pair[:, 0] * 10 + pair[:, 1]


# ---- loaders ----------------------------------------------------------------------------------------------


def _pool(split: str, root, source) -> tuple[Tensor, Tensor]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    images, labels, _ = split_arrays(load_idx_family(MNIST, root, source), split)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))


def _fixed_seed(split: str, on_the_fly: bool, *parts: int) -> int | None:
    if split == "train" and on_the_fly:
        return None
    return derive_seed(FIXED_SEED, SPLIT_INDEX[split], *parts)


# Mnih et al. 2014: 100x100 with 8 distractors and 60x60 with 4, each an 8x8 crop.
CLUTTER_DISTRACTORS = {100: 8, 60: 4}


def cluttered_mnist(
    split: str,
    *,
    size: int = 100,
    distractors: int | None = None,
    patch: int = 8,
    n: int | None = None,
    on_the_fly: bool = True,
    root=None,
    source=None,
) -> ClutteredMNIST:
    """Cluttered translated MNIST: ``size`` x ``size`` (100 or 60), labels 0..9.

    ``distractors`` defaults to 8 for 100x100 and 4 for 60x60; ``n`` defaults to the pool size
    (50k / 10k / 10k). The train split is redrawn every epoch unless ``on_the_fly=False``.
    """
    if distractors is None:
        if size not in CLUTTER_DISTRACTORS:
            raise ValueError(f"cluttered_mnist: size {size} has no default distractor count; pass distractors=")
        distractors = CLUTTER_DISTRACTORS[size]
    if size < 28 or distractors < 0 or not 1 <= patch <= 28:
        raise ValueError(f"cluttered_mnist: need size >= 28, distractors >= 0, 1 <= patch <= 28; got {size}, "
                         f"{distractors}, {patch}")
    pool, labels = _pool(split, root, source)
    count = pool.shape[0] if n is None else n
    fixed = _fixed_seed(split, on_the_fly, size, distractors, patch, count)
    return ClutteredMNIST(split, pool, labels, size=size, distractors=distractors, patch=patch, n=count,
                          fixed_seed=fixed)


def two_digit_mnist(
    split: str, *, size: int = 60, binarize: bool = True, n: int | None = None, on_the_fly: bool = True,
    root=None, source=None,
) -> TwoDigitMNIST:
    """Two-digit MNIST, ``size`` x ``size`` (60), binarized by sampling unless ``binarize=False``."""
    if size < 28:
        raise ValueError(f"two_digit_mnist: size must be at least 28 (one digit), got {size}")
    pool, labels = _pool(split, root, source)
    count = pool.shape[0] if n is None else n
    fixed = _fixed_seed(split, on_the_fly, size, count)  # binarize or not: the same compositions
    return TwoDigitMNIST(split, pool, labels, size=size, binarize=binarize, n=count, fixed_seed=fixed)
