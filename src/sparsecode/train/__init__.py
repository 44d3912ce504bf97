"""Training: the config dataclass and the loop."""

from .config import TrainConfig
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer"]
