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

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from hf_robust_distill import DistillationConfig, RobustDistillationTrainer
from hf_robust_distill.cli import (DataArguments, RobustnessArguments, check_card_possible, check_recipe_flags,
                                   decode_evaluation_split, load_recipe_data, parse_recipe_args, push_if_requested,
                                   raise_before_the_demo_zoo, report_and_card, run_recipe, watch_output_dir)
from hf_robust_distill.data import ImageResizer, prepare_dataset
from hf_robust_distill.evaluation import cls_features, distortion_table, fit_linear_probe, report_table
from hf_robust_distill.models import (DIFFERENT, PixelPreprocessor, PixelSpaceClassifier, check_drop_path,
                                      check_feature_terms, config_classes, fit_to_classes, load_vision_model,
                                      load_with_head, match_classes, read_image_processor, read_model_config,
                                      student_load_kwargs, whole_weights)
from hf_robust_distill.training import check_resume_matches
from hf_robust_distill.utils import Problems, check_fraction
from hf_robust_distill.views import parse_distortions

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


METHOD_DEFAULTS = dict(
    learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.05, optim="adamw_torch",
    distortions="clean,pixel_mask:0.5-0.9,noise:0.1-0.5,blur:1-4",
)
"""The method's own optimisation, chosen from the sweep in benchmarks/multilevel_defaults.py (README)."""
DEMO_DEFAULTS = dict(
    output_dir="demo_output/multilevel", corruption_cache_dir="demo_output/corrupted", num_train_epochs=4,
    per_device_train_batch_size=32, per_device_eval_batch_size=128, logging_steps=50, eval_strategy="no",
    save_strategy="no", report_to="none", distortions="pixel_mask:0.5-0.8,noise:0.2-0.5,blur:2-3", linear_probe=True,
    disable_tqdm=True, dataloader_pin_memory=torch.accelerator.is_available(),
)


def parse_args(argv: list[str] | None = None, problems: Problems | None = None):
    """(ScriptArguments, DataArguments, RobustnessArguments, DistillationConfig) from the command
    line, optionally on top of ``--config file.yaml``; the method's defaults, and with no teacher
    given the embedded demo's settings too; any flag still overrides them."""
    return parse_recipe_args((ScriptArguments, DataArguments, RobustnessArguments, DistillationConfig), argv,
                             defaults=METHOD_DEFAULTS, demo_defaults=DEMO_DEFAULTS, problems=problems)


def build_teacher_if_demo(script_args: ScriptArguments, config: DistillationConfig) -> None:
    if script_args.teacher_name_or_path:
        return
    from hf_robust_distill.cli import demo_model

    script_args.teacher_name_or_path = demo_model("vit", seed=config.seed)  # every process builds it together


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


