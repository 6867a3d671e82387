"""What ``--architecture`` names: a family (``vit``, ``deit``, ``resnet``: sizes read from the
tensors), or a timm or torchvision model, built on the meta device so that the checkpoint's keys
and shapes can be checked against it before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FAMILIES = ("vit", "deit", "resnet")
NATIVE = {"vit": "ViTForImageClassification", "resnet": "ResNetForImageClassification"}


@dataclass
class Architecture:
    """A named architecture: its family (``vit``, ``resnet``, or ``None`` where transformers has no
    class for it), why not, and the state dict shapes of the named model (empty for a family)."""

    name: str
    library: str | None = None
    family: str | None = None
    reason: str = ""
    num_heads: int | None = None
    input_size: int = 224
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def refusal(self) -> str:
        return (f"--architecture {self.name} ({self.reason}) has no native transformers class here (timm ViTs and "
                "non-distilled DeiTs, torchvision/timm ResNet-18/34/50/101/152): convert it with --output_format timm, "
                "which writes a folder transformers loads as TimmWrapperForImageClassification (timm installed), "
                f"or load the timm model from the Hub (--model_name_or_path timm/<name>)")


def _timm_architecture(name: str) -> Architecture:
    import timm
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    found = Architecture(name, "timm", shapes={k: tuple(v.shape) for k, v in model.state_dict().items()},
                         input_size=int((model.pretrained_cfg or {}).get("input_size", (3, 224, 224))[-1]))
    if isinstance(model, VisionTransformer):
        if model.global_pool != "token" or model.cls_token is None:
            found.reason = f"a timm ViT pooled by {model.global_pool!r}, not by its [CLS] token"
        else:
            found.family, found.num_heads = "vit", model.blocks[0].attn.num_heads
    elif isinstance(model, ResNet):
        found.family = "resnet"
    _check_native(found, model.state_dict())
    if found.family is None and not found.reason:
        found.reason = f"timm's {type(model).__name__}"
    return found


def _torchvision_architecture(name: str) -> Architecture:
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    found = Architecture(name, "torchvision", shapes={k: tuple(v.shape) for k, v in model.state_dict().items()})
    if isinstance(model, torchvision.models.ResNet):
        found.family = "resnet"
        _check_native(found, model.state_dict())
    else:
        found.reason = f"torchvision's {name}"
    return found


def _check_native(found: Architecture, state: dict) -> None:
    """A named model of a native family whose variant transformers lacks (a deep stem, registers,
    LayerScale...) is refused from its shapes on the meta device, before any file is read."""
    if found.family is None:
        return
    from .resnet import resnet_sizes
    from .vit import vit_sizes

    try:
        if found.family == "vit":
            vit_sizes(state, found.num_heads)
        else:
            resnet_sizes(state)
    except ValueError as error:
        found.family, found.reason = None, str(error).removeprefix("the checkpoint is ").removeprefix("the ")


def resolve_architecture(name: str, prefer_timm: bool = False) -> Architecture:
    """The architecture ``name`` stands for (torchvision's where both libraries know it, unless
    ``prefer_timm``); a ``ValueError`` for a name neither knows."""
    if name in FAMILIES:
        return Architecture(name, family="resnet" if name == "resnet" else "vit")
    import timm
    import torchvision

    if timm.is_model(name) and (prefer_timm or name not in torchvision.models.list_models(module=torchvision.models)):
        return _timm_architecture(name)
    if name in torchvision.models.list_models(module=torchvision.models):
        return _torchvision_architecture(name)
    raise ValueError(f"--architecture {name!r} is neither a family ({', '.join(FAMILIES)}) nor a model timm or "
                     "torchvision knows (timm.list_models(), torchvision.models.list_models())")


def check_agrees(state: dict[str, torch.Tensor], architecture: Architecture, head: str) -> None:
    """The checkpoint's keys and shapes are the named model's (its head may predict other classes)."""
    if not architecture.shapes:
        return
    missing = sorted(set(architecture.shapes) - set(state))
    unexpected = sorted(set(state) - set(architecture.shapes))
    differ = [f"{k} {tuple(state[k].shape)} vs {architecture.shapes[k]}" for k in sorted(set(state) & set(architecture.shapes))
              if tuple(state[k].shape) != architecture.shapes[k] and not k.startswith(head)]
    if missing or unexpected or differ:
        shown = "; ".join(part for part in (
            f"missing {', '.join(missing[:4])}" if missing else "",
            f"unexpected {', '.join(unexpected[:4])}" if unexpected else "",
            f"other shapes: {', '.join(differ[:4])}" if differ else "") if part)
        raise ValueError(f"the checkpoint is not {architecture.library}'s {architecture.name}: {shown}. Name the "
                         "architecture it was trained as, or a family (vit, deit, resnet) to read its sizes from "
                         "the tensors")
