"""A published checkpoint's weights, whatever file and wrapper they were saved in.

* Files: ``.safetensors``, or a torch pickle (``.pth``, ``.pth.tar``, ``.pt``, ``.bin``) read with
  ``weights_only`` unless the caller allows pickles (easyrobust's ``model_best.pth.tar`` carries an
  argparse ``Namespace``, which ``weights_only`` refuses).
* Containers: timm's ``CheckpointSaver`` (``state_dict``, ``state_dict_ema``), the official DAD
  code's and Madry's ``{"model": ...}``, or a raw state dict; DDP's ``module.`` prefix stripped.
* Normalisation wrappers, whose buffers give the model's mean and std: the DAD code's
  ``Sequential(NormalizeByChannelMeanStd, model)`` (``0.mean``, ``1.<model>``), RobustBench's
  ``normalize.``/``model.``, and Madry's ``robustness`` library (``normalizer.new_mean``,
  ``model.``, and an ``attacker.`` copy of both, dropped).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field

import numpy as np
import torch

SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin", ".tar", ".ckpt")


@dataclass
class Weights:
    """The model's state dict, unwrapped, with what the unwrapping found."""

    state_dict: dict[str, torch.Tensor]
    layout: str
    container: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dropped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Wrapper:
    """A normalisation wrapper: the prefix of the model's keys, its mean and std buffers, and the
    prefixes of what else it saves (dropped)."""

    name: str
    model: str
    mean: str
    std: str
    extra: tuple[str, ...] = ()


WRAPPERS = (
    Wrapper("Madry's robustness library (normalizer., model., attacker.)", "model.", "normalizer.new_mean",
            "normalizer.new_std", ("attacker.",)),
    Wrapper("RobustBench (normalize., model.)", "model.", "normalize.mean", "normalize.std"),
    Wrapper("the DAD code's Sequential(NormalizeByChannelMeanStd, model) (0., 1.)", "1.", "0.mean", "0.std"),
)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_file(path: str, allow_pickle: bool = False):
    """What the file holds: a safetensors state dict, or the object a torch pickle holds."""
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint file {path!r}")
    if not path.endswith(SUFFIXES):
        raise ValueError(f"{path!r} is not a checkpoint file this converter reads ({', '.join(SUFFIXES)})")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path} holds Python objects beside its weights ({str(error).splitlines()[0][:160]}...), and "
                         "reading them runs its pickle: pass --allow_pickle (allow_pickle=True) for a file you "
                         "trust") from None


def _container(loaded, use_ema: bool) -> tuple[dict, str]:
    if not isinstance(loaded, dict):
        raise ValueError(f"the checkpoint holds a {type(loaded).__name__}, not a state dict or a dict holding one; "
                         "save model.state_dict()")
    if use_ema:
        if "state_dict_ema" not in loaded:
            raise ValueError("--use_ema: the checkpoint has no state_dict_ema (timm's CheckpointSaver writes one "
                             "when training with --model-ema); drop --use_ema")
        return loaded["state_dict_ema"], "state_dict_ema"
    for key in ("state_dict", "model"):
        if isinstance(loaded.get(key), dict):
            return loaded[key], key
    return loaded, "raw state dict"


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _channels(tensor: torch.Tensor) -> tuple[float, ...]:
    """A buffer's three values, each the shortest decimal its dtype stores (float32's 0.485 as 0.485)."""
    values = tensor.detach().flatten()
    if values.numel() != 3:
        raise ValueError(f"a normalisation buffer of {values.numel()} values, not one per RGB channel")
    dtype = {torch.float32: np.float32, torch.float16: np.float16}.get(values.dtype, np.float64)
    return tuple(float(str(dtype(v))) for v in values.double().tolist())


def unwrap(loaded, use_ema: bool = False) -> Weights:
    """The model's weights of a loaded checkpoint, and its mean and std where a wrapper holds them."""
    state, container = _container(loaded, use_ema)
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    if not tensors:
        raise ValueError(f"the checkpoint's {container} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = _strip(tensors, "module.")
    for wrapper in WRAPPERS:
        if wrapper.mean in tensors and wrapper.std in tensors:
            dropped = sorted(k for k in tensors if not k.startswith(wrapper.model))
            model = {k[len(wrapper.model):]: v for k, v in tensors.items() if k.startswith(wrapper.model)}
            return Weights(model, wrapper.name, container, _channels(tensors[wrapper.mean]),
                           _channels(tensors[wrapper.std]), dropped)
    return Weights(tensors, "the model's own keys (no normalisation wrapper)", container)
