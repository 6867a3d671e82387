"""The student as it trains: parameters its forward never uses frozen, LoRA adapters when asked,
its head trained by the logit terms, on detached features, or frozen, and the taps its loss terms
read."""

from __future__ import annotations

from ..data.columns import LABELS
from ..models import lora
from ..models.attention_maps import read_attention_maps
from ..models.heads import detach_head_inputs, freeze_unread_head, is_image_classifier, unwrap_adapters
from ..models.taps import FeatureTaps
from .distributed import freeze_never_used


def trains_head_apart(model, args, train_dataset) -> bool:
    """Whether the head learns by its own cross-entropy on detached features (``head_ce_weight``):
    no KD or CE term reads the logits, and the training set has labels."""
    return (not args.logits_read and args.head_ce_weight > 0 and is_image_classifier(model)
            and _has_labels(train_dataset))


def _has_labels(dataset) -> bool:
    """Whether a prepared training set yields labels (its first row says; no set: assume so)."""
    if dataset is None:
        return True
    try:
        return LABELS in dataset[0]
    except (TypeError, IndexError, KeyError):
        return True


def prepare_student(model, args, *, trains_head: bool):
    """The student ready to train: never-used parameters frozen, LoRA adapters added (``lora_r``),
    and an unread head frozen, or detached from the backbone when it trains apart."""
    freeze_never_used(unwrap_adapters(model))
    if args.lora_r > 0 and not lora.is_lora(model):
        model = lora.lora_student(model, args.lora_r, args.lora_alpha, args.lora_target_modules, args.lora_dropout,
                                  train_head=is_image_classifier(model) and (args.logits_read or trains_head))
        trainable, total = lora.trained_share(model)
        args.lora_trained_share = trainable / total  # what the card reports (not a flag)
    if not args.logits_read:
        freeze_unread_head(unwrap_adapters(model), keep_head=trains_head)
        if trains_head:
            detach_head_inputs(unwrap_adapters(model))
    return model


def student_taps(model, args) -> FeatureTaps:
    """Hooks on the student for its feature terms, attention maps computed where they are read."""
    taps = FeatureTaps(model, token_layers=args.patch_layers if args.patch_weight > 0 else (),
                       attention_layers=args.attn_layers if args.attn_weight > 0 else (), need_cls=args.cls_weight > 0)
    if args.attn_weight > 0:
        read_attention_maps(unwrap_adapters(model), taps.attention_modules, taps.attention_layers, args.attn_rows)
    return taps
