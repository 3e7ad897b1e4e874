"""The in-memory dataset every loader returns, and its batching (no per-image Python work)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, identical on every machine and process (unlike ``hash``)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 % (1 << 64)
    return value >> 1


class ImageDataset:
    """A split of images held as one tensor, batched by indexing.

    ``images``: (N, C, H, W) float32 in [0, 1]; ``labels``: (N,) int64 or None.
    Subclasses that sample something afresh every epoch (dynamic binarization, on-the-fly clutter,
    random crops) override :meth:`epoch_images`; it must be vectorised and depend only on
    ``(seed, epoch)`` so runs are reproducible.
    """

    def __init__(
        self,
        name: str,
        split: str,
        images: Tensor,
        labels: Tensor | None = None,
        num_classes: int | None = None,
    ):
        if images.dim() != 4:
            raise ValueError(f"{name}/{split}: images must be (N, C, H, W), got {tuple(images.shape)}")
        if labels is not None and labels.shape[0] != images.shape[0]:
            raise ValueError(f"{name}/{split}: {images.shape[0]} images but {labels.shape[0]} labels")
        self.name = name
        self.split = split
        self.images = images
        self.labels = labels
        self.num_classes = num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        C, H, W = self.images.shape[1:]
        return (int(C), int(H), int(W))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.split!r}, n={len(self)}, shape={self.image_shape})"

    def epoch_images(self, epoch: int, seed: int) -> tuple[Tensor, Tensor | None]:
        """The images (and labels) of one epoch; fixed sets return themselves."""
        return self.images, self.labels

    def batches(
        self,
        batch_size: int,
        *,
        epoch: int = 0,
        seed: int = 0,
        shuffle: bool = False,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Yield (images, labels-or-None) batches; order depends only on (seed, epoch)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        images, labels = self.epoch_images(epoch, seed)
        n = images.shape[0]
        if shuffle:
            g = torch.Generator().manual_seed(derive_seed(seed, epoch, 1))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield images[idx], (labels[idx] if labels is not None else None)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)
