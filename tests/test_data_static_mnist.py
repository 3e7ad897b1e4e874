"""Larochelle's static binarized MNIST (.amat files), on small synthetic files in the same format."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from drawnet.data import get_dataset, static_mnist

COUNTS = {"train": 12, "valid": 11, "test": 10}


def _images(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 28, 28)) < 0.3).astype(np.uint8)


def _write_amat(path, images: np.ndarray) -> None:
    path.write_text("".join(" ".join(str(v) for v in img.reshape(-1)) + "\n" for img in images))


def _md5_first_ten(images: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(images[:10]).tobytes()).hexdigest()


@pytest.fixture
def amat_folder(tmp_path, monkeypatch):
    """A folder with the three files, and the module's published facts replaced by theirs."""
    folder = tmp_path / "amat"
    folder.mkdir()
    arrays = {split: _images(n, seed) for seed, (split, n) in enumerate(COUNTS.items())}
    for split, images in arrays.items():
        _write_amat(folder / f"binarized_mnist_{split}.amat", images)
    monkeypatch.setattr(static_mnist, "COUNTS", COUNTS)
    monkeypatch.setattr(static_mnist, "FIRST_TEN_MD5", {s: _md5_first_ten(a) for s, a in arrays.items()})
    # parse_amat's defaults were bound at import: route them to the patched facts
    original = static_mnist.parse_amat
    monkeypatch.setattr(static_mnist, "parse_amat", lambda path, split, **kw: original(
        path, split, counts=static_mnist.COUNTS, first_ten_md5=static_mnist.FIRST_TEN_MD5))
    return folder, arrays


def test_loads_the_three_splits_from_a_folder_into_the_cache(amat_folder, tmp_path):
    folder, arrays = amat_folder
    root = tmp_path / "cache"
    for split, images in arrays.items():
        ds = get_dataset("static_mnist", split, root=root, source=folder)
        assert ds.images.shape == (COUNTS[split], 1, 28, 28) and ds.labels is None
        np.testing.assert_array_equal(ds.images[:, 0].numpy().astype(np.uint8), images)
        cached = root / "static_mnist" / f"binarized_mnist_{split}.amat"
        assert cached.is_file() and (cached.parent / f"{cached.name}.sha256").is_file()
    # offline afterwards: no source needed, and the recorded sha256 is checked
    assert len(get_dataset("static_mnist", "test", root=root)) == COUNTS["test"]


def test_a_damaged_cached_file_is_detected(amat_folder, tmp_path):
    folder, _ = amat_folder
    root = tmp_path / "cache"
    get_dataset("static_mnist", "test", root=root, source=folder)
    cached = root / "static_mnist" / "binarized_mnist_test.amat"
    data = bytearray(cached.read_bytes())
    data[0] = ord("1") if data[0] == ord("0") else ord("0")
    cached.write_bytes(bytes(data))
    with pytest.raises(FileNotFoundError, match="could not download"):  # offline: the bad copy is not used
        get_dataset("static_mnist", "test", root=root)


@pytest.mark.parametrize("damage, message", [
    (lambda text: text.replace("0 ", "2 ", 1), "holds only 0, 1"),
    (lambda text: text[: len(text) // 2], "truncated"),
    (lambda text: text.replace("\n", "\n" + " ".join(["0"] * 784) + "\n", 1), "expected 10 images"),
])
def test_bad_files_give_one_clear_error(amat_folder, tmp_path, damage, message):
    folder, _ = amat_folder
    path = folder / "binarized_mnist_test.amat"
    path.write_text(damage(path.read_text()))
    with pytest.raises(ValueError, match=message):
        get_dataset("static_mnist", "test", root=tmp_path / "cache", source=folder)
    assert not (tmp_path / "cache" / "static_mnist" / path.name).exists()  # nothing cached


def test_another_binarization_is_refused_by_the_published_digest(amat_folder, tmp_path):
    folder, _ = amat_folder
    _write_amat(folder / "binarized_mnist_test.amat", _images(10, 99))
    with pytest.raises(ValueError, match="another binarization"):
        get_dataset("static_mnist", "test", root=tmp_path / "cache", source=folder)


def test_the_published_facts_are_those_of_the_real_files():
    assert static_mnist.COUNTS == {"train": 50_000, "valid": 10_000, "test": 10_000}
    assert static_mnist.FIRST_TEN_MD5["test"] == "0fa539ed8cb008880a61be77f744f06a"
    assert static_mnist.URL.format(split="test").endswith("/binarized_mnist/binarized_mnist_test.amat")
