"""Data sets for DRAW's experiments, as in-memory :class:`ImageDataset` splits.

``get_dataset(name, split, **options)`` is the one entry point used by training, evaluation and
the pictures. Real data sets are fetched into the cache (``$DRAWNET_DATA``, else
``~/.cache/drawnet``; option ``root=`` overrides) on first use, verified, and read offline after;
``fetch(name)`` and ``describe(name)`` back ``drawnet data fetch`` / ``drawnet data info``.
Options common to the real data sets: ``root`` (cache folder) and ``source`` (a folder holding the
raw files, used instead of downloading).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

# Modules, not their loader functions, are imported here: ``drawnet.data.mnist`` and
# ``drawnet.data.svhn`` stay the modules (their loaders share their names).
from . import cifar, clutter, mnist, svhn
from .base import ImageDataset, OnTheFlyDataset, derive_seed
from .cache import cache_root
from .catalog import describe, fetch
from .synthetic import synthetic

# name -> loader(split, **options) -> ImageDataset
DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "synthetic": synthetic,
    "binarized_mnist": mnist.binarized_mnist,
    "mnist": mnist.mnist,
    "fashion_mnist": mnist.fashion_mnist,
    "two_digit_mnist": clutter.two_digit_mnist,
    "cluttered_mnist": clutter.cluttered_mnist,
    "svhn": svhn.svhn,
    "svhn_cropped": svhn.svhn_cropped,
    "cifar10": cifar.cifar10,
}


def check_options(name: str, options: dict[str, Any]) -> None:
    """A ValueError unless ``name`` is a data set and every key of ``options`` is an option of its loader."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    parameters = inspect.signature(DATASETS[name]).parameters.values()
    valid = sorted(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for data set {name!r} "
            f"(data_options); its options are: {', '.join(valid) or 'none'}"
        )


def get_dataset(name: str, split: str, **options: Any) -> ImageDataset:
    """Load split ``split`` ("train", "valid" or "test") of data set ``name``."""
    check_options(name, options)
    return DATASETS[name](split, **options)


__all__ = [
    "DATASETS",
    "ImageDataset",
    "OnTheFlyDataset",
    "cache_root",
    "check_options",
    "derive_seed",
    "describe",
    "fetch",
    "get_dataset",
]
