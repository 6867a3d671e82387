"""Learned maps from a narrower student's width to its teacher's, for the [CLS] and patch terms.

They train with the student, so they live on it as a submodule (``distillation_projections``):
the optimizer, DDP's gradient reduction and FSDP's sharding see them with no extra wiring. They
are not part of the student a user keeps: listed in the model's ``_keys_to_ignore_on_save``,
``save_pretrained`` (and so every student folder and push) leaves them out; the trainer writes
them beside each checkpoint instead (``projections.safetensors``), so a resumed run restores them.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..models.timm_models import keep_attached_keys

ATTRIBUTE = "distillation_projections"
WEIGHTS = "projections.safetensors"
KINDS = ("linear", "mlp")


def projection(kind: str, width: int, to_width: int) -> nn.Module:
    """``linear``: one affine map. ``mlp``: Linear-GELU-Linear with a hidden width of the teacher's."""
    if kind == "linear":
        return nn.Linear(width, to_width)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(width, to_width), nn.GELU(), nn.Linear(to_width, to_width))
    raise ValueError(f"projection must be one of {KINDS}, got {kind!r}")


class FeatureProjections(nn.Module):
    """One projection for the [CLS] embedding and one per distilled token layer."""

    def __init__(self, width: int, to_width: int, token_layers=(), cls: bool = True, kind: str = "linear"):
        super().__init__()
        self.cls = projection(kind, width, to_width) if cls else None
        self.tokens = nn.ModuleDict({str(i): projection(kind, width, to_width) for i in token_layers})

    def project_cls(self, cls: torch.Tensor) -> torch.Tensor:
        return self.cls(cls)

    def project_tokens(self, layer: int, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokens[str(layer)](tokens)


def attach(model: nn.Module, projections: FeatureProjections) -> FeatureProjections:
    """Puts ``projections`` on ``model`` (trained with it) and keeps them out of its saved weights."""
    model.add_module(ATTRIBUTE, projections)
    keep_attached_keys(model)
    keys = {f"{ATTRIBUTE}.{name}" for name in projections.state_dict()}
    model._keys_to_ignore_on_save = set(getattr(model, "_keys_to_ignore_on_save", None) or ()) | keys
    return projections


def attached(model: nn.Module) -> FeatureProjections | None:
    return getattr(model, ATTRIBUTE, None)


def save_state(weights: dict[str, torch.Tensor], folder: str) -> None:
    """Writes the projections' whole weights (``launchers.whole_state_dict``) beside a checkpoint."""
    save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(folder, WEIGHTS))


def load(projections: FeatureProjections, folder: str) -> None:
    """Restores projections saved beside a checkpoint; a checkpoint without them is an error."""
    path = os.path.join(folder, WEIGHTS)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} holds no {WEIGHTS}: it was saved without the student's projections "
                                "to the teacher's width, so it cannot resume this run")
    saved = load_file(path)
    own = projections.state_dict()
    if set(saved) != set(own) or any(saved[k].shape != own[k].shape for k in own):
        raise ValueError(f"{path} holds projections of another shape than this run's ({sorted(saved)[:4]}...): it "
                         "was saved by a run with another student, teacher or --projection")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(saved[name])


def for_pair(model: nn.Module, student_taps, teacher_taps, args) -> FeatureProjections | None:
    """The projections a student narrower or wider than its teacher needs for the [CLS] and patch
    terms, attached to ``model`` (so every launcher trains, shards and checkpoints them), or ``None``."""
    if teacher_taps is None or not (args.cls_weight > 0 or args.patch_weight > 0):
        return None
    width, to_width = student_taps.hidden_size, teacher_taps.hidden_size
    if width == to_width:
        return None
    made = FeatureProjections(width, to_width, student_taps.token_layers if args.patch_weight > 0 else (),
                              cls=args.cls_weight > 0, kind=args.projection)
    first = next(model.parameters())
    return attach(model, made.to(first.device, first.dtype))


def check_projection_flags(args, problems) -> None:
    if args.projection not in KINDS:
        problems.add("--projection", f"projection must be one of {KINDS}, got {args.projection!r}")
