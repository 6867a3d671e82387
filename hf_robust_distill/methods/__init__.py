"""The distillation methods' math: the objective, the multi-level losses and projections here, and
``methods.dad`` (attack, VQ discretizer, online view, offline generation, VQGAN converter)."""

from .losses import ATTENTION_ROWS, CLS_LOSSES, PATCH_LOSSES, attention_loss, ce_loss, cls_loss, kd_loss, patch_loss
from .objective import LOSS_PARTS, PART_WEIGHTS, DistillationObjective, LayerPairs, gather_rows
from .projections import KINDS, FeatureProjections

__all__ = ["attention_loss", "ATTENTION_ROWS", "ce_loss", "cls_loss", "CLS_LOSSES", "DistillationObjective",
           "FeatureProjections", "gather_rows", "kd_loss", "KINDS", "LayerPairs", "LOSS_PARTS", "PART_WEIGHTS",
           "patch_loss", "PATCH_LOSSES"]
