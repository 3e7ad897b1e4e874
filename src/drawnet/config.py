"""Model configuration: one frozen dataclass, every field explained.

Training settings and the named presets (the paper's Table 3) live in :mod:`drawnet.presets`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def check_image_shape(value: Any) -> tuple[int, int, int]:
    """``value`` as a (channels, height, width) tuple of positive ints, else a ValueError."""
    shape = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"image_shape must be three positive ints (channels, height, width), got {value!r}")
    return shape  # type: ignore[return-value]


def check_image_batch(x: Any, image_shape: tuple[int, int, int], config_name: str) -> None:
    """Raise a ValueError unless ``x`` is a float tensor (batch, *image_shape)."""
    expected = tuple(image_shape)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"expected images of shape (batch, {', '.join(map(str, expected))}) as configured by "
            f"image_shape={expected}, got {tuple(x.shape)}; resize the data or build the model "
            f"with {config_name}(image_shape=...) matching it"
        )
    if not x.is_floating_point():
        raise ValueError(f"expected a float tensor with values in [0, 1], got dtype {x.dtype}")


class DictConfig:
    """JSON round trip for the frozen config dataclasses (checkpoints store them as JSON)."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        if "image_shape" in d:
            d["image_shape"] = list(d["image_shape"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Build from a dict (e.g. a checkpoint's JSON), rejecting keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class DRAWConfig(DictConfig):
    """Everything needed to build a :class:`drawnet.DRAW` network.

    The defaults are the paper's MNIST row of Table 3 (T=64, LSTM 256, z=100, read 2x2, write 5x5).
    """

    # (channels, height, width) of the images the model reads and draws. The model never assumes
    # 28x28: every size in the network is derived from this field.
    image_shape: tuple[int, int, int] = (1, 28, 28)
    # Number of glimpses / drawing steps T (Table 3: 64 for MNIST, 32 for SVHN, 64 for CIFAR).
    T: int = 64
    # Hidden units of the encoder LSTM RNN^enc (Table 3 "LSTM #h": 256 for MNIST).
    enc_size: int = 256
    # Hidden units of the decoder LSTM RNN^dec; kept separate from enc_size so the two can differ.
    dec_size: int = 256
    # Dimension Z of each latent code z_t (Table 3 "#z": 100 for MNIST).
    z_size: int = 100
    # Read attention grid size N (eqs 19-27), or None for the attention-free read of eq. (17).
    read_n: int | None = 2
    # Write attention patch size N (eqs 28-29), or None for the attention-free write of eq. (18).
    write_n: int | None = 5
    # Initialise the log sigma^2 bias of each attention layer so neighbouring filters overlap at the
    # start (sigma = delta/2). The paper gives no initialisation; without this the 2x2 read samples
    # four black corner pixels and training stalls near 200 nats (PAPER.md section 7).
    attention_sigma_init: bool = True

    def __post_init__(self) -> None:
        # lists from JSON become a tuple
        object.__setattr__(self, "image_shape", check_image_shape(self.image_shape))
        for name in ("T", "enc_size", "dec_size", "z_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("read_n", "write_n"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                raise ValueError(
                    f"{name} must be None (no attention) or an int >= 2 (an N x N Gaussian grid; "
                    f"eq. 24 divides by N - 1), got {value!r}"
                )
