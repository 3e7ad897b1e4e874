"""SVHN (Netzer et al. 2011), in the two formats the experiments use.

``svhn``: DRAW 4.4, the preparation of Goodfellow et al. 2013 on format 1 (full house-number
images with digit boxes; ``train.tar.gz``, ``extra.tar.gz``, ``test.tar.gz``, each with PNGs and a
MATLAB v7.3 ``digitStruct.mat``): take the box around all digits, expand it by 30 % in x and y,
crop (clipped to the image), resize to 64x64. Images with more than five digits are dropped, as
Goodfellow et al. do (one image of the training set): train + extra then hold 235,754 images, of
which 4,701 (a fixed seeded choice) form the validation split, leaving the paper's 231,053 for
training. Training images are random 54x54 crops, drawn afresh every epoch; valid and test use
the centre crop. Preparing the PNGs is done once (``drawnet data fetch svhn``) and cached as uint8
arrays; batches are cropped and converted per batch, never the whole set as float32.

``svhn_cropped``: the 32x32 cropped-digit format (``train_32x32.mat`` etc., MAT v5, read with
scipy), labels 0-9 (the files' label 10 means digit 0). valid = a fixed seeded 5,000 of train;
``extra=True`` adds ``extra_32x32.mat`` to the training split.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .base import ImageDataset, OnTheFlyDataset, derive_seed
from .cache import RawFile, cache_root, fetch_from_mirrors, install_verified, is_valid, staged
from .mnist import SPLITS

BASE_URL = "http://ufldl.stanford.edu/housenumbers/"

# Format 1 archives. The sha256s of train/test are those listed by mindee/doctr's SVHN loader;
# they could not be checked from this machine. No checksum for extra.tar.gz is known to us:
# it is "trust on first use" (its sha256 is recorded when first downloaded, and checked after).
FORMAT1 = {
    "train": RawFile("train.tar.gz", None, sha256="4b17bb33b6cd8f963493168f80143da956f28ec406cc12f8e5745a9f91a51898"),
    "test": RawFile("test.tar.gz", None, sha256="57ac9ceb530e4aa85b55d991be8fc49c695b3d71c6f6a88afea86549efde7fb5"),
    "extra": RawFile("extra.tar.gz", None, pinned=False),
}
# Cropped format: md5s as published with torchvision's SVHN loader; sizes not pinned (the md5 decides).
CROPPED = {
    "train": RawFile("train_32x32.mat", None, md5="e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": RawFile("test_32x32.mat", None, md5="eb5a983be6a315427106f1b164d9cef3"),
    "extra": RawFile("extra_32x32.mat", None, md5="a93ce644f1a588dc4d68dda5feec44a7"),
}

PREPARED_SIZE = 64  # Goodfellow et al.: resize the expanded box to 64x64
CROP = 54  # random 54x54 training crops, centre crops for evaluation
EXPAND = 0.30  # the box around all digits grows by 30 % in x and in y
MAX_DIGITS = 5
NUM_VALID = 4701  # DRAW 4.4: 4,701 validation images
VALID_SEED = 20130101  # seed of the held-out validation choice (Goodfellow et al. 2013)
PREPARED_VERSION = 1  # bump when the preparation changes; the cache file name carries it


def svhn_dir(root=None) -> Path:
    return cache_root(root) / "svhn"


def fetch_svhn_file(spec: RawFile, root=None, source=None) -> Path:
    """One verified SVHN file in the cache, downloaded (or copied from folder ``source``) if needed."""
    dest = svhn_dir(root) / spec.name
    if is_valid(dest, spec):
        return dest
    if source is not None:
        src = Path(source).expanduser() / spec.name
        if not src.is_file():
            raise FileNotFoundError(f"{src}: not found; put {spec.name} from {BASE_URL} in that folder")
        install_verified(dest, spec, lambda tmp: shutil.copyfile(src, tmp))
        return dest
    tried: list[str] = []
    if fetch_from_mirrors(dest, spec, [BASE_URL + spec.name], tried):
        return dest
    raise FileNotFoundError(
        f"could not download {spec.name}. Tried:\n  " + "\n  ".join(tried)
        + "\nDownload it by hand into a folder and run `drawnet data fetch svhn --from FOLDER`."
    )


# ---- format 1: digitStruct.mat and the 64x64 preparation ------------------------------------------


def read_digit_struct(path_or_file) -> tuple[list[str], list[np.ndarray]]:
    """Parse a MATLAB v7.3 ``digitStruct.mat``: file names and per-image boxes.

    Layout: ``/digitStruct/name`` (N, 1) references to uint16 character arrays;
    ``/digitStruct/bbox`` (N, 1) references to groups with datasets label, left, top, width, height,
    each (k, 1): the values themselves when k = 1, else references to (1, 1) datasets.
    Returns names and boxes as float64 arrays (k, 5) of (label, left, top, width, height).
    """
    import h5py

    try:
        f = h5py.File(path_or_file, "r")
    except OSError as err:
        raise ValueError(f"{path_or_file}: not an HDF5 (MATLAB v7.3) file ({err})") from err
    with f:
        if "digitStruct" not in f or "name" not in f["digitStruct"] or "bbox" not in f["digitStruct"]:
            raise ValueError(f"{path_or_file}: no /digitStruct/name and /digitStruct/bbox; not an SVHN digitStruct.mat")
        names_ref, boxes_ref = f["digitStruct/name"], f["digitStruct/bbox"]
        names, boxes = [], []
        for i in range(names_ref.shape[0]):
            names.append("".join(map(chr, f[names_ref[i, 0]][()].reshape(-1))))
            group = f[boxes_ref[i, 0]]
            fields = []
            for key in ("label", "left", "top", "width", "height"):
                data = group[key]
                if data.dtype == h5py.ref_dtype or data.dtype.kind == "O":
                    fields.append([float(f[r][()].reshape(-1)[0]) for r in data[()].reshape(-1)])
                else:
                    fields.append([float(v) for v in data[()].reshape(-1)])
            boxes.append(np.array(fields, dtype=np.float64).T)  # (k, 5)
    return names, boxes


def expanded_box(boxes: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The box around all digit boxes, grown by 30 % in x and y about its centre, clipped to the image."""
    left, top = boxes[:, 1].min(), boxes[:, 2].min()
    right, bottom = (boxes[:, 1] + boxes[:, 3]).max(), (boxes[:, 2] + boxes[:, 4]).max()
    cx, cy = (left + right) / 2, (top + bottom) / 2
    half_w, half_h = (right - left) * (1 + EXPAND) / 2, (bottom - top) * (1 + EXPAND) / 2
    # Departure: Goodfellow et al. do not say what happens at the border; we clip to the image.
    x0, y0 = max(0, int(round(cx - half_w))), max(0, int(round(cy - half_h)))
    x1, y1 = min(width, int(round(cx + half_w))), min(height, int(round(cy + half_h)))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty digit box {boxes.tolist()} in a {width}x{height} image")
    return x0, y0, x1, y1


