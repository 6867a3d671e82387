"""The training loop: ``DistillationConfig``, ``RobustDistillationTrainer`` (it composes), the frozen
teacher and its cache, the views of a batch, EMA, divergence checks and the glue to every launcher."""

from .checks import (check_checkpointing, check_output_dir, check_resume_matches, check_trainer_inputs,
                     check_trains_something)
from .config import DistillationConfig
from .distributed import check_one_device_per_process, unreached_parameters
from .divergence import NonFiniteLossError, NonFiniteWeightsError, last_checkpoint, non_finite_weights_in
from .ema import EMA_WEIGHTS, WeightAverage
from .frozen import check_whole, frozen_autocast, inference_dtype, is_sharded
from .launchers import follow_launcher_precision, fsdp_blocks, prepare_fsdp, save_whole_model, vector_scalars
from .parts_log import LossPartsLog
from .teacher import DistillationTeacher
from .teacher_cache import build_teacher_cache, row_bytes
from .trainer import RobustDistillationTrainer
from .view_pipeline import ViewBatch, ViewPipeline, ViewSeeds

__all__ = ["build_teacher_cache", "check_checkpointing", "check_one_device_per_process", "check_output_dir",
           "check_resume_matches", "check_trainer_inputs", "check_trains_something", "check_whole",
           "DistillationConfig", "DistillationTeacher", "EMA_WEIGHTS", "follow_launcher_precision", "frozen_autocast",
           "fsdp_blocks", "inference_dtype", "is_sharded", "last_checkpoint", "LossPartsLog", "non_finite_weights_in",
           "NonFiniteLossError", "NonFiniteWeightsError", "prepare_fsdp", "RobustDistillationTrainer", "row_bytes",
           "save_whole_model", "unreached_parameters", "vector_scalars", "ViewBatch", "ViewPipeline", "ViewSeeds",
           "WeightAverage"]
