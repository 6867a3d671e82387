"""LoRA students through ``peft``: adapters on the attention projections, the head trained in
full, and a merged, plain ``transformers`` model as the student a run ends with.

Checkpoints hold the adapter (``PeftModel.save_pretrained``), so resuming restores it; the final
folder holds ``merge_and_unload()`` of a copy, which loads with
``AutoModelForImageClassification.from_pretrained`` and no ``peft``.
"""

from __future__ import annotations

import copy

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from .heads import head_modules

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
    return get_peft_model(model, config)


def is_lora(model) -> bool:
    return isinstance(model, PeftModel)


def merged_copy(model: PeftModel) -> PreTrainedModel:
    """A plain model with the adapters folded into its weights; ``model`` itself is untouched."""
    return copy.deepcopy(model).merge_and_unload()


def trained_share(model: PeftModel) -> tuple[int, int]:
    """(trainable parameters, parameters of the merged model)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for name, p in model.named_parameters()
                if "lora_" not in name and "modules_to_save" not in name)
    return trainable, total
