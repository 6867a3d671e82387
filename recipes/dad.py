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

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field, replace

import torch
from transformers import AutoConfig

from hf_robust_distill import (CLIPZeroShotClassifier, DistillationConfig, RobustDistillationTrainer, VQDiscretizer,
                               generate_dad_dataset)
from hf_robust_distill.cli import (DataArguments, RobustnessArguments, check_card_possible, check_recipe_flags,
                                   decode_evaluation_split, load_recipe_data, parse_recipe_args, push_if_requested,
                                   raise_before_the_demo_zoo, report_and_card, run_recipe, watch_output_dir)
from hf_robust_distill.data import ImageResizer, check_dataset_reachable, prepare_dataset
from hf_robust_distill.evaluation import distortion_table, report_table
from hf_robust_distill.methods.dad import load_dad_source, pair_with_dad, read_vq_config
from hf_robust_distill.models import (DIFFERENT, HEAD_WEIGHTS, PixelPreprocessor, PixelSpaceClassifier, check_drop_path,
                                      check_feature_terms, config_classes, describe_difference, fit_to_classes,
                                      load_pixel_classifier, load_with_head, match_classes, read_image_processor,
                                      read_model_config, resolve_templates, saved_head_classes, student_load_kwargs,
                                      whole_weights)
from hf_robust_distill.training import check_resume_matches, frozen_autocast, is_sharded
from hf_robust_distill.utils import Problems
from hf_robust_distill.views import parse_distortions

logger = logging.getLogger("dad")


@dataclass
class ScriptArguments:
    teacher_name_or_path: str | None = field(
        default=None, metadata={"help": "CLIP checkpoint (a zero-shot head is built from the class names), a "
                                        "saved CLIPZeroShotClassifier, or an image classifier. Unset: the demo."})
    prompt_templates: str = field(
        default="openai", metadata={"help": "Zero-shot prompt set of a CLIP teacher: openai (80), short (7), plain."})
    vq_name_or_path: str | None = field(default=None, metadata={"help": "VQ model in diffusers format."})
    vq_subfolder: str | None = field(default=None, metadata={"help": "Subfolder of the VQ model, e.g. vqvae."})
    vq_input_range: str | None = field(
        default=None, metadata={"help": "'[-1,1]' or '[0,1]'; read from vq_discretizer.json when saved there."})
    student_name_or_path: str | None = field(default=None, metadata={"help": "Student initialisation."})
    dad_dataset: str | None = field(
        default=None, metadata={"help": "Offline mode: a dataset made by generate_dad_dataset (the folder it wrote, a "
                                        "saved dataset or a Hub id); made into <output_dir>/dad-dataset when unset."})
    dad_teacher_logits: bool = field(
        default=True, metadata={"help": "Offline generation also stores the teacher's logits (training skips "
                                        "the teacher)."})
    generation_batch_size: int = field(default=64, metadata={"help": "Batch size of offline generation."})
    eval_distortions: str = field(
        default="gaussian_noise:3,gaussian_blur:3,contrast:4,pixel_mask:0.5",
        metadata={"help": "Columns of the final accuracy table (a distortion spec)."})
    generate_only: bool = field(
        default=False, metadata={"help": "Offline mode: generate the DAD dataset (into <output_dir>/dad-dataset "
                                         "unless --dad_dataset names one) and stop; the same command without the "
                                         "flag then trains from it."})
    plain_kd_baseline: bool = field(
        default=False, metadata={"help": "Also train a plain-KD student (no DAD images) for the table."})


DAD_DEFAULTS = dict(
    dad_mode="offline", distortions="clean", cls_weight=0.0, patch_weight=0.0, attn_weight=0.0, kd_weight=0.5,
    ce_weight=1.0, dad_kd_weight=0.5, temperature=4.0, learning_rate=1e-4, weight_decay=0.05,
    lr_scheduler_type="cosine", warmup_steps=0.05,
)
DEMO_DEFAULTS = dict(
    output_dir="demo_output/dad", corruption_cache_dir="demo_output/corrupted", num_train_epochs=1,
    per_device_train_batch_size=32, per_device_eval_batch_size=128,
    learning_rate=5e-4, logging_steps=50, eval_strategy="no", save_strategy="no", report_to="none",
    disable_tqdm=True, prompt_templates="short", plain_kd_baseline=True,
    dataloader_pin_memory=torch.accelerator.is_available(),
)


