"""The standard static binarized MNIST of Larochelle & Murray (2011): ``binarized_mnist_{train,valid,
test}.amat``, the test set of the paper's Table 2 and of most published MNIST likelihoods.

Each ``.amat`` file is text: one image per line, 784 values ``0`` or ``1`` separated by spaces, in
row-major order (28 x 28); 50,000 / 10,000 / 10,000 lines. Sources, tried in order: a folder given
by the user (``source=DIR``, ``drawnet data fetch static_mnist --from DIR``), else the original
address (:data:`URL`). No checksum of the files themselves is published, so a downloaded file is
"trust on first use" (its sha256 is recorded beside it and checked on every later use), and its
*contents* are checked against published facts: the line count, that every value is 0 or 1, and
the md5 of the first ten images of each split as a (10, 1, 28, 28) uint8 array
(:data:`FIRST_TEN_MD5`, the values the Fuel library's tests check for its copy of these files).

This is not drawnet's own ``binarized_mnist`` (a documented, seeded sampling of the MNIST
intensities, whose training split can also be resampled every epoch): the two test sets are
different binarizations of the same 10,000 digits, and numbers on one are not numbers on the other.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import torch

from .base import ImageDataset
from .cache import RawFile, cache_root, fetch_from_mirrors, install_verified, is_valid, verify_file

URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
FOLDER = "static_mnist"
COUNTS = {"train": 50_000, "valid": 10_000, "test": 10_000}
FIRST_TEN_MD5 = {
    "train": "0922fefc9a9d097e3b086b89107fafce",
    "valid": "65e8099613162b3110a7618037011617",
    "test": "0fa539ed8cb008880a61be77f744f06a",
}
PIXELS = 28 * 28


def raw_file(split: str) -> RawFile:
    return RawFile(f"binarized_mnist_{split}.amat", None, pinned=False)


def parse_amat(path: Path, split: str, *, counts: dict[str, int] = COUNTS,
               first_ten_md5: dict[str, str] = FIRST_TEN_MD5) -> np.ndarray:
    """uint8 (N, 28, 28) images of one ``.amat`` file, after checking its contents."""
    data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    digit = (data == ord("0")) | (data == ord("1"))
    space = (data == ord(" ")) | (data == ord("\n")) | (data == ord("\r")) | (data == ord("\t"))
    if not np.all(digit | space):
        bad = int(np.flatnonzero(~(digit | space))[0])
        raise ValueError(f"{path}: byte {bad} is {chr(data[bad])!r}; an .amat file holds only 0, 1 and spaces")
    values = data[digit] - ord("0")
    lines = int(np.count_nonzero(data == ord("\n"))) + (0 if data.size == 0 or data[-1] == ord("\n") else 1)
    expected = counts[split]
    if values.size != expected * PIXELS or lines != expected:
        raise ValueError(
            f"{path}: {values.size} values on {lines} lines, expected {expected} images of {PIXELS} values "
            f"(one per line) for the {split} split; the file is truncated or not binarized_mnist_{split}.amat"
        )
    images = values.reshape(expected, 28, 28)
    digest = hashlib.md5(np.ascontiguousarray(images[:10]).tobytes(), usedforsecurity=False).hexdigest()
    if first_ten_md5.get(split) is not None and digest != first_ten_md5[split]:
        raise ValueError(
            f"{path}: its first ten images have md5 {digest}, the published binarized_mnist_{split}.amat has "
            f"{first_ten_md5[split]}; this is another binarization (delete it and fetch again)"
        )
    return images


def fetch_split(split: str, root=None, source=None) -> Path:
    """The verified ``.amat`` file of ``split`` in the cache (copied from ``source`` or downloaded)."""
    if split not in COUNTS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(COUNTS)}")
    spec = raw_file(split)
    dest = cache_root(root) / FOLDER / spec.name
    if is_valid(dest, spec):
        return dest
    if dest.exists():
        dest.unlink()  # its recorded checksum no longer matches: fetch it again
    if source is not None:
        src = Path(source).expanduser() / spec.name
        if not src.is_file():
            raise FileNotFoundError(f"{src}: not found (give the folder holding {spec.name})")
        parse_amat(src, split)  # check the contents before anything is cached
        install_verified(dest, spec, lambda tmp: shutil.copyfile(src, tmp))
        return dest
    tried: list[str] = []
    url = URL.format(split=split)
    if not fetch_from_mirrors(dest, spec, [url], tried):
        raise FileNotFoundError(
            f"could not download {spec.name}: {'; '.join(tried)}. Download it elsewhere from {url} and run "
            f"`drawnet data fetch static_mnist --from FOLDER`"
        )
    try:
        parse_amat(dest, split)
    except ValueError:
        dest.unlink(missing_ok=True)
        raise
    return dest


def fetch_all(root=None, source=None) -> None:
    for split in COUNTS:
        fetch_split(split, root, source)


def static_mnist(split: str, *, root=None, source=None) -> ImageDataset:
    """Larochelle's static binarized MNIST, 50k / 10k / 10k (no labels: the files have none)."""
    path = fetch_split(split, root, source)
    verify_file(path, raw_file(split))
    images = torch.from_numpy(parse_amat(path, split)).unsqueeze(1).float()  # (N, 1, 28, 28)
    return ImageDataset("static_mnist", split, images, None, None)