def preflight(argv):
    """Everything checked before any weight is loaded: flags, checkpoints (configs only), data,
    labels, classes, the evaluation images. Raises one ``PreflightError`` listing every problem."""
    problems = Problems()
    parsed = script_args, data_args, robustness, config = parse_args(argv, problems)
    repo_id = check_recipe_flags(problems, script_args, robustness, config)
    if script_args is not None:
        problems.check("--probe_label_fraction", check_fraction, script_args.probe_label_fraction)
    raise_before_the_demo_zoo(problems, parsed, script_args and script_args.teacher_name_or_path)
    build_teacher_if_demo(script_args, config)
    teacher_path = script_args.teacher_name_or_path
    student_path = script_args.student_name_or_path or teacher_path

    teacher_config = problems.check("--teacher_name_or_path", read_model_config, teacher_path, "the teacher")
    student_config = (teacher_config if student_path == teacher_path else
                      problems.check("--student_name_or_path", read_model_config, student_path, "the student"))
    flag = "--student_name_or_path" if script_args.student_name_or_path else "--teacher_name_or_path"
    processor = problems.check(flag, read_image_processor, student_path, "the student")
    teacher_processor = problems.check("--teacher_name_or_path", read_image_processor, teacher_path, "the teacher")
    with config.main_process_first(desc="loading the dataset"):
        data = load_recipe_data(data_args, problems, seed=config.seed, labels_train=config.ce_weight > 0)
    if student_config is not None and teacher_config is not None:
        problems.check("--student_name_or_path / --teacher_name_or_path", check_feature_terms, student_config,
                       teacher_config, config)
    names = data.names if data is not None else None
    if student_config is not None:
        problems.check("--drop_path_rate", check_drop_path, student_config, config.drop_path_rate)
    student_scored = data is not None and data.scored and student_config is not None
    if config.resume_from_checkpoint and student_config is not None and data is not None and data.names:
        problems.check("--resume_from_checkpoint", check_resume_matches, config.resume_from_checkpoint,
                       student_config, len(data.names))
    if teacher_config is not None and data is not None and config.kd_weight > 0:
        if match_classes(config_classes(teacher_config), names) == DIFFERENT:
            problems.add("--kd_weight", "logit distillation needs a teacher of the dataset's classes, and the teacher "
                                        "predicts others: set --kd_weight 0, or use a teacher fine-tuned on them")
    check_card_possible(data, student_scored, repo_id, problems)
    if processor is not None and data is not None:
        decode_evaluation_split(data, ImageResizer(processor), robustness, config.max_bad_image_fraction, problems)
    problems.raise_if_any()
    return script_args, data_args, robustness, config, data, repo_id, processor, teacher_processor


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # tiny attention probabilities are denormal; slow on CPUs
    script_args, data_args, robustness, config, data, repo_id, processor, teacher_processor = preflight(argv)
    watch_output_dir(config.output_dir)
    teacher_path = script_args.teacher_name_or_path
    student_path = script_args.student_name_or_path or teacher_path

    with whole_weights():  # every process runs the frozen teacher
        teacher = load_vision_model(teacher_path)
    teacher_scores = fit_to_classes(teacher, data.names, "the teacher") != DIFFERENT  # else it only gives features
    student, student_head = load_with_head(student_path, data.names, **student_load_kwargs(config))
    if student_head == "new":
        how = ("it is trained with cross-entropy on detached features (loss_head), so the backbone learns from "
               "distillation only" if not config.logits_read and config.head_ce_weight > 0 and data.scored
               else "the KD and CE terms train it")
        logger.warning("the student's head predicts other classes than the dataset's: starting a new head; %s", how)
    resizer = ImageResizer(processor)
    student_pixels = PixelPreprocessor.from_image_processor(processor)
    teacher_pixels = PixelPreprocessor.from_image_processor(teacher_processor)
    train_set = prepare_dataset(data.train, resizer, data.image_column, data.label_column)
    eval_set = prepare_dataset(data.evaluation, resizer, data.image_column, data.label_column)

    trainer = RobustDistillationTrainer(
        model=student, teacher=teacher, args=config, train_dataset=train_set,
        eval_dataset=eval_set if config.eval_strategy != "no" else None,
        processing_class=processor, teacher_processor=teacher_processor,
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    trainer.bad_images.log_summary()

    results = {"trainer": trainer}
    if not trainer.is_world_process_zero():
        return results
    columns = [str(e) for e in parse_distortions(script_args.eval_distortions or config.distortions)
               if e.name != "clean"]  # the table's first column is clean already
    student = trainer.saved_student(config.output_dir).eval()
    if trainer.teacher.is_sharded:  # its forward needs every process: this one evaluates a whole copy
        with whole_weights():
            teacher = load_vision_model(teacher_path).to(config.device).eval()
        fit_to_classes(teacher, data.names, "the teacher")
    else:
        teacher = trainer.teacher.model
    scored = data.scored and student_head != "none"
    models, preprocessors = {"student": student}, {"student": student_pixels}
    if teacher_scores:
        models = {"teacher": teacher, **models}
        preprocessors["teacher"] = teacher_pixels
    table = {}
    if scored:
        table = distortion_table(models, preprocessors, eval_set, columns, config.seed)
    if script_args.linear_probe and data.scored:
        table.update(linear_probe_rows(student, student_pixels, train_set, eval_set, columns,
                                       script_args.probe_label_fraction, config.seed))
    if table:
        report_table(table, config.output_dir)
    results["table"] = table
    if scored:
        results["reports"] = report_and_card(
            {"student": (PixelSpaceClassifier(student, student_pixels), config.output_dir, student_path, "multilevel",
                         config)},
            PixelSpaceClassifier(teacher, teacher_pixels) if teacher_scores else None,
            teacher_path, data.evaluation, robustness, config, train_dataset=data_args.dataset_name,
            num_train_examples=len(data.train), decode_with=resizer, repo_id=repo_id,
            eval_split=data_args.eval_split, image_column=data.image_column, label_column=data.label_column,
            skipped_training_images=len(trainer.bad_images))
    results["commit"] = push_if_requested(config, repo_id, force=robustness.force_push)
    return results


if __name__ == "__main__":
    run_recipe(main)