OFFICIAL_OBJECTIVE_DEFAULTS = dict(ce_weight=0.75, kd_weight=0.25, dad_kd_weight=0.0, dad_ce_weight=0.0)


def parse_args(argv=None, problems: Problems | None = None):
    """(ScriptArguments, DataArguments, RobustnessArguments, DistillationConfig)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = dict(DAD_DEFAULTS)
    if _flag_value(argv, "--dad_objective") == "official":
        defaults.update(OFFICIAL_OBJECTIVE_DEFAULTS)
    return parse_recipe_args((ScriptArguments, DataArguments, RobustnessArguments, DistillationConfig), argv,
                             defaults=defaults, demo_defaults=DEMO_DEFAULTS, problems=problems)


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def use_demo_zoo(script_args: ScriptArguments, config: DistillationConfig) -> None:
    """With no teacher given: the tiny CLIP, VQ model and ViT of the demo zoo."""
    if script_args.teacher_name_or_path:
        return
    from hf_robust_distill.cli import demo_model

    script_args.teacher_name_or_path = demo_model("clip", seed=config.seed)  # every process builds it together
    script_args.vq_name_or_path = script_args.vq_name_or_path or demo_model("vq", seed=config.seed)
    script_args.student_name_or_path = script_args.student_name_or_path or demo_model("vit", seed=config.seed)


def check_teacher(path: str, data) -> None:
    """Before any weight is read: the teacher gives logits for the dataset's classes."""
    names = data.names if data is not None else None
    saved = saved_head_classes(path) if os.path.isdir(path) else None
    if saved is not None:
        if match_classes(saved, names) == DIFFERENT:
            raise ValueError(f"the saved zero-shot head predicts other classes than the dataset's: "
                             f"{describe_difference(saved, names or [])}; build the head from the CLIP checkpoint "
                             "for these classes")
        return
    config = read_model_config(path, "the teacher")
    if config.model_type == "clip":
        if data is not None and not data.named:
            raise ValueError("a CLIP teacher builds its zero-shot head from the class names, and the labels have "
                             "none: give --class_names_file (one name per line, in label order)")
        return
    classes = config_classes(config)
    if match_classes(classes, names) == DIFFERENT:
        raise ValueError(f"the teacher {path} does not predict the dataset's classes "
                         f"({describe_difference(classes, names or [])}): use a CLIP teacher, or a classifier "
                         "fine-tuned on them")


def check_feature_teacher(path: str, student_config, config) -> None:
    """The [CLS], patch and attention terms need a ViT teacher of the student's shape, not a CLIP head."""
    teacher_config = read_model_config(path, "the teacher")
    if teacher_config.model_type.startswith("clip"):
        raise ValueError("a CLIP teacher gives logits only: set cls_weight, patch_weight and attn_weight to 0, or "
                         "use a ViT teacher of the student's shape for those terms")
    check_feature_terms(student_config, teacher_config, config)


def check_dad_dataset(name_or_path: str) -> None:
    if os.path.isdir(name_or_path):
        return
    if os.path.exists(name_or_path) or name_or_path.startswith((".", "/", "~")):
        raise ValueError(f"{name_or_path!r} is not a folder: give the folder generate_dad_dataset wrote, a saved "
                         "dataset or a Hub id")
    check_dataset_reachable(name_or_path)


def load_teacher(path: str, names: list[str], templates: str, built=None):
    """(teacher, its [0,1]-pixel classifier): a CLIP zero-shot classifier or an image classifier,
    its outputs in the dataset's class order. ``built``: a CLIP classifier built before, whose head
    is reused (a whole copy of a sharded teacher, made by one process)."""
    if not os.path.isfile(os.path.join(path, HEAD_WEIGHTS)) and AutoConfig.from_pretrained(path).model_type == "clip":
        head = {} if built is None else dict(head=built.head, logit_scale=built.logit_scale)
        teacher = CLIPZeroShotClassifier.from_clip(path, names, templates=templates, **head)
        return teacher, teacher
    classifier = load_pixel_classifier(path)
    fit_to_classes(classifier, names, "the teacher")
    if isinstance(classifier, CLIPZeroShotClassifier):
        return classifier, classifier
    return classifier.model, classifier


