"""The DRAW generative model as a training task (see :class:`drawnet.train.Task`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import evaluate
from .config import DRAWConfig
from .data import ImageDataset
from .model import DRAW


class DRAWTask:
    """Trains :class:`drawnet.DRAW` by the bound of eq. (12); the best checkpoint has the lowest
    validation bound."""

    kind = "draw"
    select_key = "bound"

    def __init__(self, config: DRAWConfig):
        self.config = config

    def model_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    def build_model(self) -> nn.Module:
        return DRAW(self.config)

    def train_loss(self, model: nn.Module, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        # The noise of eq. (6) for the *global* batch is drawn from the RNG the trainer seeded for
        # this step, and each process takes its own rows (the trainer gives rank r rows r::world),
        # so a data-parallel run uses exactly the noise of a single-process run.
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        cfg = self.config
        noise = torch.randn(cfg.T, x.shape[0] * world, cfg.z_size)[:, rank::world].to(x.device)
        terms = model.loss(x, noise=noise)
        return {k: v for k, v in terms.items() if k != "bound_per_image"}

    def validate(
        self, model: nn.Module, dataset: ImageDataset, batch_size: int, device: torch.device
    ) -> dict[str, Any]:
        result = evaluate.nll_bound(model, dataset, batch_size=batch_size, device=device)
        return {"bound": result["nll_bound"], "L_x": result["L_x"], "L_z": result["L_z"],
                "kl_per_step": result["kl_per_step"]}

    def epoch_end(self, model: nn.Module, run_dir: Path, epoch: int) -> None:
        from . import viz

        viz.save_epoch_pictures(model, run_dir, epoch)
