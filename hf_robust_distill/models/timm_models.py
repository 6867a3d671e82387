"""timm models as teachers and students: ``TimmWrapperForImageClassification``, transformers' own
class for the Hub's timm checkpoints (``from_pretrained("timm/<name>")``), read as the feature taps
read a transformers ViT.

transformers gives a timm model no attention maps (``output_attentions`` raises) and timm's
attention runs the fused kernel. So the maps of a distilled block are computed beside it, from the
output of the block's own ``qkv`` projection (its ``q_norm``/``k_norm`` and ``scale`` applied as
timm's unfused path applies them): the kernel stays fused and only the distilled blocks pay.
"""

from __future__ import annotations

import types
from types import SimpleNamespace

import torch
from torch import nn

TIMM_MODEL_TYPE = "timm_wrapper"


def _unwrapped(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def timm_network(model) -> nn.Module | None:
    """The timm model inside a transformers ``TimmWrapper`` model (also under a ``peft`` wrapper or a
    pixel-space classifier), or ``None`` for any other model."""
    model = _unwrapped(model)
    inner = getattr(model, "model", None)
    if inner is not None and getattr(model, "preprocessor", None) is not None:  # PixelSpaceClassifier
        model = inner
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != TIMM_MODEL_TYPE:
        return None
    return getattr(model, "timm_model", None)


def is_timm(model) -> bool:
    return timm_network(model) is not None


def _is_vit(network: nn.Module) -> bool:
    blocks = getattr(network, "blocks", None)
    return (isinstance(blocks, nn.Sequential) and hasattr(network, "patch_embed")
            and hasattr(network, "num_prefix_tokens") and all(hasattr(b, "attn") for b in blocks))


def _architecture(model) -> str:
    return str(getattr(_unwrapped(model).config, "architecture", type(timm_network(model)).__name__))


def timm_blocks(model, kind: str = "hidden_states") -> list[nn.Module]:
    """A timm ViT's blocks (``hidden_states``) or their attention modules (``attentions``), in depth
    order; a clear error for a timm model that is no ViT (a ResNet distils by its logits)."""
    network = timm_network(model)
    if network is None or not _is_vit(network):
        raise ValueError(f"the timm model {_architecture(model)!r} is no ViT (no transformer blocks with attention): "
                         "the [CLS], patch and attention terms read a ViT's tokens; set cls_weight, patch_weight and "
                         "attn_weight to 0 to distil it by its logits")
    blocks = list(network.blocks)
    if kind == "attentions":
        unknown = [type(b.attn).__name__ for b in blocks if not hasattr(getattr(b, "attn", None), "qkv")]
        if unknown:
            raise ValueError(f"the timm model {_architecture(model)!r} has attention modules without one fused qkv "
                             f"projection ({unknown[0]}), from which the maps are read: set attn_weight=0")
        return [b.attn for b in blocks]
    return blocks


def final_norm(model) -> nn.Module:
    """The module whose output is a timm ViT's final token sequence (its last norm)."""
    return timm_network(model).norm


def vit_shape(network: nn.Module) -> SimpleNamespace:
    """A timm ViT's width, patch size, heads, depth and prefix tokens ([CLS], distillation, registers)."""
    patch = network.patch_embed.patch_size
    return SimpleNamespace(hidden_size=int(network.embed_dim), patch_size=int(patch[0] if isinstance(patch, tuple)
                                                                             else patch),
                           num_heads=int(network.blocks[0].attn.num_heads), depth=len(network.blocks),
                           prefix_tokens=int(network.num_prefix_tokens))


def model_shape(model) -> SimpleNamespace:
    """``vit_shape`` of a timm ViT; no width or patch size for another timm model."""
    network = timm_network(model)
    if _is_vit(network):
        return vit_shape(network)
    return SimpleNamespace(hidden_size=None, patch_size=None, num_heads=None, depth=None, prefix_tokens=1)


def network_on_meta(config) -> nn.Module:
    """The timm model a ``TimmWrapperConfig`` describes, built on the meta device (no weight read)."""
    import timm

    with torch.device("meta"):
        return timm.create_model(config.architecture, pretrained=False, num_classes=int(config.num_labels or 0),
                                 **(config.model_args or {}))


def accepts_drop_path(config) -> bool:
    """Whether the timm model a ``TimmWrapperConfig`` describes builds stochastic depth."""
    import timm

    try:
        with torch.device("meta"):
            timm.create_model(config.architecture, pretrained=False, num_classes=int(config.num_labels or 0),
                              **{**(config.model_args or {}), "drop_path_rate": 0.1})
    except TypeError:
        return False
    return True


def config_shape(config) -> SimpleNamespace:
    """``model_shape`` read from a ``TimmWrapperConfig`` alone."""
    network = network_on_meta(config)
    if _is_vit(network):
        return vit_shape(network)
    return SimpleNamespace(hidden_size=None, patch_size=None, num_heads=None, depth=None, prefix_tokens=1)


def input_size(model) -> tuple[int, int]:
    """The (height, width) a timm model is fed: a ViT's patch embedding's fixed size, else its
    checkpoint's evaluation input size (``pretrained_cfg``)."""
    network = timm_network(model)
    fixed = getattr(getattr(network, "patch_embed", None), "img_size", None)
    if fixed is not None:
        return int(fixed[0]), int(fixed[1])
    cfg = getattr(_unwrapped(model).config, "pretrained_cfg", None) or getattr(network, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))
    return int(size[-2]), int(size[-1])


