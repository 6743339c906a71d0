"""Training: the Trainer, the paper's optimizer, the resumable data stream and launching."""

from .launcher import launch
from .optimizer import build_optimizer, with_full_model_clipping
from .train_loop import NonFiniteLossError, check_losses_finite
from .trainer import Trainer

__all__ = [
    "NonFiniteLossError",
    "Trainer",
    "build_optimizer",
    "check_losses_finite",
    "launch",
    "with_full_model_clipping",
]
