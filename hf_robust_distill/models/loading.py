"""Models loaded as plain ``transformers`` models, so a student saves, pushes and reloads with
``from_pretrained`` alone: teachers and students (with a head for the dataset's classes), whole
weights under every launcher, and their configs and processors read without weights for the checks."""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, PreTrainedModel

from ..data.datasets import _offline
from ..data.images import ImageResizer, timm_data_config
from .heads import DIFFERENT, SAME, fit_to_classes, is_image_classifier, reset_head
from .timm_models import TIMM_MODEL_TYPE, accepts_drop_path, is_timm


def supports_drop_path(config) -> bool:
    """Whether a model of this config builds stochastic depth from ``config.drop_path_rate`` (any
    config accepts the attribute; only some models read it), or, for a timm model, from its
    ``model_args`` (timm's ViTs and ResNets take ``drop_path_rate``)."""
    if getattr(config, "model_type", None) == TIMM_MODEL_TYPE:
        return accepts_drop_path(config)
    return "drop_path_rate" in inspect.signature(type(config).__init__).parameters


def drop_path_of(config) -> float | None:
    """The drop-path rate a loaded model's config carries (a timm model's in its ``model_args``)."""
    if getattr(config, "model_type", None) == TIMM_MODEL_TYPE:
        return (config.model_args or {}).get("drop_path_rate")
    return getattr(config, "drop_path_rate", None)


def student_load_kwargs(config, student_config=None) -> dict:
    """``from_pretrained`` keyword arguments a ``DistillationConfig`` asks of the student (read by
    its config's class: a timm model takes the rate among its ``model_args``)."""
    if config.drop_path_rate is None:
        return {}
    if getattr(student_config, "model_type", None) == TIMM_MODEL_TYPE:
        return {"model_args": {**(student_config.model_args or {}), "drop_path_rate": config.drop_path_rate}}
    return {"drop_path_rate": config.drop_path_rate}


def load_vision_model(name_or_path: str, *, attention_maps: bool = False,
                      label_names: list[str] | None = None, **kwargs) -> PreTrainedModel:
    """Loads an image classifier (or, when the checkpoint has no classification class, the bare
    vision model) with ``from_pretrained``.

    ``attention_maps=True`` loads it with eager attention on every layer, which returns the maps
    (sdpa and flash return none); ``RobustDistillationTrainer`` needs no such load, as it turns
    on the maps of the distilled layers alone (``attention_maps.read_attention_maps``).
    ``label_names`` fits the head to a dataset's classes, starting a new head when the
    checkpoint's has other classes.
    """
    if attention_maps:
        kwargs["attn_implementation"] = "eager"
    if label_names is not None:
        kwargs.update(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                      label2id={n: i for i, n in enumerate(label_names)}, ignore_mismatched_sizes=True)
    try:
        return AutoModelForImageClassification.from_pretrained(name_or_path, **kwargs)
    except ValueError as error:
        if "Unrecognized configuration class" not in str(error):
            raise
        for key in ("num_labels", "id2label", "label2id", "ignore_mismatched_sizes"):
            kwargs.pop(key, None)
        return AutoModel.from_pretrained(name_or_path, **kwargs)


def load_with_head(name_or_path: str, names: list[str] | None, **load_kwargs) -> tuple[nn.Module, str]:
    """A checkpoint loaded as a classifier of the dataset's classes, and what became of its head:
    ``"kept"`` (it predicts them in order), ``"reordered"`` (rows reordered or cut to them),
    ``"new"`` (a freshly initialised head: the checkpoint predicts other classes), or
    ``"none"`` (no names, or a model with no classification head)."""
    model = load_vision_model(name_or_path, **load_kwargs)
    match = fit_to_classes(model, names, name_or_path)
    if match != DIFFERENT:
        return model, "kept" if match == SAME else "reordered"
    if not names:
        return model, "none"
    model = load_vision_model(name_or_path, label_names=names, **load_kwargs)
    if not is_image_classifier(model):
        return model, "none"
    reset_head(model, names)
    return model, "new"


