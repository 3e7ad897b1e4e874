"""CIFAR-10 binary and SVHN (format 1 and cropped) on tiny files written in the real formats."""

from __future__ import annotations

import hashlib
import io
import tarfile

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from drawnet.data import cifar, get_dataset, svhn
from drawnet.data.cache import RawFile

# ---- CIFAR-10 ---------------------------------------------------------------------------------


def _cifar_records(labels, rng):
    images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    records = b"".join(bytes([y]) + img.tobytes() for y, img in zip(labels, images, strict=True))
    return records, images


def _tar_gz(path, members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch, no_network):
    rng = np.random.default_rng(0)
    members, train_images, train_labels = {}, [], []
    for i in range(1, 6):
        labels = rng.integers(0, 10, 4).tolist()
        records, images = _cifar_records(labels, rng)
        members[f"cifar-10-batches-bin/data_batch_{i}.bin"] = records
        train_images.append(images)
        train_labels += labels
    test_records, test_images = _cifar_records([9, 0, 3], rng)
    members["cifar-10-batches-bin/test_batch.bin"] = test_records
    members["cifar-10-batches-bin/batches.meta.txt"] = "\n".join(cifar.CLASSES).encode()
    source = tmp_path / "cifar-10-binary.tar.gz"
    data = _tar_gz(source, members)
    monkeypatch.setattr(cifar, "ARCHIVE", RawFile(cifar.ARCHIVE.name, len(data), md5=hashlib.md5(data).hexdigest()))
    return source, np.concatenate(train_images), np.array(train_labels), test_images


def test_cifar_record_layout_written_by_hand():
    # One record: label 7, red plane 0..1023 mod 256, green all 1, blue all 2.
    red = (np.arange(1024) % 256).astype(np.uint8)
    record = bytes([7]) + red.tobytes() + bytes([1]) * 1024 + bytes([2]) * 1024
    images, labels = cifar.parse_cifar_records(record, "r.bin")
    assert labels.tolist() == [7] and images.shape == (1, 3, 32, 32)
    assert images[0, 0, 1, 3] == (32 + 3) % 256  # row-major red plane
    assert (images[0, 1] == 1).all() and (images[0, 2] == 2).all()


def test_cifar_loader_from_fake_archive(fake_cifar, tmp_path):
    source, train_images, train_labels, test_images = fake_cifar
    root = tmp_path / "cache"
    cifar.fetch_cifar10(root, source)
    test = get_dataset("cifar10", "test", root=root)
    assert test.images.shape == (3, 3, 32, 32) and test.labels.tolist() == [9, 0, 3]
    torch.testing.assert_close(test.images, torch.from_numpy(test_images).float() / 255)
    train = get_dataset("cifar10", "train", root=root, valid_size=5)
    valid = get_dataset("cifar10", "valid", root=root, valid_size=5)
    assert (len(train), len(valid)) == (15, 5)
    torch.testing.assert_close(valid.images, torch.from_numpy(train_images[15:]).float() / 255)
    assert valid.labels.tolist() == train_labels[15:].tolist()
    assert len(get_dataset("cifar10", "train", root=root, valid_size=0)) == 20  # the paper's full training set
    with pytest.raises(ValueError, match="valid_size"):
        get_dataset("cifar10", "valid", root=root, valid_size=0)


def test_cifar_bad_inputs(fake_cifar, tmp_path):
    with pytest.raises(ValueError, match=r"r\.bin: 3000 bytes is not a whole number of 3073-byte"):
        cifar.parse_cifar_records(bytes(3000), "r.bin")
    with pytest.raises(ValueError, match="label byte 12 out of range"):
        cifar.parse_cifar_records(bytes([12]) + bytes(3072), "r.bin")
    source = fake_cifar[0]
    corrupt = tmp_path / "corrupt" / source.name
    corrupt.parent.mkdir()
    corrupt.write_bytes(source.read_bytes()[:-10] + bytes(10))
    with pytest.raises(ValueError, match=r"md5 .* expected .* for cifar-10-binary.tar.gz"):
        cifar.fetch_cifar10(tmp_path / "cache", corrupt)
    assert list((tmp_path / "cache" / "cifar10").iterdir()) == []
    with pytest.raises(FileNotFoundError, match=r"(?s)could not download CIFAR-10.*network disabled.*--from FILE"):
        cifar.fetch_cifar10(tmp_path / "cache")
    # An archive without the expected member.
    other = tmp_path / "other.tar.gz"
    _tar_gz(other, {"cifar-10-batches-bin/test_batch.bin": bytes([1]) + bytes(3072)})
    with pytest.raises(ValueError, match="data_batch_1.bin.*missing"):
        cifar.read_cifar_archive(other, cifar.TRAIN_MEMBERS)


