"""A small synthetic data set of binary shapes, generated in memory (no files, no network).

Used by the tests and for a quick look at the pipeline; not a benchmark. Each image holds one
axis-aligned rectangle outline or filled square, one diagonal stroke, or a ring, at a random place.
"""

from __future__ import annotations

import torch

from .base import ImageDataset, derive_seed

SPLIT_SIZES = {"train": 2048, "valid": 256, "test": 256}
SPLIT_INDEX = {"train": 0, "valid": 1, "test": 2}


def make_shapes(n: int, height: int, width: int, channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` binary images (n, channels, height, width) and their shape class in {0, 1, 2}."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    ys = torch.arange(height, dtype=torch.float32)[None, :, None]  # (1, H, 1)
    xs = torch.arange(width, dtype=torch.float32)[None, None, :]  # (1, 1, W)
    size = torch.rand(n, generator=g) * 0.25 + 0.2  # half-size as a fraction of the image
    cy = (torch.rand(n, generator=g) * 0.5 + 0.25)[:, None, None] * (height - 1)
    cx = (torch.rand(n, generator=g) * 0.5 + 0.25)[:, None, None] * (width - 1)
    ry = size[:, None, None] * height
    rx = size[:, None, None] * width
    dy, dx = (ys - cy) / ry, (xs - cx) / rx  # (n, H, W) in units of the half-size
    square = (dy.abs() <= 1) & (dx.abs() <= 1)
    stroke = ((dy - dx).abs() <= 0.25) & (dy.abs() <= 1)
    r = (dy**2 + dx**2).sqrt()
    ring = (r <= 1) & (r >= 0.6)
    shapes = torch.stack([square, stroke, ring])  # (3, n, H, W)
    img = shapes[labels, torch.arange(n)].float()  # (n, H, W)
    return img[:, None].expand(n, channels, height, width).contiguous(), labels


def synthetic(
    split: str, *, image_shape: tuple[int, int, int] = (1, 28, 28), n: int | None = None, seed: int = 0
) -> ImageDataset:
    """The synthetic shapes set; ``n`` overrides the split's size."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r} for 'synthetic'; choose one of {sorted(SPLIT_SIZES)}")
    C, H, W = image_shape
    count = SPLIT_SIZES[split] if n is None else n
    images, labels = make_shapes(count, H, W, C, derive_seed(seed, SPLIT_INDEX[split]))
    return ImageDataset("synthetic", split, images, labels, num_classes=3)
