"""Distil image models that stay accurate on noisy, blurred, compressed or shifted inputs."""

from .data import ImageResizer, load_image_dataset, prepare_dataset, split_train_eval
from .evaluation import RobustnessReport, evaluate_robustness
from .hub import push_robust_student
from .methods.dad import VQDiscretizer, generate_dad_dataset, pair_with_dad, pgd_attack
from .models import (CLIPZeroShotClassifier, PixelPreprocessor, PixelSpaceClassifier, load_vision_model, load_with_head,
                     whole_weights)
from .training import DistillationConfig, RobustDistillationTrainer
from .views import CORRUPTIONS, Distorter, corrupt

__all__ = ["CLIPZeroShotClassifier", "CORRUPTIONS", "DistillationConfig", "Distorter", "ImageResizer",
           "PixelPreprocessor", "PixelSpaceClassifier", "RobustDistillationTrainer", "RobustnessReport",
           "VQDiscretizer", "corrupt", "evaluate_robustness", "generate_dad_dataset", "load_image_dataset",
           "load_vision_model", "load_with_head", "pair_with_dad", "pgd_attack", "prepare_dataset",
           "push_robust_student", "split_train_eval", "whole_weights"]
