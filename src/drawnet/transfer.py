"""Starting a run from another model's weights (``TrainConfig.init_from``; ours, the paper trains
every model from scratch).

The source is a run directory or checkpoint file (its best weights: the averaged ones when it
averaged, as ``drawnet eval`` uses) or ``pretrained:NAME``, a model shipped with drawnet. Source and
new model must be of the same kind with parameters of the same names and shapes. One difference
is allowed for DRAW with attention: the image's height and width. None of its parameters depends
on them except the initial canvas c_0, which keeps the new model's own initial value; but eqs
(22)-(24) place and space the windows in proportion to the image, so the same network on a larger
canvas would draw everything larger and farther from the centre. The attention layers' outputs are
therefore rescaled so that every window keeps its size and its offset from the image centre in
pixels (docs/DESIGN.md, "Starting from another model"): the shipped 28x28 ``mnist`` model draws its
digits at their own size in the middle of a 60x60 canvas, a start for the two-digit model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from . import checkpoint

PRETRAINED_PREFIX = "pretrained:"


def source_checkpoint(spec: str) -> checkpoint.Checkpoint:
    """The checkpoint ``spec`` names: ``pretrained:NAME``, a checkpoint file or a run directory."""
    if spec.startswith(PRETRAINED_PREFIX):
        from . import pretrained

        try:
            return checkpoint.load_checkpoint(pretrained.model_path(spec[len(PRETRAINED_PREFIX):]))
        except ValueError as err:
            raise ValueError(f"init_from={spec!r}: {err}") from err
    try:
        return checkpoint.load_checkpoint(spec)
    except FileNotFoundError as err:
        raise ValueError(
            f"init_from={spec!r}: {err} (give a run directory, a checkpoint file, or {PRETRAINED_PREFIX}NAME for a "
            f"shipped model; 'drawnet pretrained list' names them)"
        ) from err


def rescale_attention(state: dict[str, torch.Tensor], layers: tuple[str, ...], source_hw: tuple[int, int],
                      target_hw: tuple[int, int]) -> None:
    """Rewrite the attention layers ``layers`` (each ``Linear(dec_size, 5)`` of eq. 21) of ``state`` in
    place so that on a ``target_hw`` image they give the windows they gave on ``source_hw`` (pixel
    units, measured from the image centre).

    Eq. (22): g_X - (A + 1)/2 = (A + 1)/2 g~_X, so scaling g~_X by (A_s + 1)/(A + 1) keeps the centre's
    offset (likewise g~_Y with B); eq. (24): delta = (max(A, B) - 1)/(N - 1) exp(log delta~), so adding
    log((max(A_s, B_s) - 1)/(max(A, B) - 1)) to log delta~'s bias keeps the stride. sigma^2 and gamma
    (eq. 21) are in absolute units already.
    """
    (hs, ws), (h, w) = source_hw, target_hw
    for layer in layers:
        weight, bias = state[f"{layer}.weight"].clone(), state[f"{layer}.bias"].clone()
        for row, ratio in ((0, (ws + 1) / (w + 1)), (1, (hs + 1) / (h + 1))):  # g~_X, g~_Y
            weight[row] *= ratio
            bias[row] *= ratio
        bias[3] += math.log((max(ws, hs) - 1) / (max(w, h) - 1))  # log delta~
        state[f"{layer}.weight"], state[f"{layer}.bias"] = weight, bias


def _differences(source: dict[str, Any], target: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(source) | set(target)) if source.get(k) != target.get(k)]
    return "; ".join(f"{k}: {source.get(k)!r} there, {target.get(k)!r} here" for k in keys)


def initialise_from(model: nn.Module, kind: str, spec: str) -> str:
    """Load the weights ``spec`` names into ``model`` (a new model of kind ``kind``) and return a one-line
    description of what was done. Raises ValueError naming what does not fit."""
    state, how = initial_weights(model, kind, spec)
    model.load_state_dict(state)
    return how


def initial_weights(model: nn.Module, kind: str, spec: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict that :func:`initialise_from` loads into ``model`` (untouched here), and its
    description."""
    ckpt = source_checkpoint(spec)
    if ckpt.kind != kind:
        raise ValueError(f"init_from={spec!r} holds a {ckpt.kind!r} model; this run trains a {kind!r} model: start "
                         f"from a model of the same kind")
    target_cfg = model.config.to_dict()
    try:  # with the defaults of settings its drawnet version did not write
        source_cfg = type(model.config).from_dict(ckpt.model_config).to_dict()
    except (TypeError, ValueError) as err:
        raise ValueError(f"init_from={spec!r}: {ckpt.path} has a model configuration this drawnet cannot read ({err})"
                         ) from err
    state = dict(ckpt.model_state)
    own = model.state_dict()
    how = f"weights from {ckpt.path}"
    source_shape, target_shape = source_cfg.get("image_shape"), target_cfg.get("image_shape")
    if source_shape != target_shape:
        layers = tuple(name for name in ("read_params", "write_params") if f"{name}.weight" in own)
        if kind != "draw" or model.config.read_n is None or model.config.write_n is None:
            raise ValueError(
                f"init_from={spec!r} was trained on images of shape {tuple(source_shape)}, this model is for "
                f"{tuple(target_shape)}: only a DRAW with read and write attention can change its image size "
                f"(without attention, eqs 17-18, layers are image-sized)"
            )
        if source_shape[0] != target_shape[0]:
            raise ValueError(f"init_from={spec!r} has {source_shape[0]} channel(s), this model {target_shape[0]}: "
                             f"the channels must match")
        rescale_attention(state, layers, tuple(source_shape[1:]), tuple(target_shape[1:]))
        state["canvas0"] = own["canvas0"]  # c_0 is image-sized: the new model's own initial value
        how += (f", attention rescaled from {source_shape[1]}x{source_shape[2]} to {target_shape[1]}x"
                f"{target_shape[2]} (windows keep their size in pixels), c_0 the new model's own")
    missing, unexpected, wrong = checkpoint.mismatches(own, state)
    if missing or unexpected or wrong:
        differ = _differences({k: v for k, v in source_cfg.items() if k != "image_shape"},
                              {k: v for k, v in target_cfg.items() if k != "image_shape"})
        raise ValueError(
            f"init_from={spec!r} does not fit this model (missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"wrong shape {wrong[:4]}); the settings that differ: {differ or 'none (another drawnet version?)'}. "
            f"Start from a model with the same sizes"
        )
    return state, how
