"""Which raw files each data set needs, how to fetch them, and what ``drawnet data info`` shows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import cifar, mnist, static_mnist, svhn
from .cache import RawFile, cache_root, describe_file, is_valid


@dataclass(frozen=True)
class DataSource:
    folder: str  # sub-folder of the cache holding the raw files
    specs: Callable[[], tuple[RawFile, ...]]  # the raw files as kept in the cache (read when asked)
    fetch: Callable[..., object]  # fetch(root=, source=): puts the verified files in the cache
    derived: tuple[str, ...] = ()  # prepared files also kept there (e.g. SVHN's 64x64 arrays)


def _idx_source(family: mnist.IdxFamily) -> DataSource:
    return DataSource(
        family.name,
        lambda: tuple(f.raw for f in family.files.values()),
        lambda root=None, source=None: mnist.fetch_idx_family(family, root, source),
    )


def _fetch_svhn(root=None, source=None) -> None:
    for part in ("train", "extra", "test"):
        svhn.load_prepared(part, root, source)


def _fetch_svhn_cropped(root=None, source=None) -> None:
    for part in ("train", "test"):
        svhn.fetch_svhn_file(svhn.CROPPED[part], root, source)


_MNIST = _idx_source(mnist.MNIST)
SOURCES: dict[str, DataSource] = {
    "mnist": _MNIST,
    "binarized_mnist": _MNIST,
    "two_digit_mnist": _MNIST,
    "cluttered_mnist": _MNIST,
    "fashion_mnist": _idx_source(mnist.FASHION_MNIST),
    "static_mnist": DataSource(
        static_mnist.FOLDER,
        lambda: tuple(static_mnist.raw_file(s) for s in static_mnist.COUNTS),
        static_mnist.fetch_all,
    ),
    "binarized_fashion_mnist": _idx_source(mnist.FASHION_MNIST),
    "cifar10": DataSource("cifar10", lambda: (cifar.ARCHIVE,), cifar.fetch_cifar10),
    "svhn": DataSource(
        "svhn",
        lambda: tuple(svhn.FORMAT1.values()),
        _fetch_svhn,
        derived=tuple(svhn.prepared_path(p, "").name for p in ("train", "extra", "test")),
    ),
    "svhn_cropped": DataSource("svhn", lambda: (svhn.CROPPED["train"], svhn.CROPPED["test"]), _fetch_svhn_cropped),
}


def source_for(name: str) -> DataSource:
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; datasets with files to fetch: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def fetch(name: str, root=None, source=None) -> list[Path]:
    """Fetch and verify the raw files of data set ``name``; returns their cached paths."""
    src = source_for(name)
    src.fetch(root=root, source=source)
    folder = cache_root(root) / src.folder
    return [folder / f.name for f in src.specs()]


def describe(name: str, root=None) -> dict:
    """Cache folder, each raw file (size, md5, sha256, and what it should be), prepared files."""
    src = source_for(name)
    folder = cache_root(root) / src.folder
    files = []
    for spec in src.specs():
        entry = describe_file(folder / spec.name)
        entry["expected"] = {"size": spec.size, "md5": spec.md5, "sha256": spec.sha256, "pinned": spec.pinned}
        if entry["present"]:
            entry["verified"] = is_valid(folder / spec.name, spec)
        files.append(entry)
    derived = [describe_file(folder / d) for d in src.derived]
    return {"name": name, "cache": str(folder), "files": files, "derived": derived}
