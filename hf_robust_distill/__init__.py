"""Distil image models that stay accurate on noisy, blurred, compressed or shifted inputs."""

from .config import DistillationConfig
from .distortions import CORRUPTIONS, Distorter, corrupt
from .trainer import RobustDistillationTrainer

__all__ = ["CORRUPTIONS", "DistillationConfig", "Distorter", "RobustDistillationTrainer", "corrupt"]