# ---- SVHN cropped (MAT v5) ----------------------------------------------------------------------


def _cropped_mat(path, n, rng):
    X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
    y[0, 0] = 10  # SVHN's label for the digit 0
    scipy.io.savemat(path, {"X": X, "y": y})
    return X, y


def test_svhn_cropped_parser_and_loader(tmp_path, monkeypatch, no_network):
    rng = np.random.default_rng(1)
    files = tmp_path / "files"
    files.mkdir()
    X, y = _cropped_mat(files / "train_32x32.mat", 12, rng)
    _cropped_mat(files / "test_32x32.mat", 5, rng)
    images, labels = svhn.read_cropped_mat(files / "train_32x32.mat")
    assert images.shape == (12, 3, 32, 32)
    assert images[4, 2, 7, 9] == X[7, 9, 2, 4]  # X is (H, W, C, N)
    assert labels[0] == 0 and labels.tolist() == (y.reshape(-1) % 10).tolist()
    for part in ("train", "test"):
        data = (files / f"{part}_32x32.mat").read_bytes()
        spec = RawFile(f"{part}_32x32.mat", len(data), md5=hashlib.md5(data).hexdigest())
        monkeypatch.setitem(svhn.CROPPED, part, spec)
    root = tmp_path / "cache"
    train = get_dataset("svhn_cropped", "train", root=root, source=files, valid_size=3)
    valid = get_dataset("svhn_cropped", "valid", root=root, valid_size=3)
    assert (len(train), len(valid), len(get_dataset("svhn_cropped", "test", root=root, source=files))) == (9, 3, 5)
    assert train.images.shape[1:] == (3, 32, 32) and train.images.max() <= 1
    both = torch.cat([train.labels, valid.labels]).sort().values
    assert both.tolist() == sorted(labels.tolist())  # a partition of the training file


