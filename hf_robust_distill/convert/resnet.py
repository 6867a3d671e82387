"""A torchvision or timm ResNet (18/34/50/101/152: both libraries name their weights alike) as
``ResNetForImageClassification``: block type, depths and widths read from the tensors' shapes.
Variants transformers' ResNet does not have (a deep stem, grouped or widened bottlenecks) are
named and refused."""

from __future__ import annotations

import re

import torch

RESNET_KEYS = ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.0.conv1.weight", "fc.weight")
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def is_resnet(state: dict) -> bool:
    return all(k in state for k in RESNET_KEYS)


def _check_variant(state: dict, bottleneck: bool) -> None:
    if "conv1.weight" not in state:
        raise ValueError("the ResNet's stem is a stack of convolutions (a deep-stem ResNet-C/D), not the 7x7 one "
                         "transformers' ResNet has")
    stem = state["conv1.weight"].shape
    if stem[-1] != 7 or stem[1] != 3:
        raise ValueError(f"the ResNet's stem is a {stem[-1]}x{stem[-1]} convolution over {stem[1]} channels, not the "
                         "7x7 one transformers' ResNet has (a deep-stem ResNet-D?)")
    width, inputs = state["layer1.0.conv2.weight"].shape[:2]
    if inputs != width:
        raise ValueError(f"the ResNet's 3x3 convolutions are grouped ({width // inputs} groups): a ResNeXt, which "
                         "transformers' ResNet does not have")
    if bottleneck and state["layer1.0.conv3.weight"].shape[0] != 4 * width:
        raise ValueError(f"the ResNet's bottlenecks are {state['layer1.0.conv3.weight'].shape[0] // width}x wide, "
                         "not 4x: a Wide ResNet (WRN-50-2?), which transformers' ResNet does not have")
    if any(".se." in k or ".attn." in k for k in state):
        raise ValueError("the ResNet has squeeze-excitation or attention modules, which transformers' ResNet lacks")


def resnet_sizes(state: dict) -> dict:
    """Block type, depths, widths and classes of a torchvision/timm ResNet's state dict."""
    bottleneck = "layer1.0.conv3.weight" in state
    _check_variant(state, bottleneck)
    depths = [1 + max(int(m.group(2)) for k in state if (m := _BLOCK.match(k)) and m.group(1) == str(stage))
              for stage in range(1, 5)]
    last = "conv3" if bottleneck else "conv2"
    return dict(embedding_size=state["conv1.weight"].shape[0], depths=depths,
                hidden_sizes=[state[f"layer{s}.0.{last}.weight"].shape[0] for s in range(1, 5)],
                layer_type="bottleneck" if bottleneck else "basic", num_labels=state["fc.weight"].shape[0])


def resnet_config(sizes: dict, id2label: dict[int, str]):
    from transformers import ResNetConfig

    return ResNetConfig(**{k: v for k, v in sizes.items() if k != "num_labels"}, id2label=id2label,
                        label2id={v: k for k, v in id2label.items()}, hidden_act="relu",
                        downsample_in_first_stage=False, downsample_in_bottleneck=False)


_STEM = {"conv1": "resnet.embedder.embedder.convolution", "bn1": "resnet.embedder.embedder.normalization",
         "fc": "classifier.1"}


def _layer_key(stage: str, index: str, rest: str) -> str:
    prefix = f"resnet.encoder.stages.{int(stage) - 1}.layers.{index}."
    part, _, tail = rest.partition(".")
    if part == "downsample":
        which, _, tail = tail.partition(".")
        return prefix + ("shortcut.convolution." if which == "0" else "shortcut.normalization.") + tail
    kind, number = part[:-1], part[-1]
    if kind not in ("conv", "bn") or not number.isdigit():
        raise KeyError(f"layer{stage}.{index}.{rest}")
    return f"{prefix}layer.{int(number) - 1}.{'convolution' if kind == 'conv' else 'normalization'}.{tail}"


def resnet_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision/timm names to transformers' ``ResNetForImageClassification`` names; a key neither
    knows is an error (``KeyError`` naming it)."""
    converted = {}
    for key, tensor in state.items():
        block = _BLOCK.match(key)
        if block:
            converted[_layer_key(*block.groups())] = tensor
            continue
        head, _, tail = key.partition(".")
        if head not in _STEM:
            raise KeyError(key)
        converted[f"{_STEM[head]}.{tail}"] = tensor
    return converted
