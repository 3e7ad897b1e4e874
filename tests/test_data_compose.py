"""Two-digit and cluttered MNIST: shapes, ranges, positions, fixed vs on-the-fly sets (fake MNIST)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drawnet.data import derive_seed, get_dataset
from drawnet.data.clutter import TwoDigitPlan, paste, render_two_digit


def test_paste_matches_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    canvas = torch.rand(3, 12, 10, generator=g)
    patches = torch.rand(3, 4, 5, 3, generator=g)
    pos = torch.stack([torch.randint(0, 8, (3, 4), generator=g), torch.randint(0, 8, (3, 4), generator=g)], -1)
    expected = canvas.clone()
    for b in range(3):
        for k in range(4):
            y, x = pos[b, k].tolist()
            expected[b, y : y + 5, x : x + 3] += patches[b, k]
    torch.testing.assert_close(paste(canvas.clone(), patches, pos), expected)
    with pytest.raises(ValueError, match="inside the 12x10 canvas"):
        paste(canvas, patches, pos + 8)


def _crop(images, pos, size=28):
    """The size x size window of each image at its top-left (y, x) in pos (N, 2)."""
    return torch.stack([img[0, y : y + size, x : x + size] for img, (y, x) in zip(images, pos.tolist(), strict=True)])


@pytest.mark.parametrize("size,distractors", [(100, 8), (60, 4)])
def test_cluttered_digit_is_where_the_plan_says(fake_mnist_cached, size, distractors):
    root = fake_mnist_cached.root
    ds = get_dataset("cluttered_mnist", "test", root=root, size=size)
    assert ds.distractors == distractors  # Mnih et al.: 8 for 100x100, 4 for 60x60
    images, labels = ds.images, ds.labels
    assert images.shape == (20, 1, size, size) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    plan = ds.plan(0, 0)
    test_digits = torch.from_numpy(fake_mnist_cached.arrays["test_images"]).float() / 255
    np.testing.assert_array_equal(ds.pool.numpy(), fake_mnist_cached.arrays["test_images"])  # test digits only
    torch.testing.assert_close(labels, torch.from_numpy(fake_mnist_cached.arrays["test_labels"]).long()[plan.digit])
    # Added and clipped: the window at the digit's position is at least the digit, pixel by pixel.
    assert (_crop(images, plan.digit_pos) >= test_digits[plan.digit] - 1e-6).all()
    # The distractors are there: more ink than the digit alone.
    assert images.sum() > test_digits[plan.digit].sum() + 1


def test_cluttered_without_distractors_is_the_digit_alone(fake_mnist_cached):
    ds = get_dataset("cluttered_mnist", "valid", root=fake_mnist_cached.root, distractors=0)
    plan = ds.plan(0, 0)
    valid_digits = torch.from_numpy(fake_mnist_cached.arrays["train_images"][50:]).float() / 255
    torch.testing.assert_close(_crop(ds.images, plan.digit_pos), valid_digits[plan.digit])
    assert torch.isclose(ds.images.sum(), valid_digits.sum())  # nothing outside the digit


def test_cluttered_fixed_sets_and_training_on_the_fly(fake_mnist_cached):
    root = fake_mnist_cached.root
    a = get_dataset("cluttered_mnist", "test", root=root)
    b = get_dataset("cluttered_mnist", "test", root=root)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.epoch_images(5, 9)[0], a.images)  # fixed: the epoch does not matter
    train = get_dataset("cluttered_mnist", "train", root=root, size=60)
    e1, l1 = train.epoch_images(1, 0)
    e2, l2 = train.epoch_images(2, 0)
    assert e1.shape == (50, 1, 60, 60) and not torch.equal(e1, e2)
    # Batches built one at a time are the same images as the whole epoch (shuffled order).
    order = torch.randperm(50, generator=torch.Generator().manual_seed(derive_seed(0, 2, 1)))  # as in batches()
    got = torch.cat([x for x, _ in train.batches(16, epoch=2, seed=0, shuffle=True)])
    labels = torch.cat([y for _, y in train.batches(16, epoch=2, seed=0, shuffle=True)])
    assert torch.equal(got, e2[order]) and torch.equal(labels, l2[order])
    fixed = get_dataset("cluttered_mnist", "train", root=root, size=60, on_the_fly=False)
    assert torch.equal(fixed.epoch_images(1, 0)[0], fixed.epoch_images(2, 0)[0])
    with pytest.raises(ValueError, match="no default distractor count"):
        get_dataset("cluttered_mnist", "test", root=root, size=80)


def test_two_digit_overlap_is_added_and_clipped():
    pool = torch.zeros(2, 28, 28, dtype=torch.uint8)
    pool[0, :, :14] = 200
    pool[1, :, 7:21] = 100
    plan = TwoDigitPlan(digits=torch.tensor([[0, 1]]), positions=torch.tensor([[[3, 5], [3, 5]]]), noise_seed=1)
    img = render_two_digit(pool, plan, torch.tensor([0]), size=60, binarize=False)[0, 0]
    window = img[3:31, 5:33]
    torch.testing.assert_close(window[:, :7], torch.full((28, 7), 200 / 255))
    torch.testing.assert_close(window[:, 7:14], torch.ones(28, 7))  # 200 + 100 > 255: clipped to 1
    torch.testing.assert_close(window[:, 14:21], torch.full((28, 7), 100 / 255))
    assert img.sum() == pytest.approx(window.sum().item())


def test_two_digit_mnist(fake_mnist_cached):
    root = fake_mnist_cached.root
    grey = get_dataset("two_digit_mnist", "valid", root=root, binarize=False)
    assert grey.images.shape == (10, 1, 60, 60) and grey.images.max() <= 1
    plan = grey.plan(0, 0)
    pool = torch.from_numpy(fake_mnist_cached.arrays["train_images"][50:]).float() / 255
    for k in range(2):
        assert (_crop(grey.images, plan.positions[:, k]) >= pool[plan.digits[:, k]] - 1e-6).all()
    pool_labels = torch.from_numpy(fake_mnist_cached.arrays["train_labels"][50:]).long()
    torch.testing.assert_close(grey.labels, pool_labels[plan.digits[:, 0]] * 10 + pool_labels[plan.digits[:, 1]])

    binary = get_dataset("two_digit_mnist", "valid", root=root)
    assert set(torch.unique(binary.images).tolist()) == {0.0, 1.0}
    assert torch.equal(binary.images, get_dataset("two_digit_mnist", "valid", root=root).images)
    # Sampled, not thresholded: ones appear only where there is ink, at about the ink's frequency.
    assert (binary.images[grey.images == 0] == 0).all()
    assert abs(binary.images.mean().item() - grey.images.mean().item()) < 0.02
    train = get_dataset("two_digit_mnist", "train", root=root)
    x0, _ = train.epoch_images(0, 1)
    x1, _ = train.epoch_images(1, 1)
    assert not torch.equal(x0, x1)
    batch, _ = next(train.batches(7, epoch=1, seed=1))
    assert torch.equal(batch, x1[:7])


def test_pixel_uniforms_match_the_documented_rule():
    from drawnet.data.clutter import pixel_uniforms

    def splitmix64_output(k: int, seed: int) -> int:  # output number k, from the definition
        m = (1 << 64) - 1
        z = (seed + (k + 1) * 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    idx, pixels, seed = torch.tensor([0, 3, 49_999]), 3600, 0xDEADBEEF
    u = pixel_uniforms(idx, pixels, seed)
    for row, i in enumerate(idx.tolist()):
        for p in (0, 1, 1799, 3599):
            assert u[row, p].item() == (splitmix64_output(i * pixels + p, seed) >> 11) / 2**53
    big = pixel_uniforms(torch.arange(200), 3600, 7)
    assert 0 <= big.min() and big.max() < 1 and abs(big.mean().item() - 0.5) < 0.002
    assert abs((big < 0.13).float().mean().item() - 0.13) < 0.002


def _real_mnist_present() -> bool:
    from drawnet.data import cache_root, mnist
    from drawnet.data.cache import is_valid

    folder = cache_root() / "mnist"
    return all(is_valid(folder / f.raw.name, f.raw) for f in mnist.MNIST.files.values())


@pytest.mark.skipif(not _real_mnist_present(), reason="real MNIST not in the cache (drawnet data fetch mnist)")
def test_real_cluttered_test_set(no_network):
    ds = get_dataset("cluttered_mnist", "test", n=500)
    plan = ds.plan(0, 0)
    grey = get_dataset("mnist", "test")
    assert ds.images.shape == (500, 1, 100, 100)
    torch.testing.assert_close(ds.labels, grey.labels[plan.digit])
    assert (_crop(ds.images, plan.digit_pos) >= grey.images[plan.digit, 0] - 1e-6).all()
    # 8 distractors of 8x8 add ink outside the digit's window.
    assert ds.images.sum() > grey.images[plan.digit].sum() * 1.05
