"""Teacher and student models: loading, normalisation at the door, and capture of the features
the distillation losses read.

Models stay plain ``transformers`` models, so a student saves, pushes and reloads with
``from_pretrained`` alone. What this package adds sits around them:

* ``PixelPreprocessor``: [0, 1] pixels to the model's input (its image processor's size,
  mean and std), in torch, on the device. Every model is fed through its own.
* ``FeatureTaps``: forward hooks that keep, for one forward pass, the final [CLS] embedding,
  the token sequences of the chosen blocks and the attention maps of the chosen blocks, and
  nothing else (the teacher's other layers are freed as the pass goes).
"""

from __future__ import annotations

import inspect

import contextlib
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, PreTrainedModel

from .heads import unwrap_adapters
from .images import input_size
from .token_grids import patch_grid, prefix_tokens


class PixelPreprocessor:
    """Resizes (when needed) and normalises a (B, 3, H, W) batch in [0, 1] for one model."""

    def __init__(self, mean, std, size: tuple[int, int]):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.size = (int(size[0]), int(size[1]))
        self._stats: dict = {}

    def __repr__(self) -> str:
        return f"PixelPreprocessor(mean={self.mean}, std={self.std}, size={self.size})"

    @classmethod
    def from_image_processor(cls, processor) -> PixelPreprocessor:
        mean = getattr(processor, "image_mean", None) if getattr(processor, "do_normalize", True) else None
        std = getattr(processor, "image_std", None) if getattr(processor, "do_normalize", True) else None
        return cls(mean if mean is not None else (0.0,) * 3, std if std is not None else (1.0,) * 3,
                   input_size(processor))

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> PixelPreprocessor:
        return cls.from_image_processor(AutoImageProcessor.from_pretrained(name_or_path, **kwargs))

    def __call__(self, pixels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The model's input: resized and normalised in float32, then in ``dtype`` (the model's,
        ``model_dtype``) when given."""
        pixels = pixels.float()
        if tuple(pixels.shape[-2:]) != self.size:
            pixels = F.interpolate(pixels, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        if pixels.device not in self._stats:
            self._stats[pixels.device] = (
                torch.tensor(self.mean, device=pixels.device).reshape(1, 3, 1, 1),
                torch.tensor(self.std, device=pixels.device).reshape(1, 3, 1, 1),
            )
        mean, std = self._stats[pixels.device]
        normalised = (pixels - mean) / std
        return normalised if dtype is None else normalised.to(dtype)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a model's input is cast to at its door: that of its first floating parameter (a
    DeepSpeed engine's bf16; FSDP2 keeps float32 parameters and casts inputs by its own policy;
    under autocast float32 inputs are what the model expects)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def supports_drop_path(config) -> bool:
    """Whether a model of this config builds stochastic depth from ``config.drop_path_rate`` (any
    config accepts the attribute; only some models read it)."""
    return "drop_path_rate" in inspect.signature(type(config).__init__).parameters


def student_load_kwargs(config) -> dict:
    """``from_pretrained`` keyword arguments a ``DistillationConfig`` asks of the student."""
    return {} if config.drop_path_rate is None else {"drop_path_rate": config.drop_path_rate}


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


def _recorded_class(model: PreTrainedModel, kind: str):
    spec = getattr(model, "_can_record_outputs", None) or {}
    target = spec.get(kind)
    target = getattr(target, "target_class", target)
    if target is None:
        raise ValueError(f"{type(model).__name__} does not declare its {kind} modules "
                         "(_can_record_outputs); use a ViT-family model (ViT, DeiT, Dinov2, BEiT, CLIP vision)")
    return target


def transformer_blocks(model: PreTrainedModel, kind: str = "hidden_states") -> list[torch.nn.Module]:
    """The model's transformer blocks (``hidden_states``) or their attention modules
    (``attentions``), in depth order."""
    target = _recorded_class(model, kind)
    root = getattr(model, "base_model", model)
    return [m for m in root.modules() if isinstance(m, target)]


def resolve_layers(layers: list[int], depth: int) -> list[int]:
    """0-based block indices; negatives count from the end (-1 is the last block)."""
    resolved = []
    for layer in layers:
        index = layer + depth if layer < 0 else layer
        if not 0 <= index < depth:
            raise ValueError(f"layer {layer} does not exist in a model with {depth} blocks")
        resolved.append(index)
    return resolved


def map_layers(student_layers: list[int], student_depth: int, teacher_depth: int) -> list[int]:
    """Teacher blocks matching student blocks by relative depth (last to last)."""
    return [round((i + 1) * teacher_depth / student_depth) - 1 for i in student_layers]


@dataclass
class Features:
    """What one forward pass yields for the losses."""

    logits: torch.Tensor | None = None
    cls: torch.Tensor | None = None
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)
    num_prefix_tokens: int = 1
    grid: tuple[int, int] | None = None  # the (h, w) patch grid after the prefix tokens

    def patch_tokens(self, layer: int) -> torch.Tensor:
        return self.tokens[layer][:, self.num_prefix_tokens:]

    def rows(self, index: slice) -> Features:
        """The features of a slice of the batch (one view of a concatenated forward pass)."""
        def pick(tensor):
            return None if tensor is None else tensor[index]

        return Features(pick(self.logits), pick(self.cls), {k: v[index] for k, v in self.tokens.items()},
                        {k: v[index] for k, v in self.attentions.items()}, self.num_prefix_tokens, self.grid)


def sequence_module(model: PreTrainedModel) -> torch.nn.Module:
    """The module whose output holds the final token sequence (``last_hidden_state``): the base
    model (``model.vit``), or for a classifier that keeps no base model under its prefix
    (``CLIPForImageClassification.vision_model``) its first transformers submodel."""
    base = getattr(model, "base_model", model)
    if base is not model:
        return base
    return next((child for child in model.children() if isinstance(child, PreTrainedModel)), model)


class FeatureTaps:
    """Hooks on a ViT-family model that record the features named at construction.

    Block ``i`` of ``token_layers`` is the output of transformer block ``i``; the last block is
    read after the model's final norm, i.e. the sequence the classifier and probes see, whose
    first token is ``Features.cls``. With nothing to record but logits, any classifier works
    (a ResNet student of logit distillation).
    """

    def __init__(self, model: PreTrainedModel, token_layers=(), attention_layers=(), need_cls: bool = True):
        model = unwrap_adapters(model)  # a LoRA student's blocks and final norm are its base model's
        reads_blocks = bool(token_layers or attention_layers or need_cls)
        self.blocks = transformer_blocks(model, "hidden_states") if reads_blocks else []
        self.depth = len(self.blocks)
        self.token_layers = resolve_layers(list(token_layers), self.depth)
        self.attention_layers = resolve_layers(list(attention_layers), self.depth)
        self.attention_modules = transformer_blocks(model, "attentions") if self.attention_layers else []
        if self.attention_modules and len(self.attention_modules) != self.depth:
            raise ValueError(f"found {len(self.attention_modules)} attention modules for {self.depth} blocks")
        self.need_cls = need_cls
        self.base = sequence_module(model)
        self.model_name = type(model).__name__
        config = getattr(model.config, "vision_config", model.config)
        self.patch_size = getattr(config, "patch_size", None)
        self.hidden_size = getattr(config, "hidden_size", None)
        self.num_heads = getattr(config, "num_attention_heads", None)
        self.prefix_tokens = prefix_tokens(config)
        self._recording: Features | None = None
        self._handles = self._register_hooks()

    def _register_hooks(self) -> list:
        """Hooks registered once, for the life of the taps: inert outside ``record`` (so evaluation
        passes cost nothing) and constant under ``torch.compile``, whose guards a hook added and
        removed on each call would invalidate."""
        last = self.depth - 1
        handles = [self.blocks[i].register_forward_hook(partial(self._keep_tokens, i))
                   for i in self.token_layers if i != last]
        handles += [self.attention_modules[i].register_forward_hook(partial(self._keep_attention, i))
                    for i in self.attention_layers]
        if self.need_cls or last in self.token_layers:
            handles.append(self.base.register_forward_hook(self._keep_final))
        return handles

    def _keep_tokens(self, index, module, args, output):
        if self._recording is not None:
            self._recording.tokens[index] = output[0] if isinstance(output, tuple) else output

    def _keep_attention(self, index, module, args, output):
        if self._recording is not None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise AttentionMapsUnavailable(self.model_name)
            self._recording.attentions[index] = weights

    def _keep_final(self, module, args, output):
        if self._recording is not None:
            sequence = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            if self.depth - 1 in self.token_layers:
                self._recording.tokens[self.depth - 1] = sequence
            self._recording.cls = sequence[:, 0]

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Removes the hooks (the taps record nothing afterwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def record(self):
        """Within the block, forward passes of the model fill the yielded ``Features``."""
        self._recording = features = Features()
        try:
            yield features
        finally:
            self._recording = None

    def __call__(self, model, pixel_values: torch.Tensor) -> Features:
        """Runs ``model`` (possibly wrapped by DDP, FSDP or DeepSpeed) on normalised pixels, cast to
        its dtype, and returns features."""
        with self.record() as features:
            output = model(pixel_values=pixel_values.to(model_dtype(model)))
        features.logits = getattr(output, "logits", None)
        if self.patch_size:
            features.grid = patch_grid(tuple(pixel_values.shape[-2:]), self.patch_size)
            features.num_prefix_tokens = self.prefix_tokens
            expected = self.prefix_tokens + features.grid[0] * features.grid[1]
            lengths = [t.shape[1] for t in features.tokens.values()] + [m.shape[-1] for m in features.attentions.values()]
            if any(n != expected for n in lengths):
                raise ValueError(
                    f"{self.model_name} gave {lengths[0]} tokens, and its config says {self.prefix_tokens} prefix "
                    f"tokens + a {features.grid[0]}x{features.grid[1]} grid: a token layout the package does not know")
        return features


class PixelSpaceClassifier(torch.nn.Module):
    """An image classifier that takes [0, 1] pixels: its preprocessor at the door, logits out.

    What attacks and the DAD pipeline call; ``CLIPZeroShotClassifier`` already is one.
    """

    def __init__(self, model: torch.nn.Module, preprocessor: PixelPreprocessor):
        super().__init__()
        self.model = model
        self.preprocessor = preprocessor

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.preprocessor(pixel_values, model_dtype(self.model))).logits


def as_pixel_classifier(model: torch.nn.Module, image_processor=None) -> torch.nn.Module:
    """``model`` as a module from [0, 1] pixels to logits: as it is when it already is one (it
    carries a ``preprocessor``), else wrapped with ``image_processor``'s normalisation (read from
    the model's checkpoint when omitted)."""
    if isinstance(getattr(model, "preprocessor", None), PixelPreprocessor):
        return model
    if image_processor is None:
        source = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
        if not source:
            raise ValueError("pass the model's image_processor: it cannot be read from the model's checkpoint")
        image_processor = AutoImageProcessor.from_pretrained(source)
    preprocessor = (image_processor if isinstance(image_processor, PixelPreprocessor)
                    else PixelPreprocessor.from_image_processor(image_processor))
    return PixelSpaceClassifier(model, preprocessor)


