"""Your own images: a folder of pictures or a ``.npy`` / ``.npz`` array, as in-memory splits.

``get_dataset("images", split, path=PATH, **options)``; ``drawnet train --data PATH`` sets
``data="images"`` and ``data_options={"path": PATH, ...}``, so the run's config.json records what
eval, sample and report need to load the same images again.

**A folder** (``path`` a directory) holds files that Pillow opens (PNG, JPEG, GIF, BMP, TIFF, WebP,
...; other files and names starting with "." are ignored), either

* directly in it: unlabelled images; or
* in one sub-folder per class (the convention of torchvision's ``ImageFolder``): the classes are
  the sub-folder names in sorted order, label k the k-th name; a class folder is searched
  recursively. Images beside class folders are an error (are they labelled or not?).

If the folder has a ``train/`` sub-folder, it is the split layout instead: ``train/``, ``valid/``
(or ``val/``) and ``test/``, each laid out as above with the classes of ``train/``; a split folder
that is missing is carved from ``train/`` as below.

**An array**: a ``.npy`` file, or a ``.npz`` file holding ``images`` (or a single array) and
optionally ``labels``; images (N, H, W) or (N, H, W, C) with C = 1 or 3, uint8 (0-255) or float in
[0, 1] (bool counts as 0/1); labels (N,) non-negative integers (classes 0 .. max). The labels of a
``.npy`` come from a separate ``.npy`` file given as the option ``labels``.

**The split** (where no split folders are given): the images are ranked by the SplitMix64 output
(:func:`drawnet.data.mnist.splitmix64`, seeded with ``split_seed``) of their index in the data
set's order (files sorted by path, or the array's rows); the first ``round(N * test_fraction)``
(at least 1) are the test split, the next ``round(N * valid_fraction)`` (at least 1) the
validation split, the rest the training split. The same files and options give the same split on
every machine, with any library version.

**Options**: ``size`` (an int or [height, width]: resize so the image covers the size, keeping its
aspect ratio, then crop the centre; antialiased bilinear, by Pillow for files and by PyTorch for
arrays), ``channels`` (1: grey, by ITU-R 601 luma as Pillow's "L"; 3: RGB; default: the data's own,
for a folder 1 if every image is grey, else 3), ``binarize`` ("none": the intensities are the
Bernoulli means of eq. 9, as the paper does for colour; "fixed": every pixel sampled once as
Bernoulli(intensity) with the documented uniforms of binarized MNIST, numbering the pixels of the
whole prepared data set in C order; "dynamic": the training split resampled every epoch, the
validation and test splits fixed as with "fixed"), ``labels``, ``valid_fraction`` /
``test_fraction`` (default 0.1 each), ``split_seed`` (default 0), ``cache`` and ``root``.

**Loading**: everything is read once into memory (a progress bar when decoding takes more than a
second). A folder's decoded images are also kept in the cache (``$DRAWNET_DATA/images/``, option
``root``; ``cache=False`` to skip), keyed by every file's path, size and modification time and by
the size and channel options, and written atomically (a temporary file renamed into place), so a
later run, eval or sample reads them back without decoding.

Bad input raises a ValueError that names the file and says how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import ImageDataset
from .cache import cache_root, staged
from .mnist import BINARIZATION_SEED, DynamicBinarizedDataset, binarize_fixed, splitmix64

NAME = "images"
SPLITS = ("train", "valid", "test")
SPLIT_FOLDERS = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}
BINARIZE = ("none", "fixed", "dynamic")
CACHE_FOLDER = "images"
CACHE_VERSION = 1
PROGRESS_DELAY = 1.0  # seconds of decoding before a progress bar appears
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
OPTIONS = ("path", "size", "channels", "binarize", "labels", "valid_fraction", "test_fraction", "split_seed",
           "cache", "root")


@dataclass
class Prepared:
    """A whole data set, prepared: every split's images before binarization."""

    images: np.ndarray  # (N, C, H, W), uint8 (folders, uint8 arrays) or float32 in [0, 1]
    labels: np.ndarray | None  # (N,) int64, or None when unlabelled
    split_of: np.ndarray | None  # (N,) index into SPLITS of each image (split folders), or None
    class_names: list[str] | None  # folder class names (index = label), None for arrays
    binary: np.ndarray | None = None  # the fixed binarization of ``images``, made when first asked for


