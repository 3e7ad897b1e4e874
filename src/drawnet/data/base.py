"""The in-memory dataset every loader returns, and its batching (no per-image Python work)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator

import torch
from torch import Tensor


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, identical on every machine and process (unlike ``hash``)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 % (1 << 64)
    return value >> 1


class ImageDataset:
    """A split of images held as one tensor, batched by indexing.

    ``images``: (N, C, H, W) float32 in [0, 1]; ``labels``: (N,) int64 or None, class indices in
    [0, ``num_classes``); ``class_names``: what each class index stands for, where the data set says.
    Subclasses that sample something afresh every epoch (dynamic binarization, on-the-fly clutter,
    random crops) override :meth:`epoch_images`; it must be vectorised and depend only on
    ``(seed, epoch)`` so runs are reproducible.
    """

    def __init__(
        self,
        name: str,
        split: str,
        images: Tensor,
        labels: Tensor | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
    ):
        if images.dim() != 4:
            raise ValueError(f"{name}/{split}: images must be (N, C, H, W), got {tuple(images.shape)}")
        if labels is not None and labels.shape[0] != images.shape[0]:
            raise ValueError(f"{name}/{split}: {images.shape[0]} images but {labels.shape[0]} labels")
        self.name = name
        self.split = split
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.class_names = class_names

    @property
    def image_shape(self) -> tuple[int, int, int]:
        C, H, W = self.images.shape[1:]
        return (int(C), int(H), int(W))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.split!r}, n={len(self)}, shape={self.image_shape})"

    def epoch_images(self, epoch: int, seed: int) -> tuple[Tensor, Tensor | None]:
        """The images (and labels) of one epoch; fixed sets return themselves."""
        return self.images, self.labels

    def batches(
        self,
        batch_size: int,
        *,
        epoch: int = 0,
        seed: int = 0,
        shuffle: bool = False,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Yield (images, labels-or-None) batches; order depends only on (seed, epoch)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n, take = self.epoch_batcher(epoch, seed)
        if shuffle:
            g = torch.Generator().manual_seed(derive_seed(seed, epoch, 1))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield take(order[start : start + batch_size])

    def epoch_batcher(self, epoch: int, seed: int) -> tuple[int, Callable[[Tensor], tuple[Tensor, Tensor | None]]]:
        """(number of images this epoch, function from indices to that batch's images and labels).

        The default indexes :meth:`epoch_images`; data sets made on the fly override it to build
        each batch from a compact per-epoch description, giving the same images as epoch_images.
        """
        images, labels = self.epoch_images(epoch, seed)

        def take(idx: Tensor) -> tuple[Tensor, Tensor | None]:
            return images[idx], (labels[idx] if labels is not None else None)

        return int(images.shape[0]), take


class OnTheFlyDataset(ImageDataset, metaclass=abc.ABCMeta):
    """A split whose images are built per batch from a compact per-epoch description ("plan").

    Used where a whole epoch as float32 would be large or must change every epoch (clutter made on
    the fly, random crops of SVHN). Subclasses implement :meth:`plan` (vectorised, depends only on
    ``(epoch, seed)``) and :meth:`build` (one batch from the plan, vectorised). :meth:`batches` builds
    batch by batch; :meth:`epoch_images` builds the whole epoch and gives the very same images.
    ``images``/``labels`` are those of the reference plan ``(epoch=0, seed=0)``, built on first use.
    """

    def __init__(self, name: str, split: str, n: int, image_shape: tuple[int, int, int], num_classes=None):
        self.name = name
        self.split = split
        self.num_classes = num_classes
        self._n = int(n)
        self._shape = tuple(int(s) for s in image_shape)
        self._plan_key: tuple[int, int] | None = None
        self._plan = None
        self._reference: tuple[Tensor, Tensor | None] | None = None

    @abc.abstractmethod
    def plan(self, epoch: int, seed: int):
        """Everything random about epoch ``epoch`` (positions, sources, offsets), for all images."""

    @abc.abstractmethod
    def build(self, plan, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """Images (len(idx), C, H, W) float32 and labels of images ``idx`` under ``plan``."""

    def _cached_plan(self, epoch: int, seed: int):
        if self._plan_key != (epoch, seed):
            self._plan, self._plan_key = self.plan(epoch, seed), (epoch, seed)
        return self._plan

    @property
    def images(self) -> Tensor:
        return self._reference_set()[0]

    @property
    def labels(self) -> Tensor | None:
        return self._reference_set()[1]

    def _reference_set(self) -> tuple[Tensor, Tensor | None]:
        if self._reference is None:
            self._reference = self.epoch_images(0, 0)
        return self._reference

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._shape  # type: ignore[return-value]

    def __len__(self) -> int:
        return self._n

    def epoch_images(self, epoch: int, seed: int) -> tuple[Tensor, Tensor | None]:
        plan = self._cached_plan(epoch, seed)
        images = torch.empty(self._n, *self._shape)  # filled chunk by chunk: peak memory one epoch plus one chunk
        labels: Tensor | None = None
        for idx in torch.arange(self._n).split(4096):
            x, y = self.build(plan, idx)
            images[idx[0] : idx[-1] + 1] = x
            if y is not None:
                if labels is None:
                    labels = torch.empty(self._n, dtype=y.dtype)
                labels[idx[0] : idx[-1] + 1] = y
        return images, labels

    def epoch_batcher(self, epoch: int, seed: int):
        plan = self._cached_plan(epoch, seed)
        return self._n, lambda idx: self.build(plan, idx)
