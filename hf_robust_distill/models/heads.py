"""A classifier's head against a dataset's classes, compared by name.

* ``head_classes``: the class names a model predicts, in output order (a transformers image
  classifier's ``id2label``, a ``CLIPZeroShotClassifier``'s prompts' names).
* ``match_head``: ``"same"`` (the dataset's classes in its order), ``"reorder"`` (all of the
  dataset's classes, in another order or among more), or ``"different"``.
* ``align_head``: reorders (or cuts) the head's rows to the dataset's classes, so that a teacher
  trained on the same classes in another order distils, and a student keeps its trained head.
* ``reset_head``: a new head for the dataset's classes, freshly initialised.
* ``detach_head_inputs``: the head learns by cross-entropy on features it cannot change, so
  the backbone learns from the distillation terms alone (an online linear probe).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PreTrainedModel

from . import timm_models

logger = logging.getLogger(__name__)


SAME, REORDER, DIFFERENT = "same", "reorder", "different"


def _normalised(name) -> str:
    return " ".join(str(name).lower().split())


def is_image_classifier(model) -> bool:
    """A transformers model with a classification head (``XxxForImageClassification``), also
    inside a ``peft`` wrapper."""
    model = unwrap_adapters(model)
    return isinstance(model, PreTrainedModel) and type(model).__name__.endswith("ForImageClassification")


def unwrap_adapters(model):
    """The transformers model inside a ``peft`` wrapper (the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_classes(model) -> list[str] | None:
    """The class names of the model's outputs, in order; ``None`` for a model without a head."""
    if hasattr(model, "class_names"):  # CLIPZeroShotClassifier
        return list(model.class_names)
    inner = getattr(model, "model", None)
    if isinstance(inner, PreTrainedModel) and not isinstance(model, PreTrainedModel):  # PixelSpaceClassifier
        model = inner
    if not is_image_classifier(model):
        return None
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(model.config.num_labels)]


def class_positions(predicted: list[str], wanted: list[str]) -> list[int] | None:
    """For each wanted class, the output that predicts it; ``None`` when one is missing or when a
    name is ambiguous (compared case- and space-insensitively)."""
    index: dict[str, int] = {}
    for i, name in enumerate(predicted):
        key = _normalised(name)
        if key in index:
            return None
        index[key] = i
    positions = [index.get(_normalised(name)) for name in wanted]
    return None if any(p is None for p in positions) else positions


def match_head(model, names: list[str] | None) -> str:
    """``SAME``, ``REORDER`` or ``DIFFERENT`` (also for a model without a head, or no names)."""
    return match_classes(head_classes(model), names)


def match_classes(predicted: list[str] | None, names: list[str] | None) -> str:
    """How a head predicting ``predicted`` relates to the dataset's ``names``: ``SAME``, ``REORDER``
    or ``DIFFERENT``."""
    if predicted is None or not names:
        return DIFFERENT
    positions = class_positions(predicted, names)
    if positions is None:
        return DIFFERENT
    return SAME if positions == list(range(len(predicted))) else REORDER


def describe_difference(predicted: list[str] | None, names: list[str]) -> str:
    """What a reader needs to see why two class lists do not match."""
    if predicted is None:
        return "it has no classification head"
    missing = [n for n in names if _normalised(n) not in {_normalised(p) for p in predicted}]
    shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return (f"it predicts {len(predicted)} classes ({', '.join(repr(p) for p in predicted[:3])}"
            f"{', ...' if len(predicted) > 3 else ''}) and lacks {len(missing)} of the dataset's {len(names)}: {shown}")


def head_modules(model: PreTrainedModel) -> list[nn.Module]:
    """The modules of a transformers classifier outside its backbone (the classification head; a
    timm model's classifier, which its wrapper keeps inside the timm model)."""
    if timm_models.is_timm(model):
        return timm_models.head_modules(model)
    base = getattr(model, "base_model", model)
    return [m for m in model.children() if m is not base and any(True for _ in m.parameters())]


def head_linears(model: PreTrainedModel) -> list[nn.Linear]:
    """The output layers of the head: its linear layers with one row per class."""
    return [m for head in head_modules(model) for m in head.modules()
            if isinstance(m, nn.Linear) and m.out_features == model.config.num_labels]