class AttentionMapsUnavailable(RuntimeError):
    def __init__(self, model_name: str):
        super().__init__(
            f"{model_name} returned no attention maps: its attention implementation (sdpa or flash) "
            "does not compute them. Give the distilled layers their maps with "
            "hf_robust_distill.attention_maps.read_attention_maps (RobustDistillationTrainer does), load it with "
            "attn_implementation='eager' (every layer), or set attn_weight=0.")


def check_compatible(student: FeatureTaps, teacher: FeatureTaps, *, embeddings: bool, patches: bool,
                     attention: bool) -> None:
    """Fails before training when teacher and student cannot be aligned as asked (each is anything
    with ``hidden_size``, ``patch_size`` and ``num_heads``: taps, or shapes read from configs).
    Widths, patch grids and head counts may differ: learned ``projections`` map the student's
    width to the teacher's, ``token_grids`` resamples the teacher's grid to the student's and
    averages attention maps over heads."""
    if (embeddings or patches) and not (student.hidden_size and teacher.hidden_size):
        raise ValueError("[CLS] and patch losses need models with a hidden_size in their configs: set cls_weight=0 "
                         "and patch_weight=0 for this pair")
    if (patches or attention) and not (student.patch_size and teacher.patch_size):
        raise ValueError("patch and attention losses need models that cut images into patches (a patch_size in "
                         "their configs): set patch_weight=0 and attn_weight=0 for this pair")