# ------------------------------------------------------------------------------------ options
def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown data option(s) {unknown} for data set {NAME!r}; valid options: {', '.join(OPTIONS)}")
    path = options.get("path")
    if path is None:
        raise ValueError(f"data set {NAME!r} needs data_options path (a folder of images or a .npy/.npz file); "
                         f"from the command line: drawnet train --data PATH")
    size = options.get("size")
    if size is not None:
        pair = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair)):
            raise ValueError(f"data option size={size!r} is invalid: give one positive int or [height, width]")
        size = (int(pair[0]), int(pair[1]))
    channels = options.get("channels")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise ValueError(f"data option channels={channels!r} is invalid: 1 (grey) or 3 (RGB)")
    binarize = options.get("binarize", "none")
    if binarize not in BINARIZE:
        raise ValueError(f"data option binarize={binarize!r} is invalid: one of {', '.join(BINARIZE)}")
    fractions = {}
    for key in ("valid_fraction", "test_fraction"):
        value = options.get(key, 0.1)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"data option {key}={value!r} is invalid: a fraction in (0, 1)")
        fractions[key] = float(value)
    if fractions["valid_fraction"] + fractions["test_fraction"] >= 1:
        raise ValueError("data options valid_fraction + test_fraction must be below 1 (the rest is the training split)")
    if not isinstance(options.get("cache", True), bool):
        raise ValueError(f"data option cache={options['cache']!r} is invalid: true or false")
    seed = options.get("split_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"data option split_seed={seed!r} is invalid: an integer >= 0")
    return {"path": Path(path).expanduser(), "size": size, "channels": channels, "binarize": binarize,
            "labels": options.get("labels"), **fractions, "split_seed": seed,
            "cache": options.get("cache", True), "root": options.get("root")}


# ------------------------------------------------------------------------------------ folders
def _image_suffixes() -> set[str]:
    from PIL import Image

    Image.init()
    return {suffix.lower() for suffix in Image.registered_extensions()}


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _files_under(folder: Path, suffixes: set[str]) -> list[Path]:
    """Image files anywhere under ``folder`` (hidden names skipped), sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in suffixes]
    return sorted(found)


def _scan_split(folder: Path, suffixes: set[str]) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """(files, labels or None, class names or None) of one folder laid out flat or by class."""
    top = sorted(p for p in folder.iterdir() if _visible(p) and p.is_file() and p.suffix.lower() in suffixes)
    class_dirs = sorted(p for p in folder.iterdir() if _visible(p) and p.is_dir())
    if not class_dirs or (top and not any(_files_under(d, suffixes) for d in class_dirs)):
        if not top:
            raise ValueError(
                f"{folder}: no images found (files Pillow opens, e.g. .png, .jpg); put the images in it, or in one "
                f"sub-folder per class"
            )
        return top, None, None
    if top:
        raise ValueError(
            f"{folder}: holds both images ({top[0].name}, ...) and class sub-folders ({class_dirs[0].name}, ...); "
            f"move the images into class sub-folders (labelled) or remove the sub-folders (unlabelled)"
        )
    files: list[Path] = []
    labels: list[int] = []
    for k, d in enumerate(class_dirs):
        inside = _files_under(d, suffixes)
        if not inside:
            raise ValueError(f"{d}: class folder with no images; add images to it or remove it")
        files += inside
        labels += [k] * len(inside)
    return files, labels, [d.name for d in class_dirs]


def _scan_folder(root: Path) -> tuple[list[Path], np.ndarray | None, np.ndarray | None, list[str] | None]:
    """(files, labels, split of each file, class names) of a folder (flat, by class, or by split)."""
    suffixes = _image_suffixes()
    subdirs = {p.name: p for p in root.iterdir() if p.is_dir()}
    if "train" not in subdirs:
        files, labels, names = _scan_split(root, suffixes)
        return files, None if labels is None else np.asarray(labels, np.int64), None, names
    others = sorted(n for n in subdirs if not n.startswith(".") and n not in ("train", "valid", "val", "test"))
    if others:
        raise ValueError(
            f"{root}: has a train/ folder, which makes it the split layout (train/ valid/ test/), and other folders "
            f"{others}; in that layout the class folders go inside each split (if 'train' is a class, rename it)"
        )
    files, split_of, labels = [], [], []
    names: list[str] | None = None
    for index, split in enumerate(SPLITS):
        present = [subdirs[n] for n in SPLIT_FOLDERS[split] if n in subdirs]
        if len(present) > 1:
            raise ValueError(f"{root}: both {present[0].name}/ and {present[1].name}/; keep one validation folder")
        if not present:
            continue  # carved from train/
        part, part_labels, part_names = _scan_split(present[0], suffixes)
        if split == "train":
            names = part_names
        elif (part_names is None) != (names is None):
            raise ValueError(
                f"{present[0]}: {'unlabelled' if part_names is None else 'labelled (class sub-folders)'} but "
                f"{root / 'train'} is {'unlabelled' if names is None else 'labelled'}; lay out every split alike"
            )
        if part_names is not None and names is not None:
            extra = sorted(set(part_names) - set(names))
            if extra:
                raise ValueError(
                    f"{present[0]}: class folder(s) {extra} do not exist in {root / 'train'}; every class must have "
                    f"training images (the classes are those of train/: {names})"
                )
            part_labels = [names.index(part_names[k]) for k in part_labels]
        files += part
        split_of += [index] * len(part)
        if part_labels is not None:
            labels += part_labels
    return (files, np.asarray(labels, np.int64) if names is not None else None, np.asarray(split_of, np.int64),
            names)


def _open_error(path: Path, err: BaseException) -> ValueError:
    return ValueError(f"{path}: cannot read this image ({type(err).__name__}: {err}); the file is damaged or not an "
                      f"image: replace or delete it")


def _decode(files: list[Path], size: tuple[int, int] | None, channels: int | None, source: str) -> np.ndarray:
    """Every file as uint8 (N, C, H, W), converted, resized and centre-cropped as asked."""
    from PIL import Image

    # Pass 1: headers only (cheap): the modes decide the channels, the sizes must agree without ``size``.
    first_size, grey = None, True
    for path in files:
        try:
            with Image.open(path) as im:
                mode, (w, h) = im.mode, im.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise _open_error(path, err) from err
        grey = grey and mode in GREY_MODES
        if size is None:
            if first_size is None:
                first_size = (h, w, path)
            elif (h, w) != first_size[:2]:
                raise ValueError(
                    f"{path} is {h}x{w} pixels (height x width) but {first_size[2]} is "
                    f"{first_size[0]}x{first_size[1]}; images of different sizes need a common size: give "
                    f"data_options size=[height, width] (each image is resized and centre-cropped to it)"
                )
    C = channels or (1 if grey else 3)
    H, W = size or first_size[:2]
    out = np.empty((len(files), C, H, W), dtype=np.uint8)
    bar = _progress(len(files), f"decoding {source}")
    try:
        for i, path in enumerate(files):
            try:
                with Image.open(path) as im:
                    im.load()
                    im = im.convert("L" if C == 1 else "RGB")
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                raise _open_error(path, err) from err
            if im.size != (W, H):
                im = _cover_and_crop(im, H, W)
            pixels = np.asarray(im, dtype=np.uint8)
            out[i] = pixels[None] if C == 1 else pixels.transpose(2, 0, 1)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


def _cover_and_crop(im: Any, H: int, W: int) -> Any:
    """Resize a Pillow image so it covers H x W with its aspect ratio kept, then crop the centre."""
    from PIL import Image

    w, h = im.size
    scale = max(H / h, W / w)
    new_w, new_h = max(W, round(w * scale)), max(H, round(h * scale))
    im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)  # antialiased when shrinking
    left, top = (new_w - W) // 2, (new_h - H) // 2
    return im.crop((left, top, left + W, top + H))


def _progress(total: int, what: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="img", file=sys.stderr, delay=PROGRESS_DELAY, mininterval=0.5,
                dynamic_ncols=True)


def _folder_key(files: list[Path], root: Path, opts: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "size": opts["size"], "channels": opts["channels"]}).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _load_folder(opts: dict[str, Any], files: list[Path], key: str, labels, split_of, names) -> Prepared:
    """The decoded images of a scanned folder: from the cache when it holds them, else decoded (and cached)."""
    root = opts["path"]
    cached = cache_root(opts["root"]) / CACHE_FOLDER / f"{key[:32]}.npz"
    if opts["cache"] and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                images = z["images"]
            if images.shape[0] == len(files):
                return Prepared(images, labels, split_of, names)
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache file is decoded again and replaced
    images = _decode(files, opts["size"], opts["channels"], str(root))
    if opts["cache"]:
        try:
            with staged(cached) as tmp, open(tmp, "wb") as f:
                np.savez(f, images=images)
        except OSError as err:  # a read-only cache is no reason not to train
            print(f"drawnet: warning: could not cache the decoded images in {cached}: {err}", file=sys.stderr)
    return Prepared(images, labels, split_of, names)


# ------------------------------------------------------------------------------------- arrays
def _read_array(path: Path, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels from the same file or None) of a .npy / .npz file."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: cannot read this {what} ({err}); is it a complete NumPy .npy/.npz file?") from err
    if isinstance(loaded, np.ndarray):
        return loaded, None
    with loaded:
        keys = list(loaded.keys())
        if "images" in keys:
            image_key = "images"
        elif len(keys) == 1:
            image_key = keys[0]
        else:
            raise ValueError(f"{path}: holds arrays {keys}; name the images 'images' (and the labels 'labels')")
        extra = sorted(set(keys) - {image_key, "labels"})
        if extra:
            raise ValueError(f"{path}: unexpected array(s) {extra}; a .npz holds 'images' and optionally 'labels'")
        try:
            return loaded[image_key], (loaded["labels"] if "labels" in keys else None)
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{path}: cannot read its arrays ({err}); the file is damaged") from err


def _check_images_array(a: np.ndarray, path: Path) -> np.ndarray:
    """uint8 or float32 (N, C, H, W) from an (N, H, W) or (N, H, W, C) array, else a ValueError."""
    if a.ndim not in (3, 4) or a.shape[0] == 0 or (a.ndim == 4 and a.shape[3] not in (1, 3)):
        hint = ""
        if a.ndim == 4 and a.shape[1] in (1, 3):
            hint = " (it looks channels-first: use np.moveaxis(images, 1, -1) for (N, H, W, C))"
        raise ValueError(f"{path}: images of shape {a.shape}; expected (N, H, W) or (N, H, W, C) with C = 1 or 3 and "
                         f"N >= 1{hint}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{path}: images of dtype {a.dtype}; expected uint8 (0-255) or float in [0, 1] (e.g. "
                         f"images.astype(np.uint8) for 0-255 integers)")
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        finite = np.isfinite(a)
        if not finite.all():
            raise ValueError(f"{path}: {int((~finite).sum())} image values are NaN or infinite; expected floats in "
                             f"[0, 1]")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"{path}: float image values in [{lo:.4g}, {hi:.4g}]; expected [0, 1] (divide 0-255 "
                             f"values by 255, or store them as uint8)")
    a = a[:, None] if a.ndim == 3 else np.moveaxis(a, 3, 1)  # (N, C, H, W)
    return np.ascontiguousarray(a)


def _check_labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{path}: labels of shape {labels.shape} for {n} images; expected one label per image, "
                         f"shape ({n},)")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"{path}: labels of dtype {labels.dtype}; expected integer class indices 0, 1, 2, ...")
    if labels.min() < 0:
        raise ValueError(f"{path}: negative label {int(labels.min())}; expected class indices 0, 1, 2, ...")
    return labels.astype(np.int64)


def _resize_array(images: np.ndarray, H: int, W: int) -> np.ndarray:
    """Cover H x W keeping the aspect ratio, then crop the centre (antialiased bilinear, PyTorch)."""
    N, C, h, w = images.shape
    if (h, w) == (H, W):
        return images
    scale = max(H / h, W / w)
    new_h, new_w = max(H, round(h * scale)), max(W, round(w * scale))
    x = torch.from_numpy(images).float()
    if images.dtype == np.uint8:
        x = x / 255
    x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - H) // 2, (new_w - W) // 2
    return x[:, :, top : top + H, left : left + W].clamp_(0, 1).contiguous().numpy()


def _convert_channels(images: np.ndarray, C: int) -> np.ndarray:
    if images.shape[1] == C:
        return images
    if C == 3:
        return np.repeat(images, 3, axis=1)
    # ITU-R 601-2 luma, the weights of Pillow's convert("L")
    grey = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), images.astype(np.float32), axes=([0], [1]))
    if images.dtype == np.uint8:
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[:, None]
    return np.clip(grey, 0, 1)[:, None]


def _load_array(opts: dict[str, Any]) -> Prepared:
    path = opts["path"]
    raw, labels = _read_array(path, "array")
    images = _check_images_array(raw, path)
    label_file = opts["labels"]
    if label_file is not None:
        if labels is not None:
            raise ValueError(f"{path} holds labels and data option labels={label_file!r} gives others; keep one")
        label_path = Path(label_file).expanduser()
        if not label_path.is_file():
            raise ValueError(f"{label_path}: no such labels file (data option labels)")
        labels, _ = _read_array(label_path, "labels file")
        path = label_path
    if labels is not None:
        labels = _check_labels(labels, images.shape[0], path)
    if opts["channels"] is not None:
        images = _convert_channels(images, opts["channels"])
    if opts["size"] is not None:
        images = _resize_array(images, *opts["size"])
    return Prepared(images, labels, None, None)


def class_names(**options: Any) -> list[str] | None:
    """The class names of a folder (its class sub-folders, sorted), found without decoding anything;
    None for an unlabelled folder or an array (whose classes are the label values)."""
    opts = _check_options(options)
    if not opts["path"].is_dir():
        return None
    return _scan_folder(opts["path"])[3]


# ------------------------------------------------------------------------------- the loader
_MEMO: dict[str, Prepared] = {}  # the last data set prepared in this process: its splits are prepared once


def _prepare(opts: dict[str, Any]) -> Prepared:
    path = opts["path"]
    if not path.exists():
        raise ValueError(f"{path}: no such folder or file (data option path)")
    if path.is_dir():
        files, labels, split_of, names = _scan_folder(path)
        key = _folder_key(files, path, opts)
        load = lambda: _load_folder(opts, files, key, labels, split_of, names)  # noqa: E731
    elif path.suffix.lower() in (".npy", ".npz"):
        stamps = [path] + ([Path(opts["labels"]).expanduser()] if opts["labels"] is not None else [])
        for p in stamps[1:]:
            if not p.is_file():
                raise ValueError(f"{p}: no such labels file (data option labels)")
        key = json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in stamps]
                         + [opts["size"], opts["channels"]])
        load = lambda: _load_array(opts)  # noqa: E731
    else:
        raise ValueError(f"{path}: not a folder nor a .npy/.npz file; give a folder of images or a NumPy array file")
    if key not in _MEMO:
        prepared = load()
        _MEMO.clear()
        _MEMO[key] = prepared
    return _MEMO[key]


def split_indices(n: int, seed: int, valid_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Indices (sorted) of each split of ``n`` images, as the module docstring describes."""
    n_test = max(1, round(n * test_fraction))
    n_valid = max(1, round(n * valid_fraction))
    if n - n_test - n_valid < 1:
        raise ValueError(f"{n} images are too few to split into train / valid / test (test {n_test}, valid "
                         f"{n_valid}); add images or give split folders train/ valid/ test/")
    rank = np.argsort(splitmix64(np.arange(n, dtype=np.uint64), seed), kind="stable")
    return {"test": np.sort(rank[:n_test]), "valid": np.sort(rank[n_test : n_test + n_valid]),
            "train": np.sort(rank[n_test + n_valid :])}


def _split_index(prepared: Prepared, split: str, opts: dict[str, Any]) -> np.ndarray:
    """Which images of ``prepared`` form ``split``: given split folders, else the seeded split; a
    missing validation or test folder is carved from train/ the same way."""
    fractions = (opts["split_seed"], opts["valid_fraction"], opts["test_fraction"])
    if prepared.split_of is None:
        return split_indices(prepared.images.shape[0], *fractions)[split]
    given = {s: np.nonzero(prepared.split_of == i)[0] for i, s in enumerate(SPLITS)}
    missing = [s for s in ("valid", "test") if len(given[s]) == 0]
    if not missing or (split not in missing and split != "train"):
        return given[split]
    train = given["train"]
    carved = split_indices(len(train), *fractions)
    if split != "train":
        return train[carved[split]]
    taken = np.concatenate([carved[s] for s in missing])
    return train[np.setdiff1d(np.arange(len(train)), taken)]


def _binarize(images: np.ndarray) -> np.ndarray:
    """One Bernoulli sample of every pixel of the whole data set, with binarized MNIST's uniforms."""
    if images.dtype == np.uint8:
        return binarize_fixed(images, 0, BINARIZATION_SEED)  # exact integer test U < v / 255
    flat = images.reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint8)
    step = 1 << 22
    for start in range(0, flat.size, step):
        stop = min(start + step, flat.size)
        r = splitmix64(np.arange(start, stop, dtype=np.uint64), BINARIZATION_SEED)
        u = (r >> np.uint64(11)).astype(np.float64) * 2.0**-53  # U_k: the top 53 bits / 2**53
        out[start:stop] = u < flat[start:stop]
    return out.reshape(images.shape)


def _to_float(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images))
    return x.float().div_(255.0) if images.dtype == np.uint8 else x.float()


def custom_images(split: str, **options: Any) -> ImageDataset:
    """Split ``split`` of the images at ``options["path"]`` (see the module docstring for the options)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    opts = _check_options(options)
    prepared = _prepare(opts)
    index = _split_index(prepared, split, opts)
    labels = None if prepared.labels is None else torch.from_numpy(prepared.labels[index])
    num_classes = None
    if prepared.labels is not None:
        num_classes = len(prepared.class_names) if prepared.class_names else int(prepared.labels.max()) + 1
    images = prepared.images[index]
    meta = (labels, num_classes, prepared.class_names)
    if opts["binarize"] == "none":
        return ImageDataset(NAME, split, _to_float(images), *meta)
    if prepared.binary is None:
        prepared.binary = _binarize(prepared.images)
    binary = torch.from_numpy(prepared.binary[index]).float()
    if opts["binarize"] == "dynamic" and split == "train":
        return DynamicBinarizedDataset(NAME, split, binary, labels, _to_float(images), num_classes,
                                       prepared.class_names)
    return ImageDataset(NAME, split, binary, *meta)
