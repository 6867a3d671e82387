"""The distillation objective: one call returns the weighted loss and its unweighted parts by name
(timm's task contract), from what the student and the teacher computed.

Parts of the clean batch: the multi-level terms (``loss_cls``, ``loss_patch``, ``loss_attn``), logit
distillation (``loss_kd``), cross-entropy (``loss_ce``) and the head's own cross-entropy on detached
features (``loss_head``); of the DAD images: ``loss_kd_dad`` and ``loss_ce_dad``. A part whose weight
is 0 is never computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..models.taps import Features
from ..models.token_grids import align_attention, resample_tokens
from .losses import ATTENTION_ROWS, CLS_LOSSES, PATCH_LOSSES, attention_loss, ce_loss, cls_loss, kd_loss, patch_loss

PART_WEIGHTS = {
    "loss_cls": "cls_weight", "loss_patch": "patch_weight", "loss_attn": "attn_weight", "loss_kd": "kd_weight",
    "loss_ce": "ce_weight", "loss_kd_dad": "dad_kd_weight", "loss_ce_dad": "dad_ce_weight",
    "loss_head": "head_ce_weight",
}
"""Each loss part and the ``DistillationConfig`` field that weighs it."""
LOSS_PARTS = tuple(PART_WEIGHTS)


@dataclass(frozen=True)
class LayerPairs:
    """The student's distilled blocks and the teacher's blocks they are aligned with."""

    student_tokens: tuple[int, ...] = ()
    teacher_tokens: tuple[int, ...] = ()
    student_attention: tuple[int, ...] = ()
    teacher_attention: tuple[int, ...] = ()


def gather_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The rows of ``tensor`` from every process, in rank order (micro-batches may differ in
    size), and the offset of this process's rows among them. Not differentiable: for targets."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([len(tensor)], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    rows = torch.cat([part[:n] for part, n in zip(parts, sizes)])
    return rows, sum(sizes[:rank])


def aligned_attention(student: Features, teacher: Features, i: int, j: int):
    """Student layer ``i``'s and teacher layer ``j``'s maps, as they are when the two models share
    prefix, grid and heads, else cut to [CLS] + grid, resampled and head-averaged."""
    s, t = student.attentions[i], teacher.attentions[j]
    if (student.num_prefix_tokens, student.grid, s.shape[1]) == (teacher.num_prefix_tokens, teacher.grid, t.shape[1]):
        return s, t
    return align_attention(s, t, student_prefix=student.num_prefix_tokens, student_grid=student.grid,
                           teacher_prefix=teacher.num_prefix_tokens, teacher_grid=teacher.grid)


def needs_labels(labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        raise ValueError("ce_weight and dad_ce_weight need labels in the dataset")
    return labels


class DistillationObjective:
    """The loss of a ``DistillationConfig`` (its weights, loss kinds and temperatures), for one pair of
    models: ``layers`` pairs their blocks, ``projections`` (or ``None``) maps the student's width to
    the teacher's, ``trains_head`` adds the head's cross-entropy on detached features."""

    def __init__(self, args, layers: LayerPairs = LayerPairs(), projections=None, trains_head: bool = False):
        self.args = args
        self.layers = layers
        self.projections = projections
        self.trains_head = trains_head
        self.weights = {part: getattr(args, flag) for part, flag in PART_WEIGHTS.items()}

    def __call__(self, student: Features, teacher: Features | None, labels: torch.Tensor | None, *,
                 dad_logits: torch.Tensor | None = None, dad_teacher_logits: torch.Tensor | None = None):
        """``(loss, parts)``: the weighted sum and the unweighted parts, those of the DAD images when
        the student's ``dad_logits`` are given."""
        parts = self.clean_parts(student, teacher, labels)
        if dad_logits is not None:
            parts.update(self.dad_parts(dad_logits, dad_teacher_logits, labels))
        return sum(self.weights[name] * value for name, value in parts.items()), parts

    def clean_parts(self, student: Features, teacher: Features | None, labels) -> dict[str, torch.Tensor]:
        a, layers, project = self.args, self.layers, self.projections
        parts = {}
        if a.cls_weight > 0:
            negatives, offset = gather_rows(teacher.cls) if a.cls_loss == "infonce" else (None, 0)
            cls = project.project_cls(student.cls) if project is not None else student.cls
            parts["loss_cls"] = cls_loss(cls, teacher.cls, a.cls_loss, a.infonce_temperature, negatives, offset)
        if a.patch_weight > 0:
            parts["loss_patch"] = patch_loss(
                [project.project_tokens(i, student.patch_tokens(i)) if project is not None else student.patch_tokens(i)
                 for i in layers.student_tokens],
                [resample_tokens(teacher.patch_tokens(i), teacher.grid, student.grid) for i in layers.teacher_tokens],
                a.patch_loss)
        if a.attn_weight > 0:
            pairs = [aligned_attention(student, teacher, i, j)
                     for i, j in zip(layers.student_attention, layers.teacher_attention)]
            parts["loss_attn"] = attention_loss([s for s, _ in pairs], [t for _, t in pairs], a.attn_rows)
        if a.kd_weight > 0:
            parts["loss_kd"] = kd_loss(student.logits, teacher.logits, a.temperature)
        if a.ce_weight > 0:
            parts["loss_ce"] = ce_loss(student.logits, needs_labels(labels))
        if self.trains_head and labels is not None:
            parts["loss_head"] = ce_loss(student.logits, labels)  # the head's input is detached
        return parts

    def dad_parts(self, student_logits, teacher_logits, labels) -> dict[str, torch.Tensor]:
        parts = {}
        if self.args.dad_kd_weight > 0:
            parts["loss_kd_dad"] = kd_loss(student_logits, teacher_logits, self.args.temperature)
        if self.args.dad_ce_weight > 0:
            parts["loss_ce_dad"] = ce_loss(student_logits, needs_labels(labels))
        return parts


def check_objective_flags(args, problems) -> None:
    """The loss fields of a ``DistillationConfig``: weights, kinds, temperatures and layers."""
    add = problems.add
    weights = {flag: getattr(args, flag) for flag in PART_WEIGHTS.values() if flag != "head_ce_weight"}
    negative = [name for name, value in weights.items() if value < 0]
    if negative:
        add(", ".join(f"--{n}" for n in negative), f"loss weights must be >= 0: {', '.join(negative)}")
    if not any(weights.values()):
        add("--cls_weight ... --dad_ce_weight", "every loss weight is 0: set at least one of " + ", ".join(weights))
    for flag, choices in (("cls_loss", CLS_LOSSES), ("patch_loss", PATCH_LOSSES), ("attn_rows", ATTENTION_ROWS)):
        if getattr(args, flag) not in choices:
            add(f"--{flag}", f"{flag} must be one of {choices}, got {getattr(args, flag)!r}")
    if args.temperature <= 0 or args.infonce_temperature <= 0:
        add("--temperature / --infonce_temperature", "temperatures must be > 0")
    if args.patch_weight > 0 and not args.patch_layers:
        add("--patch_layers", "patch_weight > 0 needs at least one layer in patch_layers")
    if args.attn_weight > 0 and not args.attn_layers:
        add("--attn_layers", "attn_weight > 0 needs at least one layer in attn_layers")
    if args.head_ce_weight < 0:
        add("--head_ce_weight", f"head_ce_weight must be >= 0, got {args.head_ce_weight}")
