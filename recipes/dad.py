"""Discrete Adversarial Distillation (DAD): a frozen teacher (a CLIP zero-shot classifier, or any
image classifier) teaches a student on clean images and on discrete adversarial images, made by
one PGD step against the teacher between two passes through a VQ model.

    accelerate launch recipes/dad.py \\
        --teacher_name_or_path openai/clip-vit-large-patch14 \\
        --vq_name_or_path <a VQ-f8 model in diffusers format> --vq_input_range "[-1,1]" \\
        --student_name_or_path google/vit-base-patch16-224 --dataset_name <imagenet-1k on the Hub> \\
        --output_dir vit-b16-dad --bf16
    accelerate launch recipes/dad.py --config recipes/configs/dad_vit_base.yaml ...   # the official run
    python recipes/dad.py           # the embedded demo: digits, a tiny CLIP, VQ model and ViT, two CPU cores

Flags: the fields of ``ScriptArguments`` and ``DataArguments`` below, every ``DistillationConfig``
field (loss weights, ``--dad_mode``, ``--dad_objective``, ``--attack_*``) and every
``TrainingArguments`` flag. DAD images are made once, offline, before training (step 0.01), as the
official code does; ``--dad_mode online`` makes them every step instead. The loss defaults to the
paper's: CE + (T^2/2) KL(t(x)||s(x)) + (T^2/2) KL(t(x_dad)||s(x_dad)), T 4. ``--dad_objective
official`` is the official script's as it runs: 0.75 SoftCE + 0.25 T^2 KL over the joint batch of
clean and DAD images (those weights, and no separate DAD terms, become the defaults).
"""

import logging
import os

import torch

from hf_robust_distill import RobustDistillationTrainer
from hf_robust_distill.cli import run_recipe, watch_output_dir
from hf_robust_distill.cli.dad import (DAD_DEFAULTS, DEMO_DEFAULTS, OFFICIAL_OBJECTIVE_DEFAULTS, ScriptArguments,
                                       finish, load_frozen_models, load_student, parse_args, plain_kd_config,
                                       preflight, training_set)

__all__ = ["DAD_DEFAULTS", "DEMO_DEFAULTS", "OFFICIAL_OBJECTIVE_DEFAULTS", "ScriptArguments", "main", "parse_args",
           "plain_kd_config", "preflight"]

logger = logging.getLogger("dad")


def train_student(run, config, teacher, discretizer, train_set) -> RobustDistillationTrainer:
    trainer = RobustDistillationTrainer(model=load_student(run, config), teacher=teacher, args=config,
                                        train_dataset=train_set, processing_class=run.processor,
                                        discretizer=discretizer)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    trainer.bad_images.log_summary()
    return trainer


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # tiny attention probabilities are denormal; slow on CPUs
    # 1. parse, and check flags, checkpoints, data and the evaluation images before any weight is read
    run = preflight(argv)
    watch_output_dir(run.config.output_dir)
    # 2. build the teacher, the VQ model and the training set (offline: with its DAD images)
    teacher, teacher_classifier, discretizer = load_frozen_models(run)
    train_set = training_set(run, teacher_classifier, discretizer)
    if run.script_args.generate_only:
        logger.info("DAD images generated in %s; run again without --generate_only to train",
                    run.script_args.dad_dataset or os.path.join(run.config.output_dir, "dad-dataset"))
        return {"train_set": train_set}
    # 3. train the DAD student, and the plain-KD baseline beside it
    trainers = {"DAD student": train_student(run, run.config, teacher if run.needs_teacher else None, discretizer,
                                             train_set)}
    if run.script_args.plain_kd_baseline:
        baseline = train_student(run, plain_kd_config(run.config), teacher, None, run.training_set(run.data.train))
        trainers = {"plain-KD student": baseline, **trainers}
    # 4. finish: the table, the robustness reports, the cards, the push
    return finish(run, trainers, teacher_classifier)


if __name__ == "__main__":
    run_recipe(main)
