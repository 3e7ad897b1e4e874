"""CIFAR-10 from its binary version (``cifar-10-binary.tar.gz``; no pickle anywhere).

Each ``.bin`` member holds 10,000 records of 3073 bytes: one label byte (0-9), then the 32x32 red,
green and blue planes (1024 bytes each, row-major). The archive stays in the cache and is read
member by member (only the six expected member names; nothing is extracted to disk).

Splits: train = the first 45,000 training images, valid = the last 5,000 (``valid_size``), test =
``test_batch.bin``. DRAW (4.5) trains on all 50,000: pass ``valid_size=0`` for that (then there is
no valid split).
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np
import torch

from .base import ImageDataset
from .cache import RawFile, cache_root, fetch_from_mirrors, install_verified, is_valid
from .mnist import SPLITS

ARCHIVE = RawFile(
    "cifar-10-binary.tar.gz",
    170_052_171,
    md5="c32a1d4ab5d03f1284b67883e8d87530",  # published on https://www.cs.toronto.edu/~kriz/cifar.html
    sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
)
URLS = ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
MEMBER_DIR = "cifar-10-batches-bin"
TRAIN_MEMBERS = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_MEMBERS = ["test_batch.bin"]
RECORD = 1 + 3 * 32 * 32
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def archive_path(root=None) -> Path:
    return cache_root(root) / "cifar10" / ARCHIVE.name


def fetch_cifar10(root=None, source=None) -> Path:
    """The verified archive in the cache, downloaded (or copied from ``source``, a file or folder) if needed."""
    dest = archive_path(root)
    if is_valid(dest, ARCHIVE):
        return dest
    tried: list[str] = []
    if source is not None:
        src = Path(source).expanduser()
        src = src / ARCHIVE.name if src.is_dir() else src
        if not src.is_file():
            raise FileNotFoundError(f"{src}: not found (expected {ARCHIVE.name}, the CIFAR-10 binary version)")
        install_verified(dest, ARCHIVE, lambda tmp: shutil.copyfile(src, tmp))
        return dest
    if fetch_from_mirrors(dest, ARCHIVE, URLS, tried):
        return dest
    raise FileNotFoundError(
        "could not download CIFAR-10. Tried:\n  " + "\n  ".join(tried) + f"\nDownload {URLS[0]} by hand "
        f"({ARCHIVE.size} bytes, md5 {ARCHIVE.md5}) and run `drawnet data fetch cifar10 --from FILE`."
    )


def parse_cifar_records(data: bytes | bytearray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Records -> (images uint8 (N, 3, 32, 32), labels uint8 (N,))."""
    if len(data) == 0 or len(data) % RECORD:
        raise ValueError(
            f"{source}: {len(data)} bytes is not a whole number of {RECORD}-byte CIFAR-10 records "
            f"(1 label byte + 3072 pixel bytes); the file is truncated or not a CIFAR-10 binary batch"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)  # (N, 3073)
    labels = records[:, 0]
    if labels.max() > 9:
        raise ValueError(f"{source}: label byte {int(labels.max())} out of range 0-9; not a CIFAR-10 binary batch")
    images = records[:, 1:].reshape(-1, 3, 32, 32)  # (N, C, H, W): the planes are R, G, B, row-major
    return images, labels


def read_cifar_archive(path: Path, members: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the records of ``members`` (names inside ``cifar-10-batches-bin/``) of the archive."""
    images, labels = [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for name in members:
                member = tar.getmember(f"{MEMBER_DIR}/{name}")
                if not member.isfile():
                    raise ValueError(f"{path}: {MEMBER_DIR}/{name} is not a regular file")
                x, y = parse_cifar_records(bytearray(tar.extractfile(member).read()), f"{path}:{name}")
                images.append(x)
                labels.append(y)
    except KeyError as err:
        raise ValueError(
            f"{path}: member {err} missing; not the CIFAR-10 binary archive, delete it and fetch again"
        ) from err
    except (tarfile.TarError, EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable archive ({err}); delete it and fetch again") from err
    return np.concatenate(images), np.concatenate(labels)


def cifar10(split: str, *, root=None, source=None, valid_size: int = 5000) -> ImageDataset:
    """CIFAR-10, (N, 3, 32, 32) float32 in [0, 1], labels 0-9."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if not 0 <= valid_size < 50_000 or (split == "valid" and valid_size == 0):
        raise ValueError(f"cifar10: valid_size must be in 1..49999 for the valid split (0 only for train), "
                         f"got {valid_size}")
    path = fetch_cifar10(root, source)
    if split == "test":
        images, labels = read_cifar_archive(path, TEST_MEMBERS)
    else:
        images, labels = read_cifar_archive(path, TRAIN_MEMBERS)
        cut = images.shape[0] - valid_size
        images, labels = (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return ImageDataset("cifar10", split, x, torch.from_numpy(labels.astype(np.int64)), 10)