def head_modules(model) -> list[nn.Module]:
    """The classifier of a timm model (``get_classifier``), when it has parameters."""
    head = timm_network(model).get_classifier()
    return [head] if isinstance(head, nn.Module) and any(True for _ in head.parameters()) else []


def block_classes(model) -> list[type[nn.Module]]:
    """The classes of a timm model's repeated blocks, FSDP's units: a ViT's ``blocks``, a ResNet's
    ``layer1``-``layer4`` residual blocks, or the modules of its ``stages``."""
    network = timm_network(model)
    containers = [getattr(network, "blocks", None), getattr(network, "stages", None),
                  *(getattr(network, f"layer{i}", None) for i in range(1, 5))]
    classes: dict[str, type] = {}
    for container in containers:
        if isinstance(container, nn.Sequential):
            for block in container:
                classes.setdefault(type(block).__name__, type(block))
    return list(classes.values())


def is_timm_attention(module: nn.Module) -> bool:
    """A timm attention module whose maps are read from its fused ``qkv`` projection."""
    return type(module).__module__.startswith("timm.") and isinstance(getattr(module, "qkv", None), nn.Linear)


def attention_maps(attention: nn.Module, qkv: torch.Tensor, rows: str = "all") -> torch.Tensor:
    """The attention probabilities (B, heads, Q, N) of a timm ``Attention`` module from the output
    of its ``qkv`` projection, as its unfused path computes them; ``rows="cls"`` keeps the [CLS]
    query's row only."""
    batch, tokens, _ = qkv.shape
    q, k, _ = qkv.reshape(batch, tokens, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attention.q_norm(q), attention.k_norm(k)
    if rows == "cls":
        q = q[:, :, :1]
    scores = (q * attention.scale) @ k.transpose(-2, -1)
    wide = torch.float32 if scores.element_size() < 4 else scores.dtype  # bf16/fp16 maps softmaxed in float32
    return scores.softmax(dim=-1, dtype=wide).to(q.dtype)


def keep_attached_keys(model) -> None:
    """transformers' ``TimmWrapper.load_state_dict`` puts every key it is given under ``timm_model.``
    (for checkpoints saved with timm's names); on this instance, the keys of modules attached beside
    the timm model (the distillation projections, which FSDP loads with the student) stay their own."""
    model = _unwrapped(model)
    if timm_network(model) is None:
        return

    def load_state_dict(self, state_dict, *args, **kwargs):
        beside = {name for name, _ in self.named_children() if name != "timm_model"}
        state_dict = {key if key.startswith("timm_model.") or key.split(".", 1)[0] in beside
                      else f"timm_model.{key}": value for key, value in state_dict.items()}
        return nn.Module.load_state_dict(self, state_dict, *args, **kwargs)

    model.load_state_dict = types.MethodType(load_state_dict, model)
