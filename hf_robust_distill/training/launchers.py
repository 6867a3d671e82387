"""What accelerate's launchers (DDP, FSDP2, DeepSpeed) ask of a run, in one place.

* **Mixed precision follows the launcher.** ``accelerate launch`` with ``mixed_precision: bf16``
  sets ``ACCELERATE_MIXED_PRECISION``; under DeepSpeed it becomes ``bf16.enabled``, and
  transformers refuses arguments whose ``bf16`` says otherwise. ``follow_launcher_precision``
  gives every ``TrainingArguments`` of a run (the recipes', the demo zoo's) the launcher's.
* **FSDP2 shards blocks.** ``fsdp2_prepare_model`` wraps the plugin's class list, then shards
  ``model.get_input_embeddings()`` on its own. A model's ``_no_split_modules`` also names its
  embeddings (``ViTEmbeddings``), which hold the patch embeddings: sharding those inside an
  already sharded unit raises. ``prepare_fsdp`` gives accelerate the model's blocks alone, and a
  model without input embeddings in transformers' sense (CLIP's classifier, ResNet, ConvNeXt,
  whose ``get_input_embeddings`` raises ``NotImplementedError``) answers ``None``.
* **Whole weights of a sharded module**, for files written beside checkpoints:
  ``whole_state_dict`` gathers FSDP2 DTensors and ZeRO-3 partitions on every process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import types

import torch
from transformers.trainer import TRAINING_ARGS_NAME

from ..models import lora, timm_models
from .divergence import non_finite_tensors, weights_error

logger = logging.getLogger(__name__)


def launcher_mixed_precision() -> str:
    """The mixed precision ``accelerate launch`` set for this process ("no" outside a launch)."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()


def check_bf16_runs_here(bf16: bool, use_cpu: bool = False) -> None:
    """``--bf16`` on a machine without a GPU that has bf16, named with its fix. transformers' own
    refusal names neither the flag nor the fix, and fails the whole config, which hid every other
    problem of a run."""
    from transformers import training_args  # the very test TrainingArguments makes, read where it reads it

    if bf16 and not use_cpu and not training_args.is_torch_bf16_gpu_available() and not (
            training_args.is_torch_xla_available()):
        raise ValueError("this machine has no GPU with bf16: drop --bf16, or add --use_cpu to train in bf16 on the CPU")


def deepspeed_launch() -> bool:
    """Whether ``accelerate launch`` started this process with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def follow_launcher_precision(bf16: bool, fp16: bool) -> tuple[bool, bool]:
    """``(bf16, fp16)`` for a run's arguments: under a DeepSpeed launch, the launcher's mixed
    precision when the arguments leave both off (DeepSpeed's ``bf16.enabled`` is filled from
    them, and transformers refuses a mismatch); a contradiction is an error naming both. Other
    launchers apply their precision themselves (``TrainingArguments.mixed_precision`` reads it)."""
    launched = launcher_mixed_precision()
    if not deepspeed_launch() or launched == "no":
        return bf16, fp16
    if launched in ("bf16", "fp8") and fp16 or launched == "fp16" and bf16:
        raise ValueError(f"--{'fp16' if fp16 else 'bf16'} contradicts the launcher's mixed_precision: {launched} "
                         "(accelerate config or accelerate launch --mixed_precision): drop one of them")
    if bf16 or fp16:
        return bf16, fp16
    return launched in ("bf16", "fp8"), launched == "fp16"


# ---- FSDP2 ----------------------------------------------------------------------------------------

def fsdp_blocks(model: torch.nn.Module) -> list[type[torch.nn.Module]]:
    """The classes FSDP2 shards ``model`` by: its blocks.

    Of the classes a model's ``_no_split_modules`` name and it contains (CLIP's list names its text
    embeddings, absent from a vision-only CLIP), those transformers checkpoints as layers
    (``GradientCheckpointingLayer``: ``ViTLayer``, ``CLIPEncoderLayer``, ``SwinStage``...); for a
    model with none of those (ResNet, ConvNeXt), every class of its list; a timm model's own blocks."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if timm_models.is_timm(model):
        return timm_models.block_classes(model)
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    present: dict[str, type] = {}
    for module in model.modules():
        if type(module).__name__ in names:
            present.setdefault(type(module).__name__, type(module))
    blocks = [cls for cls in present.values() if issubclass(cls, GradientCheckpointingLayer)]
    return blocks or list(present.values())


def _no_input_embeddings(self) -> None:
    """This model has no input embeddings in transformers' sense (a vocabulary table): its stem
    stays in the root FSDP unit."""
    return None


def answer_input_embeddings(model: torch.nn.Module) -> None:
    """Lets ``model.get_input_embeddings()`` answer where transformers leaves it to raise
    ``NotImplementedError`` (``CLIPForImageClassification``, ResNet, ConvNeXt), as accelerate's
    FSDP2 preparation expects; only this instance is changed."""
    for module in {model, getattr(model, "base_model", model)}:
        getter = getattr(module, "get_input_embeddings", None)
        if getter is None:
            continue
        try:
            getter()
        except NotImplementedError:
            module.get_input_embeddings = types.MethodType(_no_input_embeddings, module)


