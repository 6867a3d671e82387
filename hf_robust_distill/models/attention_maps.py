"""Attention maps only where a loss reads them.

Only eager attention returns attention probabilities, and eager on every layer materialises a
(B, heads, N, N) map per layer that the fused sdpa kernel never builds. This module registers one
attention function in transformers' ``AttentionInterface`` that chooses per module: the modules
of the distilled layers return their maps (all rows, or with ``rows="cls"`` the [CLS] query's
row only, computed beside the fused kernel's output); every other module runs sdpa and returns
none. ``read_attention_maps(model, layers, rows)`` switches a model to it. A timm ViT keeps its
fused kernel; its distilled blocks' maps are computed from their ``qkv`` output (``timm_models``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .timm_models import is_timm

SELECTIVE_ATTENTION = "hf_robust_distill_selective"
ROWS_ATTRIBUTE = "_distilled_attention_rows"
ROWS = ("all", "cls")


def _probabilities(module, query, key, attention_mask, scaling) -> torch.Tensor:
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : query.shape[2], :]
    return F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def selective_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eager attention (maps returned) where ``module`` is distilled with all rows; sdpa elsewhere,
    with the [CLS] row of the maps beside it where the module is distilled with ``rows="cls"``."""
    rows = getattr(module, ROWS_ATTRIBUTE, None)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    if rows == "all":  # the eager computation, as transformers' eager_attention_forward does it
        weights = _probabilities(module, query, key, attention_mask, scaling)
        weights = F.dropout(weights, p=dropout, training=module.training)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights
    output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                       **kwargs)
    if rows == "cls":
        return output, _probabilities(module, query[:, :, :1], key, attention_mask, scaling)
    return output, None


AttentionInterface.register(SELECTIVE_ATTENTION, selective_attention)


def read_attention_maps(model: PreTrainedModel, attention_modules: list[torch.nn.Module], layers: list[int],
                        rows: str = "all") -> None:
    """Switches ``model`` to selective attention: module ``i`` of ``attention_modules`` (the
    model's attention modules in depth order) returns its maps when ``i`` is in ``layers``."""
    if rows not in ROWS:
        raise ValueError(f"attention rows must be one of {ROWS}, got {rows!r}")
    if not is_timm(model):  # a timm ViT keeps its fused kernel: the taps read the maps from its qkv
        _select_attention(model)
    for index, module in enumerate(attention_modules):
        setattr(module, ROWS_ATTRIBUTE, rows if index in layers else None)


def _select_attention(model: PreTrainedModel) -> None:
    model.set_attn_implementation(SELECTIVE_ATTENTION)
    if getattr(model.config, "_attn_implementation", None) != SELECTIVE_ATTENTION:
        raise ValueError(f"{type(model).__name__} did not take a registered attention function, so it cannot "
                         "return attention maps per layer; set attn_weight=0")


def attention_rows(module: torch.nn.Module) -> str | None:
    """The rows of attention maps ``module`` returns (``None``: it runs sdpa and returns none)."""
    return getattr(module, ROWS_ATTRIBUTE, None)
