"""Binarized MNIST: the documented fixed sampling, dynamic binarization, and the recorded hashes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from drawnet.data import cache_root, get_dataset, mnist
from drawnet.data.cache import is_valid
from drawnet.data.mnist import BINARIZATION_SEED, binarize_fixed, splitmix64, tensor_sha256

M64 = (1 << 64) - 1


def splitmix64_reference(seed: int, count: int) -> list[int]:
    """SplitMix64 written from its definition with Python integers (independent of the numpy code)."""
    state, out = seed, []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        out.append(z ^ (z >> 31))
    return out


def test_splitmix64_matches_its_definition():
    for seed in (0, BINARIZATION_SEED, 2**63 + 5):
        np.testing.assert_array_equal(
            splitmix64(np.arange(50, dtype=np.uint64), seed), np.array(splitmix64_reference(seed, 50), dtype=np.uint64)
        )


def test_binarize_fixed_is_the_documented_rule():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    first = 1234
    expected = [
        int(r >> 11) / 2.0**53 < v / 255.0
        for r, v in zip(
            splitmix64_reference(BINARIZATION_SEED, first + images.size)[first:], images.reshape(-1), strict=True
        )
    ]
    np.testing.assert_array_equal(binarize_fixed(images, first).reshape(-1), np.array(expected, dtype=np.uint8))


def test_binarization_is_deterministic_sampled_and_not_a_threshold():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (200, 28, 28), dtype=np.uint8)
    a = torch.from_numpy(binarize_fixed(images, 0)).float()
    b = torch.from_numpy(binarize_fixed(images, 0)).float()
    assert tensor_sha256(a) == tensor_sha256(b)
    thresholded = torch.from_numpy(images >= 128).float()
    assert tensor_sha256(a) != tensor_sha256(thresholded)
    # Sampled: the frequency of ones follows the intensity (here uniform intensities, mean ~ 0.5).
    assert abs(a.mean().item() - images.mean() / 255) < 0.01
    # Slices binarize like the whole (the split boundaries do not change any pixel).
    part = binarize_fixed(images[50:], 50 * 28 * 28)
    np.testing.assert_array_equal(part, a[50:].numpy())
    # Intensity 0 is never on, 255 always on.
    assert binarize_fixed(np.zeros((1, 4, 4), np.uint8), 7).sum() == 0
    assert binarize_fixed(np.full((1, 4, 4), 255, np.uint8), 7).min() == 1


def test_binarized_splits_and_dynamic(fake_mnist_cached):
    root = fake_mnist_cached.root
    arrays = fake_mnist_cached.arrays
    train = get_dataset("binarized_mnist", "train", root=root)
    valid = get_dataset("binarized_mnist", "valid", root=root)
    test = get_dataset("binarized_mnist", "test", root=root)
    assert (len(train), len(valid), len(test)) == (50, 10, 20)
    assert set(torch.unique(test.images).tolist()) <= {0.0, 1.0}
    assert test.images.dtype == torch.float32 and test.images.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(valid.labels.numpy(), arrays["train_labels"][50:])
    # The test images continue the pixel numbering after all 60 training images.
    np.testing.assert_array_equal(test.images[:, 0].numpy(), binarize_fixed(arrays["test_images"], 60 * 784))

    dyn = get_dataset("binarized_mnist", "train", root=root, dynamic=True)
    assert torch.equal(dyn.images, train.images)  # the fixed set is still there
    e0, _ = dyn.epoch_images(0, seed=3)
    e0_again, _ = dyn.epoch_images(0, seed=3)
    e1, _ = dyn.epoch_images(1, seed=3)
    assert torch.equal(e0, e0_again) and not torch.equal(e0, e1)
    assert set(torch.unique(e1).tolist()) <= {0.0, 1.0}
    batch, labels = next(dyn.batches(8, epoch=1, seed=3))
    assert torch.equal(batch, e1[:8]) and torch.equal(labels, dyn.labels[:8])
    with pytest.raises(ValueError, match="train split only"):
        get_dataset("binarized_mnist", "test", root=root, dynamic=True)


# Recorded hashes of the fixed binarized MNIST (sha256 of the 0/1 pixels as uint8 bytes, C order,
# shape (N, 1, 28, 28)); computed from the real MNIST files with BINARIZATION_SEED = 2008.
VALID_SHA256 = "c6b051cf67c253c1d052dc7dd82ec3f522ee00697aee2ef162ae0a42a4abd3cc"
TEST_SHA256 = "43f48aba2d7f780484deaf4a9c01f9b7c08909fb4e03d9519f07997af7fc735e"


def _real_mnist_present() -> bool:
    folder = cache_root() / "mnist"
    return all(is_valid(folder / f.raw.name, f.raw) for f in mnist.MNIST.files.values())


@pytest.mark.skipif(not _real_mnist_present(), reason="real MNIST not in the cache (drawnet data fetch mnist)")
def test_real_binarized_mnist_hashes(no_network):
    valid = get_dataset("binarized_mnist", "valid")
    test = get_dataset("binarized_mnist", "test")
    assert (len(valid), len(test)) == (10_000, 10_000)
    assert tensor_sha256(valid.images) == VALID_SHA256
    assert tensor_sha256(test.images) == TEST_SHA256
    # About 13 % of MNIST pixels are on after sampling; thresholding gives a different set.
    assert 0.12 < test.images.mean().item() < 0.14
    grey = get_dataset("mnist", "test")
    assert tensor_sha256((grey.images >= 0.5).float()) != TEST_SHA256
    assert hashlib.sha256(grey.labels.numpy().tobytes()).hexdigest() == hashlib.sha256(
        test.labels.numpy().tobytes()
    ).hexdigest()
