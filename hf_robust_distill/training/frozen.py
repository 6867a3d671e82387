"""The frozen models (teacher, CLIP, VQ model) under every launcher.

They are never registered in the Trainer's accelerator: ``accelerator.prepare_model`` of a
second model changes how the student is prepared (a standalone ``trainer.evaluate()`` then skips
it), and under FSDP its evaluation mode neither places nor wraps the model. Instead each frozen
model gets, on every process:

* whole weights: loaded inside ``whole_weights()``, which turns off FSDP's CPU-RAM-efficient
  loading (weights on ``meta`` on ranks other than 0) and ZeRO-3's ``zero.Init`` partitioning;
* this process's device and an inference dtype (``inference_dtype``: bf16 on a GPU when the
  student trains in mixed precision), since no autocast reaches a model the accelerator does not
  wrap;
* or, when asked (``teacher_sharding``), a sharded copy: FSDP2 ``fully_shard`` of its layers
  (any multi-process run), or under DeepSpeed ZeRO-3 its own inference engine, as TRL prepares a
  reference model.
"""

from __future__ import annotations

import copy

import torch

from .launchers import fsdp_blocks

TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")


def inference_dtype(choice: str, *, mixed_precision: bool, device: torch.device) -> torch.dtype:
    """The dtype frozen models run in: ``choice``, or with ``auto`` bf16 on a GPU under mixed
    precision (fp16 where the GPU has no bf16) and fp32 otherwise."""
    if choice not in TEACHER_DTYPES:
        raise ValueError(f"teacher_dtype must be one of {TEACHER_DTYPES}, got {choice!r}")
    if choice != "auto":
        return getattr(torch, choice)
    if not mixed_precision or device.type == "cpu":
        return torch.float32
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def frozen_autocast(config) -> torch.dtype | None:
    """The autocast frozen models run under outside the Trainer (offline DAD generation): the
    inference dtype of a run's ``DistillationConfig`` when it is 16-bit, else ``None``."""
    dtype = inference_dtype(config.teacher_dtype, mixed_precision=config.mixed_precision != "no", device=config.device)
    return None if dtype == torch.float32 else dtype


def check_whole(model: torch.nn.Module, role: str) -> None:
    """Fails when ``model`` holds weights on ``meta`` (loaded under FSDP's CPU-RAM-efficient loading)."""
    meta = [name for name, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ValueError(
            f"the {role} has {len(meta)} weights on the meta device (first: {meta[0]}): it was loaded under FSDP's "
            "cpu_ram_efficient_loading, which gives whole weights to rank 0 only. Load it inside "
            "`with hf_robust_distill.whole_weights():` (the recipes do)")


def shard_for_inference(model: torch.nn.Module, mesh=None) -> torch.nn.Module:
    """FSDP2 ``fully_shard`` of each layer of ``model`` and of its root: every process keeps a
    shard and gathers a layer for its forward only (resharding after it)."""
    from torch.distributed.fsdp import fully_shard


    for cls in fsdp_blocks(model):
        for module in [m for m in model.modules() if isinstance(m, cls)]:
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


def _hidden_size(model: torch.nn.Module) -> int | None:
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None:
            config = getattr(config, "vision_config", config)
            sizes = getattr(config, "hidden_sizes", None)
            return max(sizes) if sizes else getattr(config, "hidden_size", None)
    return None


def deepspeed_inference_engine(model: torch.nn.Module, accelerator):
    """``model`` as its own DeepSpeed engine, as TRL prepares a reference model: partitioned under
    ZeRO-3 (buckets sized by its width), no optimizer; stage 0 under ZeRO-1/2."""
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    stage = config["zero_optimization"]["stage"]
    hidden = _hidden_size(model)
    if hidden is not None and stage == 3:
        config.update({"zero_optimization.reduce_bucket_size": hidden * hidden,
                       "zero_optimization.stage3_param_persistence_threshold": 10 * hidden,
                       "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden * hidden)})
    if stage != 3:
        config["zero_optimization"]["stage"] = 0
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def zero_stage(accelerator) -> int | None:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else plugin.zero_stage


def place_frozen(model: torch.nn.Module, accelerator, dtype: torch.dtype, *, shard: bool, role: str = "teacher"):
    """``model`` frozen (eval, no gradients) and ready for inference on this process: whole on its
    device in ``dtype``, or sharded across processes when ``shard``. A model sharded already (a
    teacher shared by two trainers) stays as it is."""
    model.eval().requires_grad_(False)
    partitioned = any(hasattr(p, "ds_id") for p in model.parameters())
    if is_sharded(model) and not (partitioned and not _is_engine(model)):
        return model
    if shard and zero_stage(accelerator) == 3:
        model.to(dtype=dtype)
        return deepspeed_inference_engine(model, accelerator)
    if partitioned:
        raise ValueError(f"the {role} was loaded while a DeepSpeed ZeRO-3 config was active, so zero.Init partitioned "
                         "its weights: load it inside `with hf_robust_distill.whole_weights():` (the recipes "
                         "do), or let it be sharded (teacher_sharding)")
    check_whole(model, role)
    model.to(accelerator.device, dtype=dtype)
    if shard:
        if accelerator.num_processes < 2:
            raise ValueError("teacher_sharding needs several processes (accelerate launch --num_processes N); "
                             "one process keeps the whole teacher")
        shard_for_inference(model)
    return model


def _is_engine(model) -> bool:
    return type(model).__name__ == "DeepSpeedEngine"


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s weights are split across processes (FSDP2 DTensors or a ZeRO-3 engine)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters())


def check_frozen_flags(args, problems) -> None:
    if args.teacher_dtype not in TEACHER_DTYPES:
        problems.add("--teacher_dtype", f"teacher_dtype must be one of {TEACHER_DTYPES}, got {args.teacher_dtype!r}")
