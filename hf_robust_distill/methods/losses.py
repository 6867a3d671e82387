"""Distillation losses: pure functions of tensors, each returning a scalar tensor.

Shapes: embeddings (B, D); token sequences (B, N, D); attention maps (B, heads, Q, K) with rows
that sum to one; logits (B, C). The teacher's tensors are targets and are never differentiated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..models.attention_maps import ROWS as ATTENTION_ROWS

CLS_LOSSES = ("cosine", "mse", "infonce")
PATCH_LOSSES = ("cosine", "mse")


def cls_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine",
             temperature: float = 0.1, negatives: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """Aligns the student's [CLS] embedding (distorted view) with the teacher's (clean view).

    ``cosine``: mean of 1 - cos. ``mse``: mean squared error. ``infonce``: cross-entropy of
    matching each student embedding to its own teacher embedding among the batch's, with cosine
    similarities divided by ``temperature`` (Ravula et al. 2021 use 0.1). Under data parallelism
    ``negatives`` are the teacher embeddings of every process's micro-batch, this process's rows
    starting at ``offset``; averaged over processes, the loss is then the global batch's.
    """
    teacher = teacher.detach()
    if kind == "cosine":
        return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(student.float(), teacher.float())
    if kind == "infonce":
        s = F.normalize(student.float(), dim=-1)
        t = F.normalize((teacher if negatives is None else negatives.detach()).float(), dim=-1)
        logits = s @ t.T / temperature
        return F.cross_entropy(logits, torch.arange(offset, offset + len(s), device=s.device))
    raise ValueError(f"unknown cls loss {kind!r}; choose one of {CLS_LOSSES}")


def patch_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
               kind: str = "cosine") -> torch.Tensor:
    """Aligns patch tokens, position by position, averaged over tokens and over the given layers.

    ``cosine``: mean per-token 1 - cos. ``mse``: mean squared error over tokens and channels.
    """
    if len(student) != len(teacher) or not student:
        raise ValueError(f"patch_loss needs matching, non-empty layer lists, got {len(student)} and {len(teacher)}")
    terms = []
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f"student and teacher patch tokens differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")
        s, t = s.float(), t.detach().float()
        if kind == "cosine":
            terms.append((1 - F.cosine_similarity(s, t, dim=-1)).mean())
        elif kind == "mse":
            terms.append(F.mse_loss(s, t))
        else:
            raise ValueError(f"unknown patch loss {kind!r}; choose one of {PATCH_LOSSES}")
    return torch.stack(terms).mean()


def attention_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                   rows: str = "all", eps: float = 1e-8) -> torch.Tensor:
    """KL(teacher || student) between attention rows, averaged over heads, queries and layers.

    Each query's attention row is a distribution over keys. ``rows="cls"`` keeps only the [CLS]
    query (row 0), as AttnDistill does. Summed over keys, averaged over everything else.
    """
    if len(student) != len(teacher) or not student:
        raise ValueError(f"attention_loss needs matching, non-empty layer lists, got {len(student)} and {len(teacher)}")
    terms = []
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f"student and teacher attention maps differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")
        if rows == "cls":
            s, t = s[:, :, :1], t[:, :, :1]
        elif rows != "all":
            raise ValueError(f"unknown attention rows {rows!r}; choose one of {ATTENTION_ROWS}")
        s, t = s.float(), t.detach().float()
        kl = torch.xlogy(t, t) - t * torch.log(s.clamp_min(eps))
        terms.append(kl.sum(-1).mean())
    return torch.stack(terms).mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 4.0) -> torch.Tensor:
    """Hinton's KD: T^2 * KL(softmax(t / T) || softmax(s / T)), averaged over the batch."""
    t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature**2


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with integer labels (-100 marks a sample without one) or (B, C) soft targets
    (timm's ``SoftTargetCrossEntropy``; a row of zeros marks a sample without one), averaged over
    the labelled samples; a batch without any gives 0 (not the NaN of an empty mean)."""
    if labels.ndim == 2:
        total = -(labels * F.log_softmax(logits.float(), dim=-1)).sum()
        return total / (labels.sum(-1) > 0).sum().clamp_min(1)
    total = F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")
    return total / (labels != -100).sum().clamp_min(1)