@contextlib.contextmanager
def whole_weights():
    """Models loaded within the block get whole weights on every process, whatever the launcher:
    FSDP's ``cpu_ram_efficient_loading`` and DeepSpeed ZeRO-3's ``zero.Init`` stay off for them
    (they are the student's, whose weights the wrapper broadcasts or partitions itself)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved_flag = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")
    saved_config = hf_deepspeed._hf_deepspeed_config_weak_ref
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved_config
        if saved_flag is None:
            os.environ.pop("FSDP_CPU_RAM_EFFICIENT_LOADING", None)
        else:
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = saved_flag


def architecture_on_meta(model: torch.nn.Module) -> torch.nn.Module:
    """A transformers ``model``'s architecture built again from its config on the meta device: no
    weight read or allocated, and never partitioned by ZeRO-3's ``zero.Init``."""
    with whole_weights(), torch.device("meta"):
        return type(model)._from_config(copy.deepcopy(model.config))


def checkpoint_exists(name_or_path: str, what: str, subfolder: str | None = None) -> None:
    """A folder that exists, or something that reads as a Hub id; the error says which it is not."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.isdir(name_or_path):
        if subfolder and not os.path.isdir(os.path.join(name_or_path, subfolder)):
            raise ValueError(f"{what} {name_or_path!r} has no subfolder {subfolder!r}")
        return
    if os.path.exists(name_or_path):
        raise ValueError(f"{what} {name_or_path!r} is a file; give the folder that holds the checkpoint")
    try:
        validate_repo_id(name_or_path)
        hub_id = not name_or_path.startswith((".", "~")) and name_or_path.count("/") <= 1
    except HFValidationError:
        hub_id = False
    if not hub_id:
        raise ValueError(f"{what} {name_or_path!r} does not exist: there is no such folder, and it is not a Hub id")


def read_model_config(name_or_path: str, what: str):
    """The ``transformers`` config of a checkpoint (no weights are read)."""
    from transformers import AutoConfig

    checkpoint_exists(name_or_path, what)
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the config of {what} {name_or_path!r}: {str(error).splitlines()[0]}"
                         + (" (offline: only cached Hub checkpoints load)" if _offline() else "")) from None


def read_image_processor(name_or_path: str, what: str):


    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{what} {name_or_path!r} has no image processor (preprocessor_config.json): "
                         f"{str(error).splitlines()[0]}; save one beside the weights") from None
    ImageResizer(processor)  # its size and rescale are usable
    return processor


def save_image_processor(processor, folder: str, model=None) -> None:
    """Saves ``processor`` into ``folder`` as ``AutoImageProcessor`` reads it back. transformers'
    ``TimmWrapperImageProcessor`` saves nothing (a timm model's ``config.json`` carries its
    transform); beside any other model it is written as the timm data config it runs."""
    config = timm_data_config(processor)
    if config is None:
        processor.save_pretrained(folder)
        return
    if model is not None and is_timm(model):
        return
    os.makedirs(folder, exist_ok=True)
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": type(processor).__name__, "pretrained_cfg": settings}, f, indent=2)


def config_classes(config) -> list[str] | None:
    """The class names a transformers config's head predicts, or ``None`` without a head."""
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForImageClassification") for a in architectures):
        return None
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def check_drop_path(student_config, rate: float | None, *, loaded: bool = False) -> None:
    """A drop-path rate only for a student whose layers read one; it is a load-time setting, so a
    ``loaded`` student's config must carry it (the recipes load it with ``student_load_kwargs``)."""
    if not rate:
        return
    if not supports_drop_path(student_config):
        raise ValueError(f"the student ({type(student_config).__name__}) has no stochastic depth in transformers, so "
                         "the rate would be ignored: drop --drop_path_rate, or use a student that has it (BEiT, "
                         "DINOv2, Swin, ConvNeXt, ...)")
    if loaded and drop_path_of(student_config) != rate:
        raise ValueError(f"drop_path_rate={rate} is a load-time setting of the student: load it with "
                         f"from_pretrained(..., drop_path_rate={rate}), a model whose config reads it (the recipes "
                         "do)")