def prepare_image(png: bytes, boxes: np.ndarray, size: int = PREPARED_SIZE) -> np.ndarray:
    """One image: crop to the expanded box, resize to ``size`` x ``size``; uint8 (3, size, size)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        im = im.convert("RGB")
        crop = im.crop(expanded_box(boxes, *im.size)).resize((size, size), Image.BILINEAR)
        return np.asarray(crop, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


def digit_sequences(boxes: list[np.ndarray]) -> np.ndarray:
    """(N, MAX_DIGITS) int64 digit labels, -1 padded; SVHN's label 10 means digit 0."""
    out = np.full((len(boxes), MAX_DIGITS), -1, dtype=np.int64)
    for i, b in enumerate(boxes):
        labels = b[:MAX_DIGITS, 0].astype(np.int64) % 10
        out[i, : labels.shape[0]] = labels
    return out


def prepare_format1(archive: Path, out: Path) -> Path:
    """Prepare one format 1 archive into ``out`` (.npz: images (N, 3, 64, 64) uint8, sequences (N, 5)).

    Two passes over the archive: the first reads ``digitStruct.mat``, the second the PNGs in file
    order; nothing is extracted to disk except the .mat, into a temporary folder.
    """
    try:
        with tempfile.TemporaryDirectory(prefix="drawnet-svhn-") as tmpdir:
            mat = Path(tmpdir) / "digitStruct.mat"
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    if member.isfile() and Path(member.name).name == "digitStruct.mat":
                        with open(mat, "wb") as f:
                            shutil.copyfileobj(tar.extractfile(member), f)
                        break
            if not mat.is_file():
                raise ValueError(f"{archive}: no digitStruct.mat inside; not an SVHN format 1 archive")
            names, boxes = read_digit_struct(mat)
        keep = [i for i, b in enumerate(boxes) if b.shape[0] <= MAX_DIGITS]
        position = {names[i]: j for j, i in enumerate(keep)}
        images = np.zeros((len(keep), 3, PREPARED_SIZE, PREPARED_SIZE), dtype=np.uint8)
        seen = np.zeros(len(keep), dtype=bool)
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                j = position.get(Path(member.name).name)
                if j is not None and member.isfile():
                    images[j] = prepare_image(tar.extractfile(member).read(), boxes[keep[j]])
                    seen[j] = True
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(f"{archive}: unreadable archive ({err}); delete it and fetch again") from err
    if not seen.all():
        missing = [names[keep[j]] for j in np.flatnonzero(~seen)[:5]]
        raise ValueError(f"{archive}: {int((~seen).sum())} images named in digitStruct.mat are missing, e.g. {missing}")
    sequences = digit_sequences([boxes[i] for i in keep])
    with staged(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, sequences=sequences, dropped=len(boxes) - len(keep))
    return out


