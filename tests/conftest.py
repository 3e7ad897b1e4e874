"""Shared fixtures (keep this file small)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a URL, as on a machine with no network."""
    import urllib.request

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch, no_network):
    """A tiny MNIST-format data set: 60 training and 20 test digits of random uint8 pixels.

    Writes the four IDX files to ``files`` (a folder standing for a download source), points the
    MNIST file specs at their sizes and md5s, and makes the train split the first 50 images (the
    valid split the last 10). Returns a namespace with ``files``, ``root`` (an empty cache) and the
    arrays.
    """
    from types import SimpleNamespace

    from drawnet.data import mnist
    from drawnet.data.cache import RawFile
    from drawnet.data.idx import idx_bytes

    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 60, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 20, dtype=np.uint8),
    }
    files = tmp_path / "files"
    files.mkdir()
    for key, array in arrays.items():
        f = mnist.MNIST.files[key]
        data = idx_bytes(array)
        (files / f.raw.name).write_bytes(data)
        raw = RawFile(f.raw.name, len(data), md5=hashlib.md5(data).hexdigest())
        monkeypatch.setitem(mnist.MNIST.files, key, mnist.IdxFile(raw, f.gz))
    monkeypatch.setattr(mnist, "NUM_TRAIN", 50)
    return SimpleNamespace(files=files, root=tmp_path / "cache", arrays=arrays)


@pytest.fixture
def fake_mnist_cached(fake_mnist):
    """``fake_mnist`` with its files already in the cache (as after ``drawnet data fetch mnist``)."""
    dest = fake_mnist.root / "mnist"
    dest.mkdir(parents=True)
    for p in fake_mnist.files.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return fake_mnist