def offline_training_set(script_args, data, config, teacher_classifier, discretizer, resizer):
    """The training split with each row's DAD image (and teacher logits) beside it."""
    if script_args.dad_dataset:
        dad = load_dad_source(script_args.dad_dataset)
    else:
        dad = generate_dad_dataset(
            teacher_classifier, discretizer, data.train, os.path.join(config.output_dir, "dad-dataset"), resizer,
            data.image_column, data.label_column, attack=config.attack_settings(offline=True),
            batch_size=script_args.generation_batch_size, teacher_logits=script_args.dad_teacher_logits,
            seed=config.seed, autocast=frozen_autocast(config))
    stored = [c for c in ("teacher_logits_clean", "teacher_logits_dad") if c in dad.column_names]
    return prepare_dataset(pair_with_dad(data.train, dad, config.max_bad_image_fraction), resizer, data.image_column,
                           data.label_column, extra_images={"dad_image": "dad_pixel_values"},
                           extra_columns=tuple(stored))


def plain_kd_config(config: DistillationConfig) -> DistillationConfig:
    """The baseline's arguments: the same run without DAD images (their objective's CE and KD terms
    on the clean batch alone), in <output_dir>/plain-kd."""
    return replace(config, output_dir=os.path.join(config.output_dir, "plain-kd"), dad_mode="none",
                   dad_objective="separate", dad_kd_weight=0.0, dad_ce_weight=0.0)


def train_student(student_path, names, config, teacher, discretizer, train_set, processor):
    student, head = load_with_head(student_path, names, **student_load_kwargs(config))
    if head == "new":
        logger.warning("the student's head predicts other classes than the dataset's: starting a new head (the CE and "
                       "KD terms train it)")
    trainer = RobustDistillationTrainer(model=student, teacher=teacher, args=config, train_dataset=train_set,
                                        processing_class=processor, discretizer=discretizer)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    trainer.bad_images.log_summary()
    return trainer