def _set_labels(model: PreTrainedModel, names: list[str]) -> None:
    model.config.num_labels = len(names)
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    if hasattr(model.config, "label_names"):  # a timm config saves these, not id2label, once it has them
        model.config.label_names = list(names)


@torch.no_grad()
def align_head(model, names: list[str]):
    """Reorders (or cuts) the model's head to ``names``: output ``i`` then predicts ``names[i]``,
    with the weights the head had for that class. Returns the model, changed in place."""
    predicted = head_classes(model)
    positions = class_positions(predicted or [], names)
    if positions is None:
        raise ValueError(f"{type(model).__name__} does not predict the dataset's classes: "
                         f"{describe_difference(predicted, names)}")
    if hasattr(model, "class_names"):  # CLIPZeroShotClassifier: its text head's rows
        model.head = model.head[torch.as_tensor(positions, device=model.head.device)]
        model.class_names = [model.class_names[p] for p in positions]
        return model
    target = model.model if not isinstance(model, PreTrainedModel) else model
    linears = head_linears(target)
    if not linears:
        raise ValueError(f"cannot reorder the head of {type(target).__name__}: it has no linear layer with one row "
                         "per class; fine-tune it on the dataset's classes instead")
    for linear in linears:
        index = torch.as_tensor(positions, device=linear.weight.device)
        linear.weight = nn.Parameter(linear.weight[index].clone(), requires_grad=linear.weight.requires_grad)
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias[index].clone(), requires_grad=linear.bias.requires_grad)
        linear.out_features = len(positions)
    _set_labels(target, list(names))
    return model


@torch.no_grad()
def reset_head(model: PreTrainedModel, names: list[str]) -> PreTrainedModel:
    """A freshly initialised head for ``names`` (normal with the config's ``initializer_range``,
    zero bias, as transformers starts one), whatever the checkpoint's head held before."""
    std = getattr(model.config, "initializer_range", 0.02) or 0.02
    for linear in head_linears(model):
        nn.init.normal_(linear.weight, std=std)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
    _set_labels(model, list(names))
    return model


class _NoGradientBack(torch.autograd.Function):
    """Identity forward, zero gradient backward. Unlike ``detach`` the input stays in the autograd
    graph, so DDP's search for unused parameters (which walks back from the logits) still finds the
    backbone, whose gradients come from the feature terms."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


def _stop_gradient(module, args):
    return tuple(_NoGradientBack.apply(a) if isinstance(a, torch.Tensor) and a.requires_grad else a for a in args)


def detach_head_inputs(model: PreTrainedModel) -> list:
    """Passes no gradient back through the head's inputs: a loss on the logits then trains the
    head only. Returns the hook handles (the hooks stay for the model's life; they are not saved)."""
    return [head.register_forward_pre_hook(_stop_gradient) for head in head_modules(model)]


def freeze_unread_head(model, keep_head: bool = False) -> None:
    """Freezes what no loss reads when no KD or CE term reads the logits: the pooler, and the
    head too unless ``keep_head`` (it is then trained on detached features).

    A parameter that gets no gradient makes DDP fail; frozen, it also stays out of the optimizer.
    """
    if timm_models.is_timm(model):
        in_head_ids = {id(p) for head in head_modules(model) for p in head.parameters()}
    else:
        base = getattr(model, "base_model", model)
        in_head_ids = {id(p) for p in model.parameters()} - {id(p) for p in base.parameters()}
    for name, parameter in model.named_parameters():
        in_head = id(parameter) in in_head_ids
        if (in_head and not keep_head) or ".pooler." in f".{name}":
            parameter.requires_grad_(False)


def fit_to_classes(model, names: list[str] | None, role: str = "the model") -> str:
    """How the model's head relates to the dataset's ``names`` (``match_head``); a head of the
    same classes in another order (or among more) is reordered to them, and the run is told."""
    match = match_head(model, names)
    if match == REORDER:
        align_head(model, names)
        logger.warning("%s predicts the dataset's classes in another order (or among others): its head was "
                       "reordered to the dataset's, so its outputs are the dataset's classes", role)
    return match
