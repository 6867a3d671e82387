"""A timm ViT (or non-distilled DeiT) state dict as ``ViTForImageClassification``: sizes read from
the tensors' shapes, timm's fused ``qkv`` split into transformers' ``q_proj``/``k_proj``/``v_proj``,
and timm's LayerNorm epsilon (1e-6; transformers' old converters set 1e-12)."""

from __future__ import annotations

import math
import re

import torch

VIT_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight")
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
"""The published ViT/DeiT sizes (Ti, S, B, L, H): heads are not in any tensor's shape."""

UNSUPPORTED = {
    "dist_token": "a distilled DeiT (distillation token and a second head)",
    "reg_token": "register tokens",
    "fc_norm.weight": "average pooling with fc_norm",
    "norm_pre.weight": "a pre-norm (CLIP-style norm_pre)",
    "blocks.0.ls1.gamma": "LayerScale",
    "blocks.0.attn.q_norm.weight": "query/key normalisation",
    "attn_pool.latent": "attention pooling",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def is_vit(state: dict) -> bool:
    return all(k in state for k in VIT_KEYS)


def vit_sizes(state: dict, num_heads: int | None = None) -> dict:
    """Width, depth, heads, MLP width, patch, image size and classes of a timm ViT's state dict;
    a ``ValueError`` naming what transformers' ViT lacks (registers, LayerScale, ...)."""
    found = [what for key, what in UNSUPPORTED.items() if key in state]
    if found:
        raise ValueError(f"the checkpoint is a timm ViT with {', '.join(found)}, which transformers' ViT does not have")
    if "head.weight" not in state:
        raise ValueError("the checkpoint's ViT has no classification head (head.weight)")
    width = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    tokens = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(f"pos_embed holds {tokens + 1} positions: not the [CLS] token and a square grid (a ViT "
                         "without position embeddings for its class token is not transformers' ViT)")
    heads = num_heads or HEADS_BY_WIDTH.get(width)
    if heads is None:
        raise ValueError(f"a ViT of width {width}, which no published size has: its number of heads is in no tensor's "
                         "shape, so give it with --num_heads")
    return dict(hidden_size=width, num_hidden_layers=1 + max(int(_BLOCK.match(k).group(1)) for k in state
                                                             if _BLOCK.match(k)),
                num_attention_heads=heads, intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0],
                patch_size=patch, image_size=grid * patch, num_labels=state["head.weight"].shape[0],
                qkv_bias="blocks.0.attn.qkv.bias" in state)


def vit_config(sizes: dict, id2label: dict[int, str]):
    from transformers import ViTConfig

    return ViTConfig(**sizes | {"num_labels": len(id2label)}, id2label=id2label,
                     label2id={v: k for k, v in id2label.items()}, layer_norm_eps=1e-6, hidden_act="gelu",
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


_RENAMES = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
            "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_TOP = {"cls_token": "vit.embeddings.cls_token", "pos_embed": "vit.embeddings.position_embeddings",
        "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
        "norm.weight": "vit.layernorm.weight", "norm.bias": "vit.layernorm.bias",
        "head.weight": "classifier.weight", "head.bias": "classifier.bias"}


def _block_key(index: str, rest: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    prefix = f"vit.layers.{index}."
    if rest.startswith("attn.qkv."):
        kind = rest.rsplit(".", 1)[1]
        q, k, v = tensor.chunk(3, dim=0)
        return {f"{prefix}attention.{n}_proj.{kind}": t.clone() for n, t in zip("qkv", (q, k, v))}
    for old, new in _RENAMES.items():
        if rest.startswith(old + "."):
            return {prefix + new + rest[len(old):]: tensor}
    raise KeyError(f"blocks.{index}.{rest}")


def vit_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm names to transformers' ``ViTForImageClassification`` names; a key neither knows is an
    error (``KeyError`` naming it)."""
    converted = {}
    for key, tensor in state.items():
        block = _BLOCK.match(key)
        if block:
            converted.update(_block_key(block.group(1), key[block.end():], tensor))
        elif key in _TOP:
            converted[_TOP[key]] = tensor
        else:
            raise KeyError(key)
    return converted
