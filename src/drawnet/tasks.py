"""The DRAW generative model as a training task (see :class:`drawnet.train.Task`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import engine, evaluate
from .config import DRAWConfig, TrainConfig
from .data import ImageDataset
from .model import DRAW


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


class DRAWTask:
    """Trains :class:`drawnet.DRAW` by the bound of eq. (12); the best checkpoint has the lowest
    validation bound."""

    kind = "draw"
    select_key = "bound"

    def __init__(self, config: DRAWConfig):
        self.config = config
        self.engine: engine.Engine | None = None  # set by configure()

    def model_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    def build_model(self) -> nn.Module:
        return DRAW(self.config)

    def configure(self, model: nn.Module, cfg: TrainConfig, device: torch.device) -> str:
        self.engine = engine.choose(unwrap(model), device, fast=cfg.fast, precision=cfg.precision)
        # Validation (and so the best checkpoint) is computed in float32 whatever the training
        # precision, so bounds from runs of either precision compare directly.
        self.valid_engine = engine.choose(unwrap(model), device, fast=cfg.fast, precision="fp32")
        return self.engine.describe()

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
        terms = self.engine.loss(unwrap(model), x, noise)
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