def test_svhn_cropped_bad_file(tmp_path):
    (tmp_path / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(50))
    with pytest.raises(ValueError, match="bad.mat"):
        svhn.read_cropped_mat(tmp_path / "bad.mat")
    scipy.io.savemat(tmp_path / "wrong.mat", {"X": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="expected variables X and y"):
        svhn.read_cropped_mat(tmp_path / "wrong.mat")


# ---- SVHN format 1 (PNGs + MATLAB v7.3 digitStruct.mat) --------------------------------------------


def write_digit_struct(path, names, boxes):
    """digitStruct.mat as MATLAB v7.3 writes it: HDF5 with a 512-byte MATLAB header, object references."""
    ref = h5py.ref_dtype
    with h5py.File(path, "w", userblock_size=512) as f:
        group = f.create_group("digitStruct")
        name_refs = group.create_dataset("name", (len(names), 1), dtype=ref)
        bbox_refs = group.create_dataset("bbox", (len(names), 1), dtype=ref)
        for i, (name, box) in enumerate(zip(names, boxes, strict=True)):
            chars = np.array([ord(c) for c in name], dtype=np.uint16).reshape(-1, 1)
            name_refs[i, 0] = f.create_dataset(f"#refs#/name{i}", data=chars).ref
            g = f.create_group(f"#refs#/bbox{i}")
            for col, key in enumerate(("label", "left", "top", "width", "height")):
                values = [float(b[col]) for b in box]
                if len(values) == 1:  # one digit: the value itself
                    g.create_dataset(key, data=np.array([[values[0]]]))
                else:  # several digits: references to 1x1 datasets
                    refs = [f.create_dataset(f"#refs#/b{i}{key}{j}", data=np.array([[v]])).ref
                            for j, v in enumerate(values)]
                    g.create_dataset(key, data=np.array(refs, dtype=ref).reshape(-1, 1))
            bbox_refs[i, 0] = g.ref
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .".ljust(116)
    with open(path, "r+b") as f:
        f.write(header + bytes(8) + b"\x00\x02IM")


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _format1_archive(path, part, specs):
    """specs: list of (image (H, W, 3) uint8, boxes [(label, left, top, width, height), ...])."""
    members = {f"{part}/{i + 1}.png": _png(img) for i, (img, _) in enumerate(specs)}
    mat = path.parent / f"{part}-digitStruct.mat"
    write_digit_struct(mat, [f"{i + 1}.png" for i in range(len(specs))], [b for _, b in specs])
    members[f"{part}/digitStruct.mat"] = mat.read_bytes()
    members[f"{part}/see_bboxes.m"] = b"% matlab script"
    return _tar_gz(path, members)


def _white_box_image():
    img = np.zeros((50, 100, 3), dtype=np.uint8)
    img[10:30, 30:50] = 255  # the digit box: left 30, top 10, width 20, height 20
    return img


def test_digit_struct_and_expanded_box(tmp_path):
    write_digit_struct(tmp_path / "d.mat", ["1.png", "2.png"],
                       [[(5, 30, 10, 20, 20)], [(1, 3, 4, 5, 6), (10, 9, 4, 5, 6)]])
    assert (tmp_path / "d.mat").read_bytes()[:10] == b"MATLAB 7.3"
    names, boxes = svhn.read_digit_struct(tmp_path / "d.mat")
    assert names == ["1.png", "2.png"]
    np.testing.assert_array_equal(boxes[1], [[1, 3, 4, 5, 6], [10, 9, 4, 5, 6]])
    assert svhn.digit_sequences(boxes).tolist() == [[5, -1, -1, -1, -1], [1, 0, -1, -1, -1]]
    # Box around all digits, grown 30 % about its centre: 20 -> 26 wide and high, centred on (40, 20).
    assert svhn.expanded_box(boxes[0], 100, 50) == (27, 7, 53, 33)
    assert svhn.expanded_box(np.array([[1, 0, 0, 10, 10]], float), 100, 50) == (0, 0, 12, 12)  # clipped
    with pytest.raises(ValueError, match="not an SVHN digitStruct.mat"):
        with h5py.File(tmp_path / "empty.mat", "w"):
            pass
        svhn.read_digit_struct(tmp_path / "empty.mat")


def test_svhn_format1_preparation_and_crops(tmp_path, monkeypatch, no_network):
    rng = np.random.default_rng(2)
    files = tmp_path / "files"
    files.mkdir()
    noise = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(8)]
    six_digits = [(d, 2 + 8 * d, 5, 6, 20) for d in range(1, 7)]
    specs = {
        "train": [(_white_box_image(), [(5, 30, 10, 20, 20)]), (noise[0], six_digits)]
        + [(noise[i], [(i, 10, 10, 20, 15), (10, 25, 12, 20, 15)]) for i in range(1, 4)],
        "extra": [(noise[i], [(i % 10, 5, 5, 30, 25)]) for i in range(4, 8)],
        "test": [(_white_box_image(), [(5, 30, 10, 20, 20)])],
    }
    for part, items in specs.items():
        data = _format1_archive(files / f"{part}.tar.gz", part, items)
        spec = RawFile(f"{part}.tar.gz", len(data), sha256=hashlib.sha256(data).hexdigest())
        monkeypatch.setitem(svhn.FORMAT1, part, spec)
    monkeypatch.setattr(svhn, "NUM_VALID", 2)
    root = tmp_path / "cache"

    images, sequences = svhn.load_prepared("train", root, files)
    assert images.shape == (4, 3, 64, 64) and images.dtype == np.uint8  # the six-digit image is dropped
    assert sequences[:, :2].tolist() == [[5, -1], [1, 0], [2, 0], [3, 0]]
    white = images[0]
    assert (white[:, 32, 32] == 255).all() and (white[:, 1, 1] == 0).all()  # digit in the middle, margin black
    assert svhn.prepared_path("train", root).is_file()
    for part in ("extra", "test"):
        svhn.load_prepared(part, root, files)

    train = get_dataset("svhn", "train", root=root)
    valid = get_dataset("svhn", "valid", root=root)
    test = get_dataset("svhn", "test", root=root)
    assert (len(train), len(valid), len(test)) == (6, 2, 1)
    assert train.image_shape == (3, 54, 54) == test.image_shape
    centre = torch.from_numpy(svhn.load_prepared("test", root)[0][:, :, 5:59, 5:59]).float() / 255
    torch.testing.assert_close(test.images, centre)
    e0, _ = train.epoch_images(0, 0)
    e1, _ = train.epoch_images(1, 0)
    assert e0.shape == (6, 3, 54, 54) and not torch.equal(e0, e1)  # random crops, new each epoch
    plan = train.plan(1, 0)
    assert int(plan.offsets.min()) >= 0 and int(plan.offsets.max()) <= 10
    y, x = plan.offsets[3].tolist()
    torch.testing.assert_close(e1[3], train.prepared[3, :, y : y + 54, x : x + 54].float() / 255)
    batch, labels = next(train.batches(4, epoch=1, seed=0))
    assert labels is None and torch.equal(batch, e1[:4])


def test_svhn_format1_archive_without_digit_struct(tmp_path):
    archive = tmp_path / "train.tar.gz"
    _tar_gz(archive, {"train/1.png": _png(np.zeros((4, 4, 3), np.uint8))})
    with pytest.raises(ValueError, match="no digitStruct.mat inside"):
        svhn.prepare_format1(archive, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()
