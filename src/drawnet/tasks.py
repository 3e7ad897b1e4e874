"""The DRAW generative model as a training task (see :class:`drawnet.train.Task`), and
:func:`fit_to_data`, which fits a model config to the data set it will be trained on."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import attention, engine, evaluate
from .config import DRAWConfig, TrainConfig
from .data import ImageDataset
from .model import DRAW


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


class DRAWTask:
    """Trains :class:`drawnet.DRAW` by the bound of eq. (12); the best checkpoint has the lowest
    validation bound. A conditional model is trained and validated with each image's label: its
    bound is one of -log p(x | y)."""

    kind = "draw"
    select_key = "bound"

    def __init__(self, config: DRAWConfig):
        self.config = config
        self.engine: engine.Engine | None = None  # set by configure()
        # TrainConfig.attention_grad_clip (set by configure): the training passes' clip of the gradient
        # w.r.t. the raw attention parameters, which also counts the rows it clipped; None: no clipping.
        self.attention_clip: attention.GradientClip | None = None

    def model_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    def build_model(self) -> nn.Module:
        return DRAW(self.config)

    def configure(self, model: nn.Module, cfg: TrainConfig, device: torch.device) -> str:
        self.attention_clip = None
        if cfg.attention_grad_clip > 0:
            if self.config.read_n is None and self.config.write_n is None:
                raise ValueError(f"train setting attention_grad_clip={cfg.attention_grad_clip:g} needs a model with "
                                 "attention (read_n or write_n set); this one has none: leave it at 0")
            self.attention_clip = attention.GradientClip(cfg.attention_grad_clip)
        self.engine = engine.choose(unwrap(model), device, fast=cfg.fast, precision=cfg.precision)
        # Validation (and so the best checkpoint) is computed in float32 whatever the training
        # precision, so bounds from runs of either precision compare directly.
        self.valid_engine = engine.choose(unwrap(model), device, fast=cfg.fast, precision="fp32")
        how = self.engine.describe()
        if self.config.conditional:
            how += (f"; class-conditional on {self.config.num_classes} classes: every bound reported is of "
                    f"-log p(x | y), the label given")
        return how

    def train_loss(
        self, model: nn.Module, x: Tensor, y: Tensor | None, *, generator: torch.Generator, shard: tuple[int, int]
    ) -> dict[str, Tensor]:
        # The noise of eq. (6) for the *global* batch is drawn from the generator the trainer seeded
        # for this step, and each process takes its own rows (rank r has rows r::world), so a
        # data-parallel run uses exactly the noise of a single-process run.
        rank, world = shard
        cfg = self.config
        noise = torch.randn(cfg.T, x.shape[0] * world, cfg.z_size, generator=generator)[:, rank::world].to(x.device)
        if self.engine is None:
            raise RuntimeError("DRAWTask.configure() must be called before train_loss()")
        labels = None
        if cfg.conditional:
            if y is None:
                raise ValueError("a conditional DRAW model trains on labelled images, and this data set has no labels; "
                                 "use labelled data (e.g. a folder with one sub-folder per class) or conditional=false")
            labels = y
        with unwrap(model).clipping_attention_gradient(self.attention_clip):  # both paths read it in the forward
            terms = self.engine.loss(unwrap(model), x, noise, labels=labels)
        return {k: v for k, v in terms.items() if k != "bound_per_image"}

    def validate(
        self, model: nn.Module, dataset: ImageDataset, batch_size: int, device: torch.device
    ) -> dict[str, Any]:
        result = evaluate.nll_bound(unwrap(model), dataset, batch_size=batch_size, device=device,
                                    engine=self.valid_engine)
        return {"bound": result["nll_bound"], "L_x": result["L_x"], "L_z": result["L_z"],
                "kl_per_step": result["kl_per_step"]}

    def epoch_end(self, model: nn.Module, run_dir: Path, epoch: int) -> None:
        from . import viz

        viz.save_epoch_pictures(unwrap(model), run_dir, epoch, engine=self.valid_engine)


def fit_to_data(
    model: DRAWConfig, train: TrainConfig, *, fixed: Iterable[str] = ()
) -> tuple[DRAWConfig, TrainConfig, list[str]]:
    """The configs of a new run, fitted to its training data; returns (model, train, notices).

    For the user's own images (data set ``images``) the model's ``image_shape`` becomes the data's,
    unless ``image_shape`` is in ``fixed`` (set by the user): then the images are resized to it
    (data options ``size`` and ``channels``, recorded in the train config) where those options are
    not given. A conditional model without ``num_classes`` takes the data's number of classes, and
    a conditional model on data without labels is refused. Each change is described by one notice.
    Other data sets and unconditional models are returned unchanged (the trainer checks them).
    """
    fixed = set(fixed)
    needs_classes = model.conditional and model.num_classes is None
    if train.data != "images" and not needs_classes:
        return model, train, []
    notices: list[str] = []
    options = dict(train.data_options)
    if train.data == "images" and isinstance(options.get("path"), str):
        # an absolute path in config.json: eval, sample and report find the images from anywhere
        options["path"] = str(Path(options["path"]).expanduser().resolve())
        train = dataclasses.replace(train, data_options=options)
    if train.data == "images" and "image_shape" in fixed:
        C, H, W = model.image_shape
        added = {k: v for k, v in (("size", [H, W]), ("channels", C)) if k not in options}
        if added:
            options |= added
            train = dataclasses.replace(train, data_options=options)
            notices.append(f"resizing the images to the model's image_shape {model.image_shape} (data options "
                           + ", ".join(f"{k}={v}" for k, v in added.items()) + ")")
    from .data import get_dataset

    data = get_dataset(train.data, "train", **options)
    if train.data == "images" and "image_shape" not in fixed and data.image_shape != model.image_shape:
        notices.append(f"image_shape {model.image_shape} replaced by the data's {data.image_shape} (fix it with "
                       f"--set image_shape=[C,H,W] to resize the images instead)")
        model = dataclasses.replace(model, image_shape=data.image_shape)
    if model.conditional:
        where = f"data set {train.data!r}" + (f" ({options.get('path')})" if train.data == "images" else "")
        if data.labels is None or not data.num_classes:
            raise ValueError(
                f"a conditional model (conditional=true) needs labelled images, and {where} has no labels: put the "
                f"images in one sub-folder per class (the sub-folder names are the classes), give an array's labels, "
                f"or train with conditional=false"
            )
        if needs_classes:
            model = dataclasses.replace(model, num_classes=data.num_classes)
            notices.append(f"conditional on the data's {data.num_classes} classes (num_classes={data.num_classes})")
        elif model.num_classes < data.num_classes:
            raise ValueError(f"num_classes={model.num_classes} but {where} has {data.num_classes} classes; set "
                             f"num_classes={data.num_classes} or leave it out to take it from the data")
    return model, train, notices