def user_named_fsdp_classes(args) -> bool:
    """Whether the run names FSDP's classes itself (the accelerate config's
    ``fsdp_transformer_layer_cls_to_wrap``, or ``--fsdp_config``'s ``transformer_layer_cls_to_wrap``)."""
    fsdp_config = getattr(args, "fsdp_config", None) or {}
    return bool(os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP") or fsdp_config.get("transformer_layer_cls_to_wrap"))


def prepare_fsdp(accelerator, model: torch.nn.Module, args=None) -> list[str]:
    """Readies ``model`` for accelerate's FSDP2 preparation, right before it: the shared plugin's
    class list becomes this model's blocks (unless the run names classes itself), and its input
    embeddings answer. Returns the class names; the main process logs what is sharded."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = accelerator.state.fsdp_plugin
    inner = getattr(model, "base_model", model)
    answer_input_embeddings(model)
    if args is not None and user_named_fsdp_classes(args):
        names = list(plugin.transformer_cls_names_to_wrap or [])
    else:
        # The plugin is shared by every Trainer of the process: each model sets its own list.
        names = [cls.__name__ for cls in fsdp_blocks(model)]
        plugin.transformer_cls_names_to_wrap = names
        policy = plugin.auto_wrap_policy
        if getattr(policy, "func", None) is transformer_auto_wrap_policy:  # bound to an earlier model's classes
            plugin.auto_wrap_policy = transformer_auto_wrap_policy
    if accelerator.is_main_process:
        counts = {name: sum(type(m).__name__ == name for m in model.modules()) for name in names}
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        logger.info("FSDP2 shards %s by %s%s", type(inner).__name__,
                    ", ".join(f"{n} x {name}" for name, n in counts.items()) or "nothing (one unit)",
                    f"; accelerate shards its input embeddings ({type(embeddings).__name__}) on their own"
                    if embeddings is not None else "")
    return names


# ---- whole weights of a sharded module ----------------------------------------------------------

def _is_zero3_partitioned(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "ds_id")


@contextlib.contextmanager
def _gathered(tensor: torch.Tensor):
    """Within the block, a ZeRO-3 partitioned parameter is whole on every process."""
    if not _is_zero3_partitioned(tensor):
        yield tensor
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
        yield tensor


def whole_tensors(module: torch.nn.Module):
    """``(name, whole tensor)`` of each of ``module``'s parameters and buffers, one at a time (a
    sharded one gathered just for it: FSDP2 DTensors, ZeRO-3 partitions). A collective: every
    process iterates it to the end."""
    from torch.distributed.tensor import DTensor

    module = getattr(module, "module", module)  # a DeepSpeed engine's model
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        with _gathered(tensor):
            yield name, (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach()


def whole_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict as whole CPU tensors, whatever shards it. A collective: every
    process calls it."""
    keys = set(getattr(module, "module", module).state_dict())
    return {name: tensor.cpu().clone() for name, tensor in whole_tensors(module) if name in keys}


# ---- saving a whole model ------------------------------------------------------------------------

def sharded_checkpoints(accelerator) -> bool:
    """Whether FSDP saves each process's shard (``SHARDED_STATE_DICT``): ``Trainer.save_model``
    then writes no weights at all."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type)


def save_whole_model(trainer, folder: str, scalars: tuple[str, ...] = ()) -> None:
    """``trainer``'s model in ``folder`` with whole weights, loadable with plain ``from_pretrained``,
    under every launcher (FSDP shards and ZeRO-3 partitions gathered: ``save_pretrained`` of a
    partitioned module writes empty tensors). ``scalars``: parameters trained as one-element
    vectors (``vector_scalars``), saved as the scalars the model's config makes. Every process
    calls it; the main process writes."""
    model = trainer.deepspeed if trainer.is_deepspeed_enabled else trainer.model
    state_dict = trainer.accelerator.get_state_dict(model)  # every process joins the gather
    if trainer.args.should_save:
        for name in scalars:
            state_dict[name] = state_dict[name].reshape(())
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(folder, state_dict=state_dict)


def vector_scalars(model: torch.nn.Module) -> tuple[str, ...]:
    """``model``'s 0-dim parameters (CLIP's ``logit_scale``) as one-element vectors, which compute
    the same: DeepSpeed 0.19.8's ZeRO-3 cannot partition a 0-dim parameter (it views each one as
    bytes to broadcast it). Returns their names, for ``save_whole_model``."""
    names = tuple(name for name, p in model.named_parameters() if p.dim() == 0)
    for name in names:
        owner, _, attribute = name.rpartition(".")
        module = model.get_submodule(owner)
        setattr(module, attribute, torch.nn.Parameter(getattr(module, attribute).detach().reshape(1)))
    return names


def save_merged_lora(trainer, folder: str) -> None:
    """A LoRA student's folder: the adapters merged into a plain model, which loads without peft,
    from the whole weights every process helps gather (FSDP2 shards, ZeRO-3 partitions); refused
    when a merged weight is NaN or Inf."""
    accelerator = trainer.accelerator
    state_dict = accelerator.get_state_dict(trainer.deepspeed if trainer.is_deepspeed_enabled else trainer.model)
    if not trainer.args.should_save:
        return
    merged = lora.merged_model(accelerator.unwrap_model(trainer.model), state_dict)
    bad = non_finite_tensors(merged.state_dict())
    if bad:
        raise weights_error(bad, folder, trainer.args.output_dir)
    merged.save_pretrained(folder)
    if trainer.processing_class is not None:
        from ..models.loading import save_image_processor  # the config's import path loads no checkpoint code

        save_image_processor(trainer.processing_class, folder, merged)
    torch.save(trainer.args, os.path.join(folder, TRAINING_ARGS_NAME))
