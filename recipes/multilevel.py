"""Asymmetric multi-level ViT distillation: a frozen teacher sees clean images, the student the
same images distorted, and the student learns to match the teacher's [CLS] embedding, patch
tokens and attention maps.

    accelerate launch recipes/multilevel.py \\
        --teacher_name_or_path google/vit-base-patch16-224 --dataset_name timm/imagenet-1k-wds \\
        --distortions "pixel_mask:0.5-0.9,noise:0.1-0.5,blur:1-4" --output_dir vit-b16-robust
    python recipes/multilevel.py --config recipes/configs/multilevel_vit_base.yaml
    python recipes/multilevel.py            # the embedded demo: digits, a tiny ViT, two CPU cores

Flags: the fields of ``ScriptArguments`` below, every ``DistillationConfig`` field (loss weights,
layers, distortions) and every ``transformers.TrainingArguments`` flag.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import AutoImageProcessor, set_seed

from hf_robust_distill import DistillationConfig, RobustDistillationTrainer
from hf_robust_distill.cli import (DataArguments, RobustnessArguments, load_splits, parse_recipe_args,
                                   push_if_requested, report_and_card, take_push_request)
from hf_robust_distill.data import class_names, prepare_dataset
from hf_robust_distill.distortions import parse_distortions
from hf_robust_distill.evaluation import cls_features, distortion_table, fit_linear_probe, report_table
from hf_robust_distill.models import PixelPreprocessor, PixelSpaceClassifier, has_matching_head, load_vision_model

logger = logging.getLogger("multilevel")


@dataclass
class ScriptArguments:
    teacher_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher ViT (Hub id or path). Unset: the embedded demo."})
    student_name_or_path: str | None = field(
        default=None, metadata={"help": "Student initialisation; defaults to the teacher's checkpoint."})
    eval_distortions: str | None = field(
        default=None, metadata={"help": "Columns of the final table (a distortion spec); defaults to "
                                        "each entry of --distortions."})
    linear_probe: bool = field(
        default=False, metadata={"help": "Also fit a linear probe on the student's frozen [CLS] features of "
                                         "distorted training images (the paper's protocol)."})
    probe_label_fraction: float = field(
        default=1.0, metadata={"help": "Fraction of training labels the linear probe sees."})


DEMO_DEFAULTS = dict(
    output_dir="demo_output/multilevel", corruption_cache_dir="demo_output/corrupted", num_train_epochs=4,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=128, learning_rate=5e-4, weight_decay=1e-4, lr_scheduler_type="cosine",
    warmup_steps=0.05, logging_steps=50, eval_strategy="no", save_strategy="no", report_to="none",
    distortions="pixel_mask:0.5-0.8,noise:0.2-0.5,blur:2-3", linear_probe=True, disable_tqdm=True,
    dataloader_pin_memory=torch.accelerator.is_available(),
)


def parse_args(argv: list[str] | None = None):
    """(ScriptArguments, DataArguments, RobustnessArguments, DistillationConfig) from the command
    line, optionally on top of ``--config file.yaml``; with no teacher given the embedded demo's
    settings are the defaults, and any flag still overrides them."""
    return parse_recipe_args((ScriptArguments, DataArguments, RobustnessArguments, DistillationConfig), argv,
                             demo_defaults=DEMO_DEFAULTS)


def build_teacher_if_demo(script_args: ScriptArguments, config: DistillationConfig) -> None:
    if script_args.teacher_name_or_path:
        return
    from hf_robust_distill.demo import demo_model

    with config.main_process_first(desc="building the demo teacher"):
        script_args.teacher_name_or_path = demo_model("vit", seed=config.seed)


def linear_probe_rows(student, preprocessor, train, test, columns, fraction, seed) -> dict:
    """Linear probe on frozen [CLS] features of distorted training images, scored per column."""
    spec = ",".join(columns)
    features, labels = cls_features(student, preprocessor, train, view=spec, seed=seed)
    probe = fit_linear_probe(features, labels, fraction=fraction, seed=seed)
    row = {}
    for column in ["clean", *columns]:
        x, y = cls_features(student, preprocessor, test, view=None if column == "clean" else column, seed=seed)
        row[column] = float((probe.predict(x) == y).mean())
    return {f"student, linear probe ({fraction:.0%} labels)": row}


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # tiny attention probabilities are denormal; slow on CPUs
    script_args, data_args, robustness, config = parse_args(argv)
    set_seed(config.seed)  # before any model is made: new heads and the demo zoo start from the seed
    repo_id = take_push_request(config)
    build_teacher_if_demo(script_args, config)
    student_path = script_args.student_name_or_path or script_args.teacher_name_or_path

    with config.main_process_first(desc="loading the dataset"):
        train, evaluation = load_splits(data_args, seed=config.seed)
    names = class_names(train, data_args.label_column or "label")

    attention = config.attn_weight > 0
    teacher = load_vision_model(script_args.teacher_name_or_path, attention_maps=attention)
    student = load_vision_model(student_path, attention_maps=attention)
    teacher_has_head = has_matching_head(teacher, names)
    if names is not None and not has_matching_head(student, names):
        logger.warning("the student's head does not predict this dataset's classes: starting a new head")
        student = load_vision_model(student_path, attention_maps=attention, label_names=names)
    processor = AutoImageProcessor.from_pretrained(student_path)
    teacher_processor = AutoImageProcessor.from_pretrained(script_args.teacher_name_or_path)
    student_pixels = PixelPreprocessor.from_image_processor(processor)
    teacher_pixels = PixelPreprocessor.from_image_processor(teacher_processor)

    size = student_pixels.size
    train_set = prepare_dataset(train, size, data_args.image_column, data_args.label_column)
    eval_set = prepare_dataset(evaluation, size, data_args.image_column, data_args.label_column)

    trainer = RobustDistillationTrainer(
        model=student, teacher=teacher, args=config, train_dataset=train_set,
        eval_dataset=eval_set if config.eval_strategy != "no" else None,
        processing_class=processor, teacher_processor=teacher_processor,
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)

    results = {"trainer": trainer}
    if not trainer.is_world_process_zero():
        return results
    columns = [str(e) for e in parse_distortions(script_args.eval_distortions or config.distortions)]
    student = trainer.model.eval()
    models, preprocessors = {"student": student}, {"student": student_pixels}
    if teacher_has_head:
        models = {"teacher": trainer.teacher, **models}
        preprocessors["teacher"] = teacher_pixels
    table = {}
    if names is not None and has_matching_head(student, names):
        table = distortion_table(models, preprocessors, eval_set, columns, config.seed)
    if script_args.linear_probe and names is not None:
        table.update(linear_probe_rows(student, student_pixels, train_set, eval_set, columns,
                                       script_args.probe_label_fraction, config.seed))
    if table:
        report_table(table, config.output_dir)
    results["table"] = table
    if names is not None and has_matching_head(student, names):
        results["reports"] = report_and_card(
            {"student": (PixelSpaceClassifier(student, student_pixels), config.output_dir, student_path, "multilevel",
                         config)},
            PixelSpaceClassifier(trainer.teacher, teacher_pixels) if teacher_has_head else None,
            script_args.teacher_name_or_path, evaluation, robustness, config,
            train_dataset=data_args.dataset_name, num_train_examples=len(train), image_size=size, repo_id=repo_id,
            eval_split=data_args.eval_split, image_column=data_args.image_column, label_column=data_args.label_column)
    results["commit"] = push_if_requested(config, repo_id)
    return results


if __name__ == "__main__":
    main()
