"""What the losses read of a model: ``FeatureTaps``, forward hooks that keep, for one pass, the final
[CLS] embedding, the token sequences and the attention maps of the chosen blocks and nothing else
(the teacher's other layers are freed as the pass goes); blocks mapped between depths; the checks
that a student and a teacher can be compared."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace

import torch
from transformers import PreTrainedModel

from . import timm_models
from .attention_maps import attention_rows
from .heads import unwrap_adapters
from .pixels import model_dtype
from .token_grids import patch_grid, prefix_tokens


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
    (``attentions``), in depth order (a timm ViT's too)."""
    if timm_models.is_timm(model):
        return timm_models.timm_blocks(model, kind)
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


def config_shape(config) -> SimpleNamespace:
    """Width, patch size, heads, depth and prefix tokens of a model, read from its config (a
    ``TimmWrapperConfig``'s timm model built on the meta device); ``None`` where it has none."""
    if getattr(config, "model_type", None) == timm_models.TIMM_MODEL_TYPE:
        return timm_models.config_shape(config)
    vision = getattr(config, "vision_config", config)
    return SimpleNamespace(hidden_size=getattr(vision, "hidden_size", None), patch_size=getattr(vision, "patch_size", None),
                           num_heads=getattr(vision, "num_attention_heads", None),
                           depth=getattr(vision, "num_hidden_layers", None), prefix_tokens=prefix_tokens(vision))


def model_shape(model) -> SimpleNamespace:
    """``config_shape`` of a loaded model (a timm model's read from the model itself)."""
    if timm_models.is_timm(model):
        return timm_models.model_shape(model)
    return config_shape(model.config)


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
    (``CLIPForImageClassification.vision_model``) its first transformers submodel; a timm ViT's
    final norm."""
    if timm_models.is_timm(model):
        return timm_models.final_norm(model)
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
        self.base = sequence_module(model) if reads_blocks else None
        self.model_name = type(model).__name__
        shape = model_shape(model)
        self.patch_size, self.hidden_size, self.num_heads = shape.patch_size, shape.hidden_size, shape.num_heads
        self.prefix_tokens = shape.prefix_tokens
        self._recording: Features | None = None
        self._handles = self._register_hooks()

    def _register_hooks(self) -> list:
        """Hooks registered once, for the life of the taps: inert outside ``record`` (so evaluation
        passes cost nothing) and constant under ``torch.compile``, whose guards a hook added and
        removed on each call would invalidate."""
        last = self.depth - 1
        handles = [self.blocks[i].register_forward_hook(partial(self._keep_tokens, i))
                   for i in self.token_layers if i != last]
        handles += [self._attention_hook(i) for i in self.attention_layers]
        if self.need_cls or last in self.token_layers:
            handles.append(self.base.register_forward_hook(self._keep_final))
        return handles

    def _attention_hook(self, index: int):
        module = self.attention_modules[index]
        if timm_models.is_timm_attention(module):  # maps computed from its qkv projection's output
            return module.qkv.register_forward_hook(partial(self._keep_timm_attention, index, module))
        return module.register_forward_hook(partial(self._keep_attention, index))

    def _keep_timm_attention(self, index, attention, projection, args, output):
        if self._recording is not None:
            self._recording.attentions[index] = timm_models.attention_maps(attention, output,
                                                                           attention_rows(attention) or "all")

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
            if torch.is_tensor(output):
                sequence = output
            else:
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


class AttentionMapsUnavailable(RuntimeError):
    def __init__(self, model_name: str):
        super().__init__(
            f"{model_name} returned no attention maps: its attention implementation (sdpa or flash) "
            "does not compute them. Give the distilled layers their maps with "
            "hf_robust_distill.models.read_attention_maps (RobustDistillationTrainer does), load it with "
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


def check_feature_terms(student_config, teacher_config, config) -> None:
    """The feature terms fit the two models, read from their configs: widths, patch grids, heads,
    and the layers asked for (what ``RobustDistillationTrainer`` would refuse once weights load)."""
    student, teacher = config_shape(student_config), config_shape(teacher_config)
    terms = dict(embeddings=config.cls_weight > 0, patches=config.patch_weight > 0, attention=config.attn_weight > 0)
    if not any(terms.values()):
        return
    if None in (student.hidden_size, student.depth):
        raise ValueError(f"the [CLS], patch and attention terms need a ViT-family student; "
                         f"{type(student_config).__name__} has no transformer blocks: set cls_weight, patch_weight "
                         "and attn_weight to 0 for logit distillation")
    check_compatible(student, teacher, **terms)
    for flag, layers, weight in (("--patch_layers", config.patch_layers, config.patch_weight),
                                 ("--attn_layers", config.attn_layers, config.attn_weight)):
        if weight > 0:
            try:
                resolve_layers(list(layers), student.depth)
            except ValueError as error:
                raise ValueError(f"{flag}: {error}") from None
