"""Checks of a training run before its first step, each written once for the recipes and the
trainer: an output folder it can write, steps to train, a checkpoint of this student to resume,
checkpointing that keeps the captured features' gradients, and models that fit the loss terms."""

from __future__ import annotations

import os
import tempfile

from transformers import PreTrainedModel

from ..data.columns import STORED_TEACHER_LOGITS
from ..models.heads import REORDER, SAME, describe_difference, head_classes, is_image_classifier, match_head
from .config import DistillationConfig
from .distributed import check_one_device_per_process


def check_output_dir(path: str) -> None:
    """A folder the run can create or write into (not a file, nor under one, nor read-only), found out
    by making a folder where it would write (and removing it): permission bits do not tell, as under
    ``/sys`` where root's bits allow what the file system refuses."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file: give a folder (it is made when missing)")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{path!r} cannot be made: {parent!r} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hf-robust-distill-check-", dir=parent))
    except OSError as error:
        raise ValueError(f"{path!r} cannot be {'written' if parent == os.path.abspath(path) else 'made'}: "
                         f"{parent!r} refuses a new folder ({error.strerror}); give a folder you can write") from None


def check_trains_something(config) -> None:
    if config.max_steps <= 0 and config.num_train_epochs <= 0:
        raise ValueError(f"--num_train_epochs {config.num_train_epochs:g} trains nothing, and the card would present "
                         "the untouched start as a distilled student: give --num_train_epochs > 0 or --max_steps > 0")


_SHAPE = ("model_type", "hidden_size", "hidden_sizes", "num_hidden_layers", "depths", "num_attention_heads",
          "patch_size", "image_size")


def check_resume_matches(checkpoint: str, student_config, num_classes: int | None = None) -> None:
    """The checkpoint to resume from holds this run's student: its architecture's shape, and as many
    classes as the run's head (a LoRA or DeepSpeed checkpoint without config.json is not read)."""
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        return
    saved = AutoConfig.from_pretrained(checkpoint)

    def shape(config):
        vision = getattr(config, "vision_config", None) or config
        return {field: getattr(vision, field, getattr(config, field, None)) for field in _SHAPE}

    there, here = shape(saved), shape(student_config)
    differences = [f"{field} {there[field]} there, {here[field]} here"
                   for field in _SHAPE if there[field] != here[field]]
    if num_classes is not None and saved.num_labels != num_classes:
        differences.append(f"{saved.num_labels} classes there, {num_classes} here")
    if differences:
        raise ValueError(f"{checkpoint} holds another model than this run's student ({'; '.join(differences)}): "
                         "resume from a checkpoint of this run (<output_dir>/checkpoint-<step>), or drop the flag")


def check_checkpointing(args, inner_token_layers: bool = False) -> None:
    """Reentrant checkpointing reruns a block under no_grad: what a hook captures inside it (an
    attention map, an inner block's tokens) carries no gradient, so those losses would not train.
    ``inner_token_layers``: the patch term reads a block before the last (known once the student loads)."""
    if not args.activation_checkpointing:
        return
    kwargs = args.activation_checkpointing_kwargs if isinstance(args.activation_checkpointing_kwargs, dict) else {}
    if kwargs.get("use_reentrant", False) and (args.attn_weight > 0 or inner_token_layers):
        raise ValueError("reentrant gradient checkpointing recomputes each block without autograd, so attention maps "
                         "and inner blocks' tokens captured inside it get no gradient: use "
                         "--activation_checkpointing_kwargs '{\"use_reentrant\": false}' (the default)")


def stores_teacher_logits(dataset) -> bool:
    """Whether an offline DAD training set carries the teacher's logits (so it can be skipped)."""
    columns = getattr(dataset, "column_names", None) or []
    return all(c in columns for c in STORED_TEACHER_LOGITS)


def check_trainer_inputs(model, teacher, args, *, train_dataset, processing_class, discretizer) -> None:
    """What ``RobustDistillationTrainer`` is given fits its ``args``: a teacher wherever a term reads
    one, the student's image processor, a VQ model for online DAD, heads of the same classes for
    logit terms, augmentation only where the teacher runs, one device per process."""
    if not isinstance(args, DistillationConfig):
        raise TypeError("args must be a DistillationConfig")
    feature_terms = any(getattr(args, w) > 0 for w in ("cls_weight", "patch_weight", "attn_weight"))
    stored = args.dad_mode == "offline" and stores_teacher_logits(train_dataset)
    logit_terms = args.kd_weight > 0 or args.dad_kd_weight > 0
    if teacher is None and (feature_terms or args.dad_mode == "online" or (logit_terms and not stored)):
        raise ValueError("distillation needs a teacher; without one only ce_weight and dad_ce_weight may be > 0, or "
                         "an offline DAD dataset must carry the teacher's logits "
                         "(generate_dad_dataset(..., teacher_logits=True))")
    if processing_class is None:
        raise ValueError("pass the student's image processor as processing_class, e.g. "
                         "AutoImageProcessor.from_pretrained(student_name_or_path)")
    if args.dad_mode == "online" and discretizer is None:
        raise ValueError("online DAD needs a VQ model: pass discretizer=VQDiscretizer.from_pretrained(...)")
    if teacher is not None and not isinstance(teacher, PreTrainedModel) and feature_terms:
        raise ValueError(f"a {type(teacher).__name__} teacher gives logits only; set cls_weight, patch_weight and "
                         "attn_weight to 0, or use a ViT teacher of the student's shape for those terms")
    check_heads(model, teacher, args)
    check_one_device_per_process(args.n_gpu)
    if (args.mixing.mixes or args.augmentation.active) and teacher is None and logit_terms:
        raise ValueError("augmentation and mixup/cutmix change the images the stored teacher logits were computed on: "
                         "pass the teacher, which then runs on the augmented images")


def check_heads(model, teacher, args) -> None:
    """Logit distillation compares the heads' outputs class by class; CE and KD need a student head."""
    if (args.kd_weight > 0 or args.dad_kd_weight > 0) and teacher is not None:
        student_classes, teacher_classes = head_classes(model), head_classes(teacher)
        if student_classes is None or teacher_classes is None:
            raise ValueError("logit distillation (kd_weight, dad_kd_weight) needs image classifiers as teacher and "
                             "student; set those weights to 0")
        match = match_head(teacher, student_classes)
        if match == REORDER:
            raise ValueError("the teacher predicts the student's classes in another order (or among others): reorder "
                             "its head first with hf_robust_distill.models.align_head(teacher, student_class_names), "
                             "or KD would match the wrong classes")
        if match != SAME:
            raise ValueError("logit distillation needs a teacher of the student's classes: the teacher "
                             + describe_difference(teacher_classes, student_classes))
    if (args.ce_weight > 0 or args.dad_ce_weight > 0 or args.kd_weight > 0) and not is_image_classifier(model):
        raise ValueError("ce_weight, dad_ce_weight and kd_weight need a student with a classification head; set them "
                         "to 0")
