"""Data sets for DRAW's experiments, as in-memory :class:`ImageDataset` splits.

``get_dataset(name, split, **options)`` is the one entry point used by training, evaluation and
the pictures. Real data sets are fetched into the cache (``$DRAWNET_DATA``, else
``~/.cache/drawnet``; option ``root=`` overrides) on first use, verified, and read offline after;
``fetch(name)`` and ``describe(name)`` back ``drawnet data fetch`` / ``drawnet data info``.
Options common to the real data sets: ``root`` (cache folder) and ``source`` (a folder holding the
raw files, used instead of downloading). ``images`` is the user's own data set (a folder of images
or a .npy/.npz array, option ``path``; see :mod:`drawnet.data.custom`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

# Modules, not their loader functions, are imported here: ``drawnet.data.mnist`` and
# ``drawnet.data.svhn`` stay the modules (their loaders share their names).
from . import cifar, clutter, custom, mnist, static_mnist, svhn
from .base import ImageDataset, OnTheFlyDataset, derive_seed
from .cache import cache_root
from .catalog import describe, fetch
from .synthetic import synthetic

# name -> loader(split, **options) -> ImageDataset
DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "synthetic": synthetic,
    "binarized_mnist": mnist.binarized_mnist,
    "static_mnist": static_mnist.static_mnist,
    "mnist": mnist.mnist,
    "fashion_mnist": mnist.fashion_mnist,
    "binarized_fashion_mnist": mnist.binarized_fashion_mnist,
    "two_digit_mnist": clutter.two_digit_mnist,
    "cluttered_mnist": clutter.cluttered_mnist,
    "svhn": svhn.svhn,
    "svhn_cropped": svhn.svhn_cropped,
    "cifar10": cifar.cifar10,
    "images": custom.custom_images,  # your own: a folder of images or a .npy/.npz array (drawnet.data.custom)
}


# What a number "on the test set" of each data set is on (printed by drawnet eval, kept in eval.json).
TEST_SETS: dict[str, str] = {
    "binarized_mnist": "drawnet's fixed binarization of the 10,000 MNIST test digits (each pixel sampled once, "
    "seed 2008; see drawnet.data.mnist), not the Larochelle binarized_mnist_test.amat",
    "static_mnist": "the standard static binarized MNIST test set (Larochelle & Murray 2011, "
    "binarized_mnist_test.amat), as in the paper's Table 2",
}


def describe_split(name: str, split: str) -> str:
    """One line saying which images split ``split`` of data set ``name`` is."""
    if split == "test" and name in TEST_SETS:
        return TEST_SETS[name]
    return f"the {split} split of {name}"


# What the labels of the data sets with named classes stand for (index = label).
CLASS_NAMES: dict[str, list[str]] = {
    "mnist": mnist.DIGITS,
    "binarized_mnist": mnist.DIGITS,
    "fashion_mnist": mnist.FASHION_CLASSES,
    "binarized_fashion_mnist": mnist.FASHION_CLASSES,
}


def class_names(name: str, **options: Any) -> list[str] | None:
    """The names of data set ``name``'s classes, index = label, found without loading its images;
    None where the classes have no names (their indices are what there is)."""
    if name == "images":
        return custom.class_names(**options)
    return CLASS_NAMES.get(name)


def check_options(name: str, options: dict[str, Any]) -> None:
    """A ValueError unless ``name`` is a data set and every key of ``options`` is an option of its loader."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    parameters = inspect.signature(DATASETS[name]).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return  # a loader taking **options checks them itself, first thing (drawnet.data.custom)
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
    "class_names",
    "check_options",
    "derive_seed",
    "describe",
    "describe_split",
    "fetch",
    "get_dataset",
]
