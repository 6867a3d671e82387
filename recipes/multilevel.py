"""Asymmetric multi-level ViT distillation: a frozen teacher sees clean images, the student the
same images distorted, and the student learns to match the teacher's [CLS] embedding, patch
tokens and attention maps.

    accelerate launch recipes/multilevel.py \\
        --teacher_name_or_path google/vit-base-patch16-224 --dataset_name timm/imagenet-1k-wds \\
        --distortions "pixel_mask:0.5-0.9,noise:0.1-0.5,blur:1-4" --output_dir vit-b16-robust
    python recipes/multilevel.py --config recipes/configs/multilevel_vit_base.yaml
    python recipes/multilevel.py            # the embedded demo: digits, a tiny ViT, two CPU cores

Flags: the fields of ``ScriptArguments`` below, every ``DistillationConfig`` field (loss weights,
layers, distortions) and every ``transformers.TrainingArguments`` flag. Every flag, checkpoint,
label and evaluation image is checked before the first step; all problems are listed together.
"""

import logging

import torch

from hf_robust_distill import RobustDistillationTrainer
from hf_robust_distill.cli import run_recipe, watch_output_dir
from hf_robust_distill.cli.multilevel import (DEMO_DEFAULTS, METHOD_DEFAULTS, ScriptArguments, build_teacher_if_demo,
                                              finish, load_models, parse_args, preflight)

__all__ = ["DEMO_DEFAULTS", "METHOD_DEFAULTS", "ScriptArguments", "build_teacher_if_demo", "main", "parse_args",
           "preflight"]


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # tiny attention probabilities are denormal; slow on CPUs
    # 1. parse, and check flags, checkpoints, data and the evaluation images before any weight is read
    run = preflight(argv)
    watch_output_dir(run.config.output_dir)
    # 2. build the teacher and the student
    teacher, student = load_models(run)
    # 3. train
    trainer = RobustDistillationTrainer(
        model=student, teacher=teacher, args=run.config, train_dataset=run.training_set(run.data.train),
        eval_dataset=run.prepared(run.data.evaluation) if run.config.eval_strategy != "no" else None,
        processing_class=run.processor, teacher_processor=run.teacher_processor)
    trainer.train(resume_from_checkpoint=run.config.resume_from_checkpoint)
    trainer.save_model(run.config.output_dir)
    trainer.bad_images.log_summary()
    # 4. finish: the table, the robustness reports, the card, the push
    return finish(run, trainer)


if __name__ == "__main__":
    run_recipe(main)
