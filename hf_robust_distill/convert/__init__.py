"""Checkpoints from elsewhere as folders ``from_pretrained`` reads: the field's published robust
classifiers (timm, torchvision: DAD, easyrobust, RobustBench, Madry layouts) and the VQGAN."""

from .checkpoint import convert_checkpoint
from .evaluation_transform import EvaluationTransform
from .layouts import Weights, read_file, unwrap
from .record import CONVERSION_FILE, ConversionRecord
from .vqgan import convert as convert_vqgan

__all__ = ["CONVERSION_FILE", "ConversionRecord", "convert_checkpoint", "convert_vqgan", "EvaluationTransform",
           "read_file", "unwrap", "Weights"]
