"""Your own images (drawnet.data.custom): folders and arrays written by the tests, the seeded split,
the options, the decoded-image cache, every bad input; and binarized Fashion-MNIST."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_mnist import splitmix64_reference

from drawnet.data import class_names, custom, get_dataset, mnist
from drawnet.data.cache import RawFile
from drawnet.data.idx import idx_bytes


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own empty data cache and a fresh in-process memo."""
    monkeypatch.setenv("DRAWNET_DATA", str(tmp_path / "cache"))
    custom._MEMO.clear()
    yield
    custom._MEMO.clear()


def write_images(folder, arrays, suffix=".png"):
    """Save uint8 arrays (H, W) or (H, W, 3) as image files 00.png, 01.png, ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i:02d}{suffix}")


def grey(n, h=6, w=5, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8))


def load(split, path, **options):
    return get_dataset("images", split, path=str(path), **options)


def all_splits(path, **options):
    return {s: load(s, path, **options) for s in ("train", "valid", "test")}


# ------------------------------------------------------------------------------------- folders
def test_flat_folder_is_unlabelled_and_splits_cover_it_once(tmp_path):
    arrays = grey(20)
    write_images(tmp_path / "pics", arrays)
    splits = all_splits(tmp_path / "pics")
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [16, 2, 2]
    assert all(d.labels is None and d.image_shape == (1, 6, 5) for d in splits.values())
    got = torch.cat([d.images for d in splits.values()])
    expected = torch.from_numpy(np.stack(arrays)).float()[:, None] / 255  # lossless PNG: the written pixels
    assert got.shape == expected.shape
    # every written image appears exactly once over the three splits
    matches = (got.flatten(1)[:, None] == expected.flatten(1)[None]).all(-1)
    assert (matches.sum(0) == 1).all() and (matches.sum(1) == 1).all()


def test_split_is_the_documented_ranking_and_deterministic(tmp_path):
    write_images(tmp_path / "pics", grey(30))
    for seed in (0, 7):
        # independent of the numpy code: rank the indices by SplitMix64(seed) written in Python
        ranks = sorted(range(30), key=lambda i: splitmix64_reference(seed, 30)[i])
        expected = {"test": sorted(ranks[:3]), "valid": sorted(ranks[3:6]), "train": sorted(ranks[6:])}
        assert {k: v.tolist() for k, v in custom.split_indices(30, seed, 0.1, 0.1).items()} == expected
    a = all_splits(tmp_path / "pics", split_seed=3)
    custom._MEMO.clear()
    b = all_splits(tmp_path / "pics", split_seed=3, cache=False)
    c = all_splits(tmp_path / "pics", split_seed=4)
    for s in a:
        torch.testing.assert_close(a[s].images, b[s].images, rtol=0, atol=0)
    assert not torch.equal(a["test"].images, c["test"].images)
    assert custom.split_indices(30, 0, 0.2, 0.1)["valid"].size == 6


def test_class_folders_give_labels_in_sorted_name_order(tmp_path):
    root = tmp_path / "pets"
    write_images(root / "dog", grey(6, seed=1))
    write_images(root / "cat", grey(4, seed=2))
    write_images(root / "cat" / "more", grey(2, seed=3))  # searched recursively, as ImageFolder does
    (root / "dog" / "notes.txt").write_text("not an image")  # ignored
    (root / ".hidden").mkdir()  # ignored
    splits = all_splits(root)
    labels = torch.cat([d.labels for d in splits.values()])
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 6
    d = splits["train"]
    assert d.num_classes == 2 and d.class_names == ["cat", "dog"]
    assert class_names("images", path=str(root)) == ["cat", "dog"]
    # each image carries its own folder's label
    dogs = torch.from_numpy(np.stack(grey(6, seed=1))).float()[:, None] / 255
    for x, y in zip(d.images, d.labels, strict=True):
        assert bool((x[None] == dogs).flatten(1).all(1).any()) == (y.item() == 1)


def test_given_split_folders_are_used_and_a_missing_one_is_carved(tmp_path):
    root = tmp_path / "data"
    for split, n in (("train", 10), ("val", 3), ("test", 4)):
        write_images(root / split / "a", grey(n, seed=n))
        write_images(root / split / "b", grey(n, seed=n + 50))
    splits = all_splits(root)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [20, 6, 8]
    assert splits["test"].class_names == ["a", "b"]
    (root / "test" / "a").rename(tmp_path / "gone_a")
    (root / "test" / "b").rename(tmp_path / "gone_b")
    (root / "test").rmdir()
    custom._MEMO.clear()
    splits = all_splits(root)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [18, 6, 2]  # test carved from train/
    train, test = splits["train"].images.flatten(1), splits["test"].images.flatten(1)
    assert not (train[:, None] == test[None]).all(-1).any()


def test_size_resizes_to_cover_then_crops_the_centre(tmp_path):
    tall = np.zeros((20, 10), np.uint8)
    tall[5:15] = 255  # the centre 10 x 10 is white, the rest black
    wide = np.full((8, 16), 90, np.uint8)  # a constant image stays constant
    write_images(tmp_path / "pics", [tall, wide] + [wide] * 3)
    d = torch.cat([x.images for x in all_splits(tmp_path / "pics", size=10).values()])
    assert d.shape == (5, 1, 10, 10)
    white = d.flatten(1).min(1).values == 1
    assert white.sum() == 1  # the tall image: only its white centre is left
    others = d[~white]
    torch.testing.assert_close(others, torch.full_like(others, 90 / 255), rtol=0, atol=1 / 255)


def test_channels_grey_and_rgb(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    write_images(tmp_path / "colour", list(rgb))
    auto = torch.cat([x.images for x in all_splits(tmp_path / "colour").values()])
    assert auto.shape[1] == 3
    as_grey = torch.cat([x.images for x in all_splits(tmp_path / "colour", channels=1).values()])
    luma = (rgb.astype(np.float64) @ [0.299, 0.587, 0.114]) / 255  # ITU-R 601-2, as documented
    got = np.sort(as_grey.numpy().reshape(5, -1), axis=0)
    np.testing.assert_allclose(got, np.sort(luma.reshape(5, -1), axis=0), atol=1.01 / 255)
    write_images(tmp_path / "grey", grey(5))
    assert load("train", tmp_path / "grey").image_shape[0] == 1
    assert load("train", tmp_path / "grey", channels=3).image_shape[0] == 3


# -------------------------------------------------------------------------------------- arrays
def test_npy_npz_and_a_separate_labels_file(tmp_path):
    rng = np.random.default_rng(5)
    u8 = rng.integers(0, 256, (20, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 20)
    np.save(tmp_path / "u8.npy", u8)
    np.save(tmp_path / "labels.npy", labels)
    np.savez(tmp_path / "f.npz", images=(u8[..., None] / 255.0).astype(np.float32), labels=labels)
    a = all_splits(tmp_path / "u8.npy", labels=str(tmp_path / "labels.npy"))
    b = all_splits(tmp_path / "f.npz")
    for s in a:
        torch.testing.assert_close(a[s].images, b[s].images, rtol=0, atol=1e-7)
        assert torch.equal(a[s].labels, b[s].labels) and a[s].num_classes == int(labels.max()) + 1
    whole = torch.cat([a[s].images for s in a]).flatten(1)
    assert whole.shape == (20, 12)
    assert sorted(whole.sum(1).tolist()) == pytest.approx(sorted((u8 / 255).reshape(20, -1).sum(1)), abs=1e-4)
    rgb = rng.random((12, 4, 4, 3)).astype(np.float32)
    np.save(tmp_path / "rgb.npy", rgb)
    d = load("train", tmp_path / "rgb.npy", size=[2, 2], channels=1)
    assert d.image_shape == (1, 2, 2) and d.labels is None


def test_binarize_fixed_and_dynamic(tmp_path):
    np.save(tmp_path / "x.npy", np.full((40, 10, 10), 0.3, np.float32))
    fixed = all_splits(tmp_path / "x.npy", binarize="fixed")
    again = all_splits(tmp_path / "x.npy", binarize="fixed")
    for s in fixed:
        assert set(fixed[s].images.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(fixed[s].images, again[s].images)
    ones = torch.cat([d.images for d in fixed.values()]).mean().item()
    assert abs(ones - 0.3) < 0.03  # sampled with the intensity, not thresholded (which would give 0)
    dyn = all_splits(tmp_path / "x.npy", binarize="dynamic")
    assert torch.equal(dyn["valid"].images, fixed["valid"].images)  # valid / test stay fixed
    e0, _ = dyn["train"].epoch_images(0, 0)
    e1, _ = dyn["train"].epoch_images(1, 0)
    assert not torch.equal(e0, e1) and torch.equal(dyn["train"].images, fixed["train"].images)


# ------------------------------------------------------------------------------ the decoded cache
def test_a_folder_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    write_images(tmp_path / "pics", grey(10))
    first = load("train", tmp_path / "pics")
    cached = list((tmp_path / "cache" / "images").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"
    custom._MEMO.clear()
    monkeypatch.setattr(custom, "_decode", lambda *a: pytest.fail("decoded again despite the cache"))
    assert torch.equal(load("train", tmp_path / "pics").images, first.images)
    # a changed file is noticed (size and modification time are in the key)
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(tmp_path / "pics" / "03.png")
    custom._MEMO.clear()
    with pytest.raises(pytest.fail.Exception, match="decoded again"):
        load("train", tmp_path / "pics")


def test_a_failed_cache_write_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    write_images(tmp_path / "pics", grey(10))

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(custom.np, "savez", broken_savez)
    d = load("train", tmp_path / "pics")  # training goes on without the cache
    assert len(d) == 8
    assert "could not cache" in capsys.readouterr().err
    assert list((tmp_path / "cache" / "images").iterdir()) == []  # no partial file, under any name


def test_a_progress_bar_while_decoding_takes_long(tmp_path, monkeypatch, capsys):
    write_images(tmp_path / "pics", grey(10))
    monkeypatch.setattr(custom, "PROGRESS_DELAY", 0.0)
    load("train", tmp_path / "pics")
    assert "decoding" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- bad input
def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    with pytest.raises(ValueError, match=r"empty: no images found .*put the images in it"):
        load("train", tmp_path / "empty")


def test_unreadable_and_truncated_images_are_named(tmp_path):
    write_images(tmp_path / "a", grey(5))
    (tmp_path / "a" / "broken.png").write_bytes(b"this is not a PNG at all")
    with pytest.raises(ValueError, match=r"broken\.png: cannot read this image .*replace or delete it"):
        load("train", tmp_path / "a")
    write_images(tmp_path / "b", grey(5, h=64, w=64))
    whole = (tmp_path / "b" / "00.png").read_bytes()
    (tmp_path / "b" / "00.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"00\.png: cannot read this image"):
        load("train", tmp_path / "b")


def test_images_of_different_sizes_need_a_size(tmp_path):
    write_images(tmp_path / "p", grey(4) + grey(1, h=7))
    with pytest.raises(ValueError, match=r"04\.png is 7x5 .* but .*00\.png is 6x5.*size=\[height, width\]"):
        load("train", tmp_path / "p")
    assert load("train", tmp_path / "p", size=[6, 5]).image_shape == (1, 6, 5)


@pytest.mark.parametrize("shape,match", [
    ((10, 28), r"images of shape \(10, 28\); expected \(N, H, W\) or \(N, H, W, C\)"),
    ((10, 4, 4, 5), r"with C = 1 or 3"),
    ((10, 3, 8, 8), r"channels-first: use np.moveaxis"),
    ((0, 4, 4), r"N >= 1"),
])
def test_array_of_the_wrong_dimensions(tmp_path, shape, match):
    np.save(tmp_path / "bad.npy", np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=r"bad\.npy: .*" + match):
        load("train", tmp_path / "bad.npy")


@pytest.mark.parametrize("values,match", [
    (np.full((10, 4, 4), 255.0), r"float image values in \[255, 255\]; expected \[0, 1\]"),
    (np.full((10, 4, 4), -0.5), r"values in \[-0.5, -0.5\]"),
    (np.full((10, 4, 4), np.nan), "NaN or infinite"),
    (np.zeros((10, 4, 4), np.int16), "dtype int16; expected uint8"),
])
def test_array_values_outside_0_1(tmp_path, values, match):
    np.save(tmp_path / "bad.npy", values)
    with pytest.raises(ValueError, match=r"bad\.npy: .*" + match):
        load("train", tmp_path / "bad.npy")


@pytest.mark.parametrize("labels,match", [
    (np.zeros(9, np.int64), r"labels of shape \(9,\) for 10 images"),
    (np.zeros((10, 2), np.int64), r"labels of shape \(10, 2\)"),
    (np.full(10, 0.5), "labels of dtype float64"),
    (np.full(10, -1), "negative label -1"),
])
def test_labels_that_do_not_match_the_images(tmp_path, labels, match):
    np.savez(tmp_path / "bad.npz", images=np.zeros((10, 4, 4), np.uint8), labels=labels)
    with pytest.raises(ValueError, match=r"bad\.npz: " + match):
        load("train", tmp_path / "bad.npz")
    np.save(tmp_path / "x.npy", np.zeros((10, 4, 4), np.uint8))
    np.save(tmp_path / "y.npy", labels)
    with pytest.raises(ValueError, match=r"y\.npy: " + match):
        load("train", tmp_path / "x.npy", labels=str(tmp_path / "y.npy"))


def test_folder_labels_that_do_not_match(tmp_path):
    write_images(tmp_path / "mixed" / "cat", grey(3))
    write_images(tmp_path / "mixed", grey(3))
    with pytest.raises(ValueError, match=r"mixed: holds both images .* and class sub-folders"):
        load("train", tmp_path / "mixed")
    write_images(tmp_path / "c" / "cat", grey(3))
    (tmp_path / "c" / "dog").mkdir()
    write_images(tmp_path / "c" / "dog" / "deeper", [])
    with pytest.raises(ValueError, match=r"dog: class folder with no images"):
        load("train", tmp_path / "c")
    write_images(tmp_path / "s" / "train" / "cat", grey(5))
    write_images(tmp_path / "s" / "test" / "bird", grey(2))
    with pytest.raises(ValueError, match=r"test: class folder\(s\) \['bird'\] do not exist in .*train"):
        load("train", tmp_path / "s")
    write_images(tmp_path / "t" / "train", grey(3))  # a class named "train" beside other classes
    write_images(tmp_path / "t" / "car", grey(3))
    with pytest.raises(ValueError, match=r"split layout .* and other folders \['car'\]"):
        load("train", tmp_path / "t")


def test_bad_options_and_paths(tmp_path):
    write_images(tmp_path / "p", grey(10))
    with pytest.raises(ValueError, match="needs data_options path"):
        get_dataset("images", "train")
    with pytest.raises(ValueError, match=r"unknown data option\(s\) \['resize'\]"):
        load("train", tmp_path / "p", resize=3)
    with pytest.raises(ValueError, match="nowhere: no such folder or file"):
        load("train", tmp_path / "nowhere")
    (tmp_path / "list.txt").write_text("a.png")
    with pytest.raises(ValueError, match=r"list\.txt: not a folder nor a \.npy/\.npz file"):
        load("train", tmp_path / "list.txt")
    for key, value in (("size", [3]), ("channels", 2), ("channels", True), ("binarize", "threshold"),
                       ("valid_fraction", 1.5), ("cache", "no")):
        with pytest.raises(ValueError, match=f"data option {key}"):
            load("train", tmp_path / "p", **{key: value})
    write_images(tmp_path / "few", grey(2))
    with pytest.raises(ValueError, match="2 images are too few to split"):
        load("train", tmp_path / "few")


def test_a_bad_folder_is_one_clear_cli_error(tmp_path, capsys):
    from drawnet.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["train", "--preset", "demo", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("drawnet: error: ") and "no images found" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- Fashion-MNIST
def test_binarized_fashion_mnist_is_binarized_as_mnist_is(fake_mnist, monkeypatch):
    """With the same IDX contents, binarized Fashion-MNIST equals binarized MNIST pixel for pixel
    (the same documented uniforms and numbering), and carries Fashion-MNIST's class names."""
    for key, array in fake_mnist.arrays.items():
        f = mnist.FASHION_MNIST.files[key]
        data = idx_bytes(array)
        raw = RawFile(f.raw.name, len(data), md5=hashlib.md5(data).hexdigest())
        monkeypatch.setitem(mnist.FASHION_MNIST.files, key, mnist.IdxFile(raw, f.gz))
    for split in ("train", "valid", "test"):
        a = get_dataset("binarized_mnist", split, root=fake_mnist.root, source=fake_mnist.files)
        b = get_dataset("binarized_fashion_mnist", split, root=fake_mnist.root, source=fake_mnist.files)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert b.name == "binarized_fashion_mnist" and b.class_names[0] == "T-shirt/top" and a.class_names[7] == "7"
    dyn = get_dataset("binarized_fashion_mnist", "train", root=fake_mnist.root, dynamic=True)
    assert not torch.equal(dyn.epoch_images(0, 0)[0], dyn.epoch_images(1, 0)[0])
