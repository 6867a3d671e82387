"""What the recipes run: arguments, YAML-or-flags parsing, recipe data, the checks before the first
step, the end of a run, the embedded demo zoo, and each recipe's own steps (``cli.multilevel``, ``cli.dad``)."""

from .arguments import DataArguments, RobustnessArguments
from .demo import (DEMO_CAPTIONS, build_demo_clip, build_word_tokenizer, demo_clip_arguments, demo_clip_config,
                   demo_clip_image_processor, demo_image_processor, demo_model, demo_vit_arguments, demo_vit_config,
                   demo_vq_model)
from .finish import FinishedStudent, RunEnd, dataset_label, finish_run, push_if_requested
from .parsing import parse_recipe_args
from .preflight import check_card_possible, check_recipe_flags, decode_evaluation_split, raise_before_the_demo_zoo
from .recipe_data import load_recipe_data
from .run import run_recipe, watch_output_dir

__all__ = ["build_demo_clip", "build_word_tokenizer", "check_card_possible", "check_recipe_flags", "DataArguments",
           "dataset_label", "decode_evaluation_split", "DEMO_CAPTIONS", "demo_clip_arguments", "demo_clip_config",
           "demo_clip_image_processor", "demo_image_processor", "demo_model", "demo_vit_arguments", "demo_vit_config",
           "demo_vq_model", "finish_run", "FinishedStudent", "load_recipe_data", "parse_recipe_args",
           "push_if_requested", "raise_before_the_demo_zoo", "RobustnessArguments", "run_recipe", "RunEnd",
           "watch_output_dir"]
