"""What training on several processes asks of the student's graph and of the losses.

* ``freeze_never_used``: parameters the student's forward never uses (Dinov2's ``mask_token``
  without masked inputs, the post-norm CLIP's classifier skips) can never learn; left trainable,
  they stall DDP and get no optimizer state, which FSDP2's sharded resume then cannot find.
* ``unreached_parameters``: DDP runs without ``find_unused_parameters`` (no graph walk each
  step), so every trainable parameter must get a gradient each step; one probe pass before
  training names those the chosen layers leave out.
* ``zero_loss``: a micro-batch with nothing to learn still gives every parameter a gradient.
* ``check_one_device_per_process``: ``nn.DataParallel`` replicas share the feature hooks.
"""

from __future__ import annotations

import logging

import torch

from ..models import timm_models
from ..models.loading import architecture_on_meta

logger = logging.getLogger(__name__)


def _image_size(model) -> tuple[int, int]:
    if timm_models.is_timm(model):
        return timm_models.input_size(model)
    config = model.config
    size = getattr(getattr(config, "vision_config", config), "image_size", None) or 224
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def never_used_parameters(model: torch.nn.Module) -> list[str]:
    """Trainable parameters of a transformers ``model`` that none of its outputs (logits and every
    hidden state) depends on, found by one forward and ``autograd.grad`` on a copy of its
    architecture on the meta device: no weight is read or allocated, so it runs the same whether
    the weights are whole, on meta (FSDP's CPU-RAM-efficient loading) or partitioned (ZeRO-3)."""
    if not hasattr(type(model), "_from_config") or getattr(model, "config", None) is None:
        return []

    probe = architecture_on_meta(model).eval()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    params = {name: p for name, p in probe.named_parameters() if name in trainable}
    if not params:
        return []
    pixels = torch.zeros(2, 3, *_image_size(model), device="meta")
    output = probe(pixel_values=pixels, output_hidden_states=True)
    read = [t for t in [getattr(output, "logits", None), getattr(output, "last_hidden_state", None),
                        *(getattr(output, "hidden_states", None) or ())] if t is not None]
    grads = torch.autograd.grad(sum(t.float().sum() for t in read), list(params.values()), allow_unused=True)
    return [name for name, grad in zip(params, grads) if grad is None]


def freeze_never_used(model: torch.nn.Module) -> list[str]:
    """Freezes the parameters of ``model`` that its forward never uses; returns their names."""
    names = never_used_parameters(model)
    if names:
        found = dict(model.named_parameters())
        for name in names:
            found[name].requires_grad_(False)
        logger.info("frozen, as %s's forward never uses them: %s", type(model).__name__, summarise(names))
    return names


def unreached_parameters(model: torch.nn.Module, taps, pixel_size: tuple[int, int], reads_logits: bool) -> list[str]:
    """Trainable parameters of ``model`` that no tensor the losses read depends on, found by one
    forward in eval mode and ``autograd.grad`` on two images; weights, buffers (batch-norm
    statistics), mode and random state are left as they were."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        return []
    device = next(iter(params.values())).device
    pixels = torch.zeros(2, 3, *pixel_size, device=device)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), taps.record() as features:
        output = model(pixel_values=pixels)
    model.train(was_training)
    read = [*features.tokens.values(), *features.attentions.values()]
    if features.cls is not None:
        read.append(features.cls)
    logits = getattr(output, "logits", None)
    if reads_logits and logits is not None:
        read.append(logits)
    if not read:
        return list(params)
    probe = sum(t.float().sum() for t in read)
    grads = torch.autograd.grad(probe, list(params.values()), allow_unused=True)
    return [name for name, grad in zip(params, grads) if grad is None]


def summarise(names: list[str], limit: int = 6) -> str:
    """Parameter names grouped by their module (``vit.layers.1.mlp.fc1.weight`` -> ``vit.layers.1.mlp.fc1``)."""
    modules = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in names))
    shown = ", ".join(modules[:limit])
    return shown + (f" and {len(modules) - limit} more modules" if len(modules) > limit else "")


def check_every_parameter_reached(model: torch.nn.Module, taps, pixel_size: tuple[int, int], *,
                                  reads_logits: bool, ignored_prefix: str) -> None:
    """Under DDP without ``find_unused_parameters``, a parameter that gets no gradient stalls the
    second step; one probe pass names them before the first (``ignored_prefix``: parameters the loss
    terms read themselves, such as the projections)."""
    unreached = [name for name in unreached_parameters(model, taps, pixel_size, reads_logits=reads_logits)
                 if not name.startswith(ignored_prefix)]
    if unreached:
        raise ValueError(
            f"no loss term reaches {len(unreached)} trainable parameters of the student ({summarise(unreached)}), "
            "and DDP runs without find_unused_parameters: distil a later layer as well (e.g. --patch_layers 6 -1), "
            "freeze those parameters, or pass --ddp_find_unused_parameters true (a graph walk every step)")


def zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """A zero loss that still reaches every trainable parameter (DDP expects a gradient for each):
    the loss of a micro-batch none of whose images decoded."""
    return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)


def check_one_device_per_process(n_gpu: int, script: str = "recipes/multilevel.py") -> None:
    """One process sees several GPUs: ``Trainer`` would split each batch with ``nn.DataParallel``,
    whose replicas share the modules' forward hooks (each overwrites the features the others
    captured). One process per GPU is the supported way."""
    if n_gpu > 1:
        raise ValueError(
            f"this process sees {n_gpu} GPUs and would run them through nn.DataParallel, whose replicas overwrite "
            f"each other's captured features; start one process per GPU: accelerate launch --multi_gpu "
            f"--num_processes {n_gpu} {script} ... (or restrict this process with CUDA_VISIBLE_DEVICES=0)")
