"""Data sets for DRAW's experiments, as in-memory :class:`ImageDataset` splits.

``get_dataset(name, split, **options)`` is the one entry point used by training, evaluation and
the pictures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import ImageDataset, OnTheFlyDataset, derive_seed
from .clutter import cluttered_mnist, two_digit_mnist
from .mnist import binarized_mnist, fashion_mnist, mnist
from .synthetic import synthetic

# name -> loader(split, **options) -> ImageDataset
DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "synthetic": synthetic,
    "binarized_mnist": binarized_mnist,
    "mnist": mnist,
    "fashion_mnist": fashion_mnist,
    "two_digit_mnist": two_digit_mnist,
    "cluttered_mnist": cluttered_mnist,
}


def get_dataset(name: str, split: str, **options: Any) -> ImageDataset:
    """Load split ``split`` ("train", "valid" or "test") of data set ``name``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](split, **options)


__all__ = ["DATASETS", "ImageDataset", "OnTheFlyDataset", "derive_seed", "get_dataset"]
