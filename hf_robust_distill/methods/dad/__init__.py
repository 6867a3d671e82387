"""Discrete Adversarial Distillation: PGD against the teacher, discretized by a VQ model, made
online each step or offline once for a dataset."""

from .attacks import NORMS, pgd_attack
from .discretize import VQDiscretizer, read_vq_config
from .offline import DADGenerator, generate_dad_dataset, load_dad_source, pair_with_dad
from .online import OFFLINE_STEP_SIZE, ONLINE_STEP_SIZE, AttackSettings, dad_images

__all__ = ["AttackSettings", "dad_images", "DADGenerator", "generate_dad_dataset", "load_dad_source", "NORMS",
           "OFFLINE_STEP_SIZE", "ONLINE_STEP_SIZE", "pair_with_dad", "pgd_attack", "read_vq_config", "VQDiscretizer"]
