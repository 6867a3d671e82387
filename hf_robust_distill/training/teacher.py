"""``DistillationTeacher``: one object owns the frozen teacher, as timm's ``DistillationTeacher``
does: its placement on every process and inference dtype, the taps and blocks the losses read of
it, its cache, and running it on [0, 1] pixels, or reading what the batch already carries of it.

The teacher is a transformers model (a ViT for the [CLS], patch and attention terms; any image
classifier for logit terms) or a classifier of [0, 1] pixels such as ``CLIPZeroShotClassifier``
(logit terms only). Without a model its outputs are those the data stores (an offline DAD
dataset's logits), and only those terms, or cross-entropy, may be on.
"""

from __future__ import annotations

import os

import torch
from transformers import PreTrainedModel

from ..data.columns import STORED_TEACHER_LOGITS, TEACHER_CACHE_PREFIX
from ..methods.objective import LayerPairs
from ..models.attention_maps import read_attention_maps
from ..models.pixels import PixelPreprocessor, PixelSpaceClassifier
from ..models.taps import Features, FeatureTaps, check_compatible, map_layers, transformer_blocks
from ..models.token_grids import patch_grid
from . import teacher_cache
from .frozen import is_sharded, place_frozen, zero_stage


class DistillationTeacher:
    """The frozen teacher of a run: ``model`` (or ``None``), placed by ``accelerator`` in ``dtype``
    (sharded under ``args.teacher_sharding``, by default under ZeRO-3), its blocks mapped to the
    ``student_taps``' by relative depth; ``pixels`` is its input's size and normalisation."""

    def __init__(self, model: torch.nn.Module | None, args, accelerator, *, dtype: torch.dtype,
                 pixels: PixelPreprocessor, student_taps: FeatureTaps):
        self.pixels, self.dtype, self.cache = pixels, dtype, None
        self.reads_features = any(getattr(args, w) > 0 for w in ("cls_weight", "patch_weight", "attn_weight"))
        self.reads_logits, self.reads_dad_logits = args.kd_weight > 0, args.dad_kd_weight > 0
        self.token_layers, self.attention_layers, self.taps = [], [], None
        self.student_layers = (tuple(student_taps.token_layers), tuple(student_taps.attention_layers))
        if isinstance(model, PreTrainedModel):
            self._tap(model, args, student_taps)
        shard = args.teacher_sharding if args.teacher_sharding is not None else zero_stage(accelerator) == 3
        self.model = place_frozen(model, accelerator, dtype, shard=shard) if model is not None else None
        self.classifier = PixelSpaceClassifier(self.model, pixels) if self.taps is not None else self.model

    def _tap(self, model: PreTrainedModel, args, student: FeatureTaps) -> None:
        """Hooks on a transformers teacher for the feature terms, its blocks mapped by relative depth."""
        if not self.reads_features:
            self.taps = FeatureTaps(model, need_cls=False)
            return
        depth = len(transformer_blocks(model))
        self.token_layers = map_layers(student.token_layers, student.depth, depth)
        self.attention_layers = map_layers(student.attention_layers, student.depth, depth)
        self.taps = FeatureTaps(model, self.token_layers, self.attention_layers, need_cls=args.cls_weight > 0)
        if args.attn_weight > 0:
            read_attention_maps(model, self.taps.attention_modules, self.attention_layers, args.attn_rows)
        check_compatible(student, self.taps, embeddings=args.cls_weight > 0, patches=args.patch_weight > 0,
                         attention=args.attn_weight > 0)

    @property
    def layers(self) -> LayerPairs:
        """The student's distilled blocks and the teacher's they are aligned with."""
        return LayerPairs(self.student_layers[0], tuple(self.token_layers), self.student_layers[1],
                          tuple(self.attention_layers))

    @property
    def is_sharded(self) -> bool:
        """Whether its forward needs every process (evaluate a whole copy on one)."""
        return self.model is not None and is_sharded(self.model)

    def __call__(self, pixels: torch.Tensor) -> Features:
        """The teacher's features of a [0, 1] batch, cast at its door."""
        if self.taps is not None:
            return self.taps(self.model, self.pixels(pixels))
        return Features(logits=self.model(pixels))

    def build_cache(self, dataset, folder: str, *, batch_size: int, device, rows: str) -> teacher_cache.TeacherCache:
        """Its outputs on ``dataset`` computed once (or found) under ``folder``, every process its share."""
        fingerprint = getattr(dataset, "_fingerprint", None) or f"{len(dataset)} rows"
        key = teacher_cache.cache_key(self.model, fingerprint, self.token_layers, self.attention_layers, rows,
                                      self.pixels.size, self.dtype)
        self.cache = teacher_cache.build_teacher_cache(
            self, dataset, os.path.join(folder, key), self.token_layers, self.attention_layers,
            batch_size=batch_size, device=device, lockstep=self.is_sharded)
        return self.cache

    def _cached(self, columns: dict) -> Features | None:
        """The teacher's features the batch carries from its cache (``--cache_teacher``), or ``None``."""
        if not any(key.startswith(TEACHER_CACHE_PREFIX) and key not in STORED_TEACHER_LOGITS for key in columns):
            return None

        def layers(kind):
            return {int(key.rsplit("_", 1)[1]): value for key, value in columns.items()
                    if key.startswith(f"{TEACHER_CACHE_PREFIX}{kind}_")}

        features = Features(logits=columns.get(f"{TEACHER_CACHE_PREFIX}logits"),
                            cls=columns.get(f"{TEACHER_CACHE_PREFIX}cls"), tokens=layers("tokens"),
                            attentions=layers("attention"))
        if self.taps is not None and self.taps.patch_size:
            features.num_prefix_tokens = self.taps.prefix_tokens
            features.grid = patch_grid(self.pixels.size, self.taps.patch_size)
        return features

    def outputs(self, images: torch.Tensor, dad: torch.Tensor | None,
                columns: dict) -> tuple[Features | None, torch.Tensor | None]:
        """Its features on the clean ``images`` and its logits on the ``dad`` images: read from the
        batch's ``columns`` where they carry them (its cache, or the logits an offline DAD dataset
        stored), the rest from one forward pass over both."""
        cached = self._cached(columns)
        stored_clean, stored_dad = (columns.get(name) for name in STORED_TEACHER_LOGITS)
        need_clean = cached is None and (self.reads_features or (self.reads_logits and stored_clean is None))
        need_dad = dad is not None and self.reads_dad_logits and stored_dad is None
        clean = cached
        if clean is None and stored_clean is not None:
            clean = Features(logits=stored_clean)
        dad_logits = stored_dad if dad is not None else None
        runs = [x for x, needed in ((images, need_clean), (dad, need_dad)) if needed]
        if runs:
            features = self(runs[0] if len(runs) == 1 else torch.cat(runs))
            if need_clean:
                clean = features.rows(slice(0, len(images)))
            if need_dad:
                dad_logits = features.logits[-len(dad):]
        return clean, dad_logits
