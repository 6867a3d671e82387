"""LoRA students through ``peft``: adapters on the attention projections, the head trained in
full, and a merged, plain ``transformers`` model as the student a run ends with.

Checkpoints hold the adapter (``PeftModel.save_pretrained``), so resuming restores it; the final
folder holds the merged model, which loads with ``AutoModelForImageClassification.from_pretrained``
and no ``peft``. It is merged from whole weights gathered by the launcher (FSDP2 shards, ZeRO-3
partitions), into the student's architecture rebuilt without weights: a sharded module cannot be
copied, and a copy of a partitioned one holds empty tensors.
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from .heads import head_modules, unwrap_adapters

DEFAULT_TARGETS = "q_proj,v_proj"


def head_names(model: PreTrainedModel) -> list[str]:
    heads = head_modules(model)
    return [name for name, module in model.named_children() if module in heads]


def lora_student(model: PreTrainedModel, r: int, alpha: float, target_modules: str = DEFAULT_TARGETS,
                 dropout: float = 0.0, train_head: bool = True) -> PeftModel:
    """``model`` with rank-``r`` adapters on ``target_modules`` (comma-separated names) and, with
    ``train_head``, its classification head trained in full (``modules_to_save``)."""
    targets = [t.strip() for t in target_modules.split(",") if t.strip()]
    found = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in found]
    if missing:
        raise ValueError(f"--lora_target_modules names {missing}, which {type(model).__name__} does not have; "
                         f"its attention projections are e.g. {sorted(n for n in found if n.endswith('_proj'))[:6]}")
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=dropout,
                        modules_to_save=head_names(model) if train_head else None)
    return _in_the_partitioned_dtype(get_peft_model(model, config))


def _in_the_partitioned_dtype(model: PeftModel) -> PeftModel:
    """Under ZeRO-3 the base model is loaded partitioned in the launch's dtype (bf16) and the
    adapters are created beside it in float32; DeepSpeed partitions every trained parameter of
    one dtype alike (its optimizer keeps their float32 master copies), so the adapters take it."""
    partitioned = {p.dtype for p in model.parameters() if hasattr(p, "ds_id") and not p.requires_grad}
    if len(partitioned) == 1:
        dtype = partitioned.pop()
        for p in model.parameters():
            if p.requires_grad and p.dtype != dtype:
                p.data = p.data.to(dtype)
    return model


def is_lora(model) -> bool:
    return isinstance(model, PeftModel)


def merged_model(model: PeftModel, state_dict: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A plain model with the adapters folded into its weights, from ``state_dict``: the whole
    weights of ``model`` (``accelerator.get_state_dict``), whatever shards it. Its architecture and
    adapters are rebuilt on the meta device, then take these tensors; ``model`` is untouched."""
    from .loading import architecture_on_meta  # here, so that importing the config loads no model loader

    with torch.device("meta"):  # the adapters without weights too
        rebuilt = get_peft_model(architecture_on_meta(unwrap_adapters(model)),
                                 copy.deepcopy(model.peft_config[model.active_adapter]))
    own = rebuilt.state_dict()
    # copies: merging writes into the tensors, which may be the live student's own (unsharded runs)
    weights = {k: v.detach().clone() for k, v in state_dict.items() if k in own}
    rebuilt.load_state_dict(weights, strict=True, assign=True)
    return rebuilt.merge_and_unload()


def trained_share(model: PeftModel) -> tuple[int, int]:
    """(trainable parameters, parameters of the merged model), whole sizes also where ZeRO-3
    partitions them."""
    def size(p):
        return getattr(p, "ds_numel", p.numel())

    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    total = sum(size(p) for name, p in model.named_parameters()
                if "lora_" not in name and "modules_to_save" not in name)
    return trainable, total


def check_lora_flags(args, problems) -> None:
    """LoRA's fields of a ``DistillationConfig``."""
    if args.lora_r < 0 or args.lora_alpha <= 0 or not 0 <= args.lora_dropout < 1:
        problems.add("--lora_r / --lora_alpha / --lora_dropout",
                     "lora_r must be >= 0 (0: no LoRA), lora_alpha > 0 and lora_dropout in [0, 1)")
