"""How robust a student is: accuracy on clean and distorted views, ImageNet-C sets under three protocols,
mCE, calibration, natural shifts, AutoAttack, and the report that cards and tables read."""

from .adversarial import AttackBudget
from .calibration import Scores
from .checks import check_alexnet_severities, check_corruptions, check_natural_shifts, parse_severities
from .corrupted_sets import (CorruptedSet, CorruptedSetCache, ReferenceCorruptedImages, decode_evaluation_set, to_uint8,
                             torch_corrupted_batches)
from .distortion_table import accuracy, distortion_table, report_table
from .linear_probe import cls_features, fit_linear_probe
from .natural_shifts import NaturalShift
from .protocols import PROTOCOLS, PUBLISHED_PROTOCOLS
from .released import read_released
from .report import PLOT_FILE, REPORT_FILE, RobustnessReport
from .robustness import evaluate_robustness, natural_shift_scores
from .sharding import Shard

__all__ = ["accuracy", "AttackBudget", "check_alexnet_severities", "check_corruptions", "check_natural_shifts",
           "cls_features", "CorruptedSet", "CorruptedSetCache", "decode_evaluation_set", "distortion_table",
           "evaluate_robustness", "fit_linear_probe", "NaturalShift", "natural_shift_scores", "parse_severities",
           "PLOT_FILE", "PROTOCOLS", "PUBLISHED_PROTOCOLS", "read_released", "ReferenceCorruptedImages",
           "REPORT_FILE", "report_table", "RobustnessReport", "Scores", "Shard", "to_uint8",
           "torch_corrupted_batches"]
