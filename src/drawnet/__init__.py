"""drawnet: DRAW, the Deep Recurrent Attentive Writer (Gregor et al., ICML 2015, arXiv:1502.04623)."""

from .config import DRAWConfig
from .model import DRAW, DRAWOutput, DRAWState, Generation

__version__ = "0.1.0"

__all__ = ["DRAW", "DRAWConfig", "DRAWOutput", "DRAWState", "Generation", "__version__"]