def preflight(argv):
    """Everything checked before any weight is loaded: flags, the teacher, VQ model and student
    (configs only), data, labels, classes, the evaluation images. Raises one ``PreflightError``
    listing every problem."""
    problems = Problems()
    parsed = script_args, data_args, robustness, config = parse_args(argv, problems)
    repo_id = check_recipe_flags(problems, script_args, robustness, config, script="recipes/dad.py")
    if script_args is not None and config is not None and script_args.generate_only and config.dad_mode != "offline":
        problems.add("--generate_only", "generates an offline DAD dataset: use it with --dad_mode offline")
    if config is not None and config.dad_mode == "none":
        problems.add("--dad_mode", "recipes/dad.py trains with DAD: --dad_mode online or offline")
    if script_args is not None:
        problems.check("--prompt_templates", resolve_templates, script_args.prompt_templates)
    if script_args is not None and config is not None and script_args.plain_kd_baseline:
        problems.check("--plain_kd_baseline", plain_kd_config, config)
    raise_before_the_demo_zoo(problems, parsed, script_args and script_args.teacher_name_or_path)
    use_demo_zoo(script_args, config)
    if not script_args.vq_name_or_path:
        problems.add("--vq_name_or_path", "DAD needs a VQ model (diffusers format; --vq_subfolder if nested)")
    else:
        problems.check("--vq_name_or_path", read_vq_config, script_args.vq_name_or_path, script_args.vq_subfolder,
                       script_args.vq_input_range)
    student_path = script_args.student_name_or_path
    processor = student_config = None
    if not student_path:
        problems.add("--student_name_or_path", "is required (the teacher is usually another architecture)")
    else:
        student_config = problems.check("--student_name_or_path", read_model_config, student_path, "the student")
        processor = problems.check("--student_name_or_path", read_image_processor, student_path, "the student")
    with config.main_process_first(desc="loading the dataset"):
        data = load_recipe_data(data_args, problems, seed=config.seed,
                                labels_train=config.ce_weight > 0 or config.dad_ce_weight > 0)
    if student_config is not None:
        problems.check("--drop_path_rate", check_drop_path, student_config, config.drop_path_rate)
    if data is not None and not data.scored:
        problems.add("--dataset_name", "DAD distils a classifier: the dataset needs labels of at least two classes"
                     + (f" ({data.unlabelled_because})" if data.unlabelled_because else ""))
    problems.check("--teacher_name_or_path", check_teacher, script_args.teacher_name_or_path, data)
    if config.resume_from_checkpoint and student_config is not None and data is not None and data.names:
        problems.check("--resume_from_checkpoint", check_resume_matches, config.resume_from_checkpoint,
                       student_config, len(data.names))
    if student_config is not None and any(w > 0 for w in (config.cls_weight, config.patch_weight, config.attn_weight)):
        problems.check("--cls_weight / --patch_weight / --attn_weight", check_feature_teacher,
                       script_args.teacher_name_or_path, student_config, config)
    if config.dad_mode == "offline" and script_args.dad_dataset:
        problems.check("--dad_dataset", check_dad_dataset, script_args.dad_dataset)
    check_card_possible(data, student_config is not None, repo_id, problems)
    if processor is not None and data is not None:
        decode_evaluation_split(data, ImageResizer(processor), robustness, config.max_bad_image_fraction, problems)
    problems.raise_if_any()
    return script_args, data_args, robustness, config, data, repo_id, processor


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # tiny attention probabilities are denormal; slow on CPUs
    script_args, data_args, robustness, config, data, repo_id, processor = preflight(argv)
    watch_output_dir(config.output_dir)
    student_path = script_args.student_name_or_path
    names = data.names
    with whole_weights():  # every process runs the frozen teacher and VQ model
        teacher, teacher_classifier = load_teacher(script_args.teacher_name_or_path, names,
                                                   script_args.prompt_templates)
        discretizer = VQDiscretizer.from_pretrained(script_args.vq_name_or_path, subfolder=script_args.vq_subfolder,
                                                    input_range=script_args.vq_input_range, device=config.device)
    resizer = ImageResizer(processor)
    student_pixels = PixelPreprocessor.from_image_processor(processor)
    eval_set = prepare_dataset(data.evaluation, resizer, data.image_column, data.label_column)
    if config.dad_mode == "offline":
        teacher_classifier.to(config.device)
        train_set = offline_training_set(script_args, data, config, teacher_classifier, discretizer, resizer)
        if script_args.generate_only:
            logger.info("DAD images generated in %s; run again without --generate_only to train",
                        script_args.dad_dataset or os.path.join(config.output_dir, "dad-dataset"))
            return {"train_set": train_set}
    else:
        train_set = prepare_dataset(data.train, resizer, data.image_column, data.label_column)

    # Augmented or mixed batches are new images: the teacher runs on them (stored logits are of the originals).
    needs_teacher = (config.dad_mode == "online" or not script_args.dad_teacher_logits
                     or config.augmentation.active or config.mixing.mixes)
    trainer = train_student(student_path, names, config, teacher if needs_teacher else None, discretizer, train_set,
                            processor)
    results = {"trainer": trainer}

    students = {"DAD student": (trainer, config.output_dir, "dad", config)}
    if script_args.plain_kd_baseline:
        kd_config = plain_kd_config(config)
        kd_train = prepare_dataset(data.train, resizer, data.image_column, data.label_column)
        baseline = train_student(student_path, names, kd_config, teacher, None, kd_train, processor)
        students = {"plain-KD student": (baseline, kd_config.output_dir, "kd", kd_config), **students}
        results["baseline"] = baseline
    if not trainer.is_world_process_zero():
        return results

    columns = [str(entry) for entry in parse_distortions(script_args.eval_distortions)]
    students = {name: (t.saved_student(folder), folder, method, c) for name, (t, folder, method, c) in students.items()}
    if is_sharded(teacher_classifier):  # its forward needs every process: this one evaluates a whole copy
        with whole_weights():
            _, teacher_classifier = load_teacher(script_args.teacher_name_or_path, names, script_args.prompt_templates,
                                                 built=teacher_classifier)
    teacher_classifier = teacher_classifier.to(config.device).eval()
    models = {"teacher": teacher_classifier, **{k: m.eval() for k, (m, *_) in students.items()}}
    preprocessors = {name: student_pixels for name in students}  # the teacher takes [0,1] pixels itself
    table = distortion_table(models, preprocessors, eval_set, columns, config.seed)
    report_table(table, config.output_dir)
    results["table"] = table
    results["reports"] = report_and_card(
        {name: (PixelSpaceClassifier(model, student_pixels), folder, student_path, method, student_config)
         for name, (model, folder, method, student_config) in students.items()},
        teacher_classifier, script_args.teacher_name_or_path, data.evaluation, robustness, config,
        train_dataset=data_args.dataset_name, num_train_examples=len(data.train), decode_with=resizer,
        repo_id=repo_id, vq_name_or_path=script_args.vq_name_or_path, eval_split=data_args.eval_split,
        image_column=data.image_column, label_column=data.label_column,
        skipped_training_images=len(trainer.bad_images))
    results["commit"] = push_if_requested(config, repo_id, force=robustness.force_push)
    return results


if __name__ == "__main__":
    run_recipe(main)