def prepared_path(part: str, root=None) -> Path:
    return svhn_dir(root) / f"prepared_v{PREPARED_VERSION}_{part}_{PREPARED_SIZE}.npz"


def load_prepared(part: str, root=None, source=None) -> tuple[np.ndarray, np.ndarray]:
    """Prepared (images, sequences) of format 1 part ``part`` (train / extra / test), preparing if needed."""
    path = prepared_path(part, root)
    if not path.is_file():
        prepare_format1(fetch_svhn_file(FORMAT1[part], root, source), path)
    try:
        with np.load(path) as z:
            return z["images"], z["sequences"]
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(
            f"{path}: unreadable prepared SVHN file ({err}); delete it and run drawnet data fetch svhn"
        ) from err


class CropPlan(NamedTuple):
    offsets: Tensor  # (n, 2) top-left (y, x) of each crop inside the prepared image


class SVHNCrops(OnTheFlyDataset):
    """Prepared SVHN images (uint8, kept compact) cropped per batch: random crops or centre crops."""

    def __init__(self, split: str, images: Tensor, sequences: Tensor, *, crop: int, random_crops: bool):
        N, C, H, W = images.shape
        super().__init__("svhn", split, N, (C, crop, crop), None)
        self.prepared = images  # (N, 3, 64, 64) uint8
        self.sequences = sequences  # (N, 5) digit labels, -1 padded
        self.crop, self.random_crops = crop, random_crops

    def plan(self, epoch: int, seed: int) -> CropPlan:
        N, _, H, W = self.prepared.shape
        if not self.random_crops:
            return CropPlan(torch.tensor([(H - self.crop) // 2, (W - self.crop) // 2]).expand(N, 2))
        g = torch.Generator().manual_seed(derive_seed(seed, epoch, 0x54))
        return CropPlan(torch.randint(0, H - self.crop + 1, (N, 2), generator=g))

    def build(self, plan: CropPlan, idx: Tensor):
        C = self.prepared.shape[1]
        rows = plan.offsets[idx, 0, None] + torch.arange(self.crop)  # (B, crop)
        cols = plan.offsets[idx, 1, None] + torch.arange(self.crop)  # (B, crop)
        x = self.prepared[idx[:, None, None, None], torch.arange(C)[None, :, None, None],
                          rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, crop, crop)
        return x.float().div_(255.0), None


def _valid_choice(n: int) -> np.ndarray:
    g = torch.Generator().manual_seed(VALID_SEED)
    return torch.randperm(n, generator=g)[:NUM_VALID].sort().values.numpy()


def svhn(split: str, *, root=None, source=None) -> SVHNCrops:
    """SVHN multi-digit, 54x54x3 crops of the 64x64 preparation (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if split == "test":
        images, sequences = load_prepared("test", root, source)
    else:
        parts = [load_prepared(p, root, source) for p in ("train", "extra")]
        images = np.concatenate([p[0] for p in parts])
        sequences = np.concatenate([p[1] for p in parts])
        held = np.zeros(images.shape[0], dtype=bool)
        held[_valid_choice(images.shape[0])] = True
        pick = held if split == "valid" else ~held
        images, sequences = images[pick], sequences[pick]
    return SVHNCrops(split, torch.from_numpy(images), torch.from_numpy(sequences), crop=CROP,
                     random_crops=split == "train")


# ---- the 32x32 cropped-digit format ----------------------------------------------------------------


def read_cropped_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1) of a ``*_32x32.mat`` -> images (N, 3, 32, 32), labels 0-9."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise
    except (scipy.io.matlab.MatReadError, ValueError, OSError, TypeError, IndexError, KeyError, EOFError) as err:
        raise ValueError(f"{path}: not a readable MAT v5 file ({err}); delete it and fetch again") from err
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path}: expected variables X and y (SVHN cropped format), found {sorted(mat)}")
    X, y = mat["X"], mat["y"].reshape(-1)
    if X.ndim != 4 or X.shape[:3] != (32, 32, 3) or X.shape[3] != y.shape[0]:
        raise ValueError(f"{path}: X {X.shape} / y {y.shape}; expected (32, 32, 3, N) and (N, 1)")
    if y.min() < 1 or y.max() > 10:
        raise ValueError(f"{path}: labels outside 1-10 (min {y.min()}, max {y.max()})")
    images = np.ascontiguousarray(X.transpose(3, 2, 0, 1), dtype=np.uint8)  # (32, 32, 3, N) -> (N, 3, 32, 32)
    return images, (y.astype(np.int64) % 10)


def svhn_cropped(split: str, *, root=None, source=None, extra: bool = False, valid_size: int = 5000) -> ImageDataset:
    """SVHN cropped digits, (N, 3, 32, 32) float32 in [0, 1], labels 0-9."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if split == "test":
        images, labels = read_cropped_mat(fetch_svhn_file(CROPPED["test"], root, source))
    else:
        images, labels = read_cropped_mat(fetch_svhn_file(CROPPED["train"], root, source))
        if not 0 < valid_size < images.shape[0]:
            raise ValueError(f"svhn_cropped: valid_size must be in 1..{images.shape[0] - 1}, got {valid_size}")
        g = torch.Generator().manual_seed(VALID_SEED)
        order = torch.randperm(images.shape[0], generator=g).numpy()
        pick = order[:valid_size] if split == "valid" else np.sort(order[valid_size:])
        images, labels = images[np.sort(pick)], labels[np.sort(pick)]
        if split == "train" and extra:
            x, y = read_cropped_mat(fetch_svhn_file(CROPPED["extra"], root, source))
            images, labels = np.concatenate([images, x]), np.concatenate([labels, y])
    x = torch.from_numpy(images).float().div_(255.0)
    return ImageDataset("svhn_cropped", split, x, torch.from_numpy(labels), 10)
