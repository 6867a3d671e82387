"""Distil image models that stay accurate on noisy, blurred, compressed or shifted inputs."""

from .attacks import pgd_attack
from .config import DistillationConfig
from .dad import generate_dad_dataset
from .discretize import VQDiscretizer
from .distortions import CORRUPTIONS, Distorter, corrupt
from .evaluation import evaluate_robustness
from .hub import push_robust_student
from .report import RobustnessReport
from .teachers import CLIPZeroShotClassifier
from .trainer import RobustDistillationTrainer

__all__ = ["CLIPZeroShotClassifier", "CORRUPTIONS", "DistillationConfig", "Distorter", "RobustDistillationTrainer",
           "RobustnessReport", "VQDiscretizer", "corrupt", "evaluate_robustness", "generate_dad_dataset",
           "pgd_attack", "push_robust_student"]
