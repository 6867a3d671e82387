"""``RobustDistillationTrainer``: a ``transformers.Trainer`` whose student learns, from distorted
images, what a frozen teacher computes from the clean ones."""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
from transformers import PreTrainedModel, Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import EvalPrediction

from .attention_maps import read_attention_maps
from .checkpoints import CheckpointCompanions, resume_folder
from .config import DistillationConfig
from .augmentation import Augmenter
from .dad import dad_images
from .data import collate_images
from .distortions import Distorter
from .distributed import (check_one_device_per_process, freeze_never_used, gather_rows, summarise,
                          unreached_parameters)
from .divergence import gradient_error, loss_error, non_finite_tensors, weights_error
from .frozen import inference_dtype, is_sharded, place_frozen, whole_weights, zero_stage
from .launchers import prepare_fsdp, sharded_checkpoints
from .heads import (REORDER, SAME, describe_difference, detach_head_inputs, freeze_unread_head, head_classes,
                    is_image_classifier, match_head, unwrap_adapters)
from .images import BadImageLog
from . import ema, lora, projections, teacher_cache
from .losses import attention_loss, ce_loss, cls_loss, kd_loss, patch_loss
from .mixing import mix_batch
from .token_grids import align_attention, patch_grid, resample_tokens
from .models import (Features, FeatureTaps, PixelPreprocessor, PixelSpaceClassifier, check_compatible, map_layers,
                     model_dtype, supports_drop_path, transformer_blocks)

LOSS_PARTS = ("loss_cls", "loss_patch", "loss_attn", "loss_kd", "loss_ce", "loss_kd_dad", "loss_ce_dad", "loss_head")
STORED_TEACHER_LOGITS = ("teacher_logits_clean", "teacher_logits_dad")

logger = logging.getLogger(__name__)


def accuracy_clean_and_distorted(eval_pred: EvalPrediction) -> dict[str, float]:
    """Student accuracy on the clean and on the distorted view of each evaluation image."""
    clean, distorted = eval_pred.predictions
    labels = eval_pred.label_ids
    return {
        "accuracy_clean": float((clean.argmax(-1) == labels).mean()),
        "accuracy_distorted": float((distorted.argmax(-1) == labels).mean()),
    }


def _stored_teacher_logits(dataset) -> bool:
    """Whether an offline DAD training set carries the teacher's logits (so it can be skipped)."""
    columns = getattr(dataset, "column_names", None) or []
    return all(c in columns for c in STORED_TEACHER_LOGITS)


def _has_labels(dataset) -> bool:
    """Whether a prepared training set yields labels (its first row says; no set: assume so)."""
    if dataset is None:
        return True
    try:
        return "labels" in dataset[0]
    except (TypeError, IndexError, KeyError):
        return True


def _joined(batches: list[torch.Tensor]) -> torch.Tensor:
    """The batches as one, copying only when there is more than one."""
    return batches[0] if len(batches) == 1 else torch.cat(batches)


def _as_preprocessor(processor) -> PixelPreprocessor:
    if isinstance(processor, PixelPreprocessor):
        return processor
    return PixelPreprocessor.from_image_processor(processor)


class RobustDistillationTrainer(Trainer):
    """Asymmetric distillation: the teacher (frozen, eval, no grad) sees the clean batch, the
    student the same batch distorted on the device by ``args.distortions``.

    With ``args.dad_mode`` the student also learns from discrete adversarial (DAD) images:
    ``online`` makes them each step (VQ, one PGD step against the teacher, VQ again; pass the
    ``discretizer``), ``offline`` reads them from the batch (``dad_pixel_values``, a training
    set paired by ``dad.pair_with_dad``), with the teacher's logits when they were stored.

    The teacher is a transformers model (a ViT of the student's shape for the [CLS], patch and
    attention terms; any image classifier for logit terms) or a classifier of [0, 1] pixels
    such as ``CLIPZeroShotClassifier`` (logit terms only). With ``teacher=None`` only
    cross-entropy terms may be on: supervised fine-tuning on the distorted view (the usual
    baseline), or on clean images with ``distortions="clean"``.

    ``processing_class`` is the student's image processor: it sets the student's input size and
    normalisation, and is saved beside every checkpoint. ``teacher_processor`` does the same for
    a transformers teacher and defaults to the student's (both start from one checkpoint).
    Pixels arrive from the collator in [0, 1]; each model normalises them at its own door.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(self, model=None, teacher=None, args: DistillationConfig | None = None,
                 train_dataset=None, eval_dataset=None, processing_class=None, data_collator=None,
                 compute_metrics=None, teacher_processor=None, distorter: Distorter | None = None,
                 discretizer=None, **kwargs):
        if not isinstance(args, DistillationConfig):
            raise TypeError("args must be a DistillationConfig")
        feature_terms = any(getattr(args, w) > 0 for w in ("cls_weight", "patch_weight", "attn_weight"))
        stored = args.dad_mode == "offline" and _stored_teacher_logits(train_dataset)
        needs_teacher = (feature_terms or args.dad_mode == "online"
                         or ((args.kd_weight > 0 or args.dad_kd_weight > 0) and not stored))
        if teacher is None and needs_teacher:
            raise ValueError("distillation needs a teacher; without one only ce_weight and dad_ce_weight may be "
                             "> 0, or an offline DAD dataset must carry the teacher's logits "
                             "(generate_dad_dataset(..., teacher_logits=True))")
        if processing_class is None:
            raise ValueError("pass the student's image processor as processing_class, e.g. "
                             "AutoImageProcessor.from_pretrained(student_name_or_path)")
        if args.dad_mode == "online" and discretizer is None:
            raise ValueError("online DAD needs a VQ model: pass discretizer=VQDiscretizer.from_pretrained(...)")
        pixel_teacher = teacher is not None and not isinstance(teacher, PreTrainedModel)
        if pixel_teacher and feature_terms:
            raise ValueError(f"a {type(teacher).__name__} teacher gives logits only; set cls_weight, patch_weight "
                             "and attn_weight to 0, or use a ViT teacher of the student's shape for those terms")
        self._check_heads(model, teacher, args)
        check_one_device_per_process(args.n_gpu)

        freeze_never_used(unwrap_adapters(model))
        self._trains_head = (not args.logits_read and args.head_ce_weight > 0 and is_image_classifier(model)
                             and _has_labels(train_dataset))
        if args.lora_r > 0 and not lora.is_lora(model):
            model = lora.lora_student(model, args.lora_r, args.lora_alpha, args.lora_target_modules, args.lora_dropout,
                                      train_head=is_image_classifier(model) and (args.logits_read or self._trains_head))
            trainable, total = lora.trained_share(model)
            args.lora_trained_share = trainable / total  # what the card reports (not a flag)
        if not args.logits_read:
            freeze_unread_head(unwrap_adapters(model), keep_head=self._trains_head)
            if self._trains_head:
                detach_head_inputs(unwrap_adapters(model))
        if compute_metrics is None and is_image_classifier(model):
            compute_metrics = accuracy_clean_and_distorted
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, data_collator=data_collator or collate_images,
                         compute_metrics=compute_metrics, **kwargs)
        self.model_accepts_loss_kwargs = False
        self._feature_terms = feature_terms

        self.student_pixels = _as_preprocessor(processing_class)
        self.teacher_pixels = _as_preprocessor(teacher_processor or processing_class)
        self.student_taps = FeatureTaps(
            model,
            token_layers=args.patch_layers if args.patch_weight > 0 else (),
            attention_layers=args.attn_layers if args.attn_weight > 0 else (),
            need_cls=args.cls_weight > 0,
        )
        if args.attn_weight > 0:
            read_attention_maps(unwrap_adapters(model), self.student_taps.attention_modules,
                                self.student_taps.attention_layers, args.attn_rows)
        self._check_checkpointing(args)
        # --bf16/--fp16, or the launcher's mixed_precision (accelerate launch sets ACCELERATE_MIXED_PRECISION)
        self.teacher_dtype = inference_dtype(args.teacher_dtype, mixed_precision=args.mixed_precision != "no",
                                             device=args.device)
        self.teacher = self.teacher_taps = self.teacher_classifier = self.projections = None
        if teacher is not None:
            if not pixel_teacher:
                self._tap_teacher(teacher, args)
            shard = args.teacher_sharding if args.teacher_sharding is not None else zero_stage(self.accelerator) == 3
            self.teacher = place_frozen(teacher, self.accelerator, self.teacher_dtype, shard=shard)
            self.teacher_classifier = (self.teacher if pixel_teacher
                                       else PixelSpaceClassifier(self.teacher, self.teacher_pixels))
        self.discretizer = (discretizer.to(self.args.device, dtype=self.teacher_dtype) if discretizer is not None
                            else None)
        self.attack = args.attack_settings()
        self.distorter = distorter or Distorter(
            args.distortions, patch_size=args.distortion_patch_size or self.student_taps.patch_size or 16)
        self.loss_weights = {
            "loss_cls": args.cls_weight, "loss_patch": args.patch_weight, "loss_attn": args.attn_weight,
            "loss_kd": args.kd_weight, "loss_ce": args.ce_weight, "loss_kd_dad": args.dad_kd_weight,
            "loss_ce_dad": args.dad_ce_weight, "loss_head": args.head_ce_weight,
        }
        # Each process draws its share of the training set, and counts the bad images it draws.
        share = math.ceil(len(train_dataset) / max(args.world_size, 1)) if train_dataset is not None else 0
        self.bad_images = BadImageLog(share, args.max_bad_image_fraction)
        self._last_parts: dict[str, torch.Tensor] = {}
        self._generator: torch.Generator | None = None
        self._view_key = (-1, -1)  # (global step, micro-batch) of the last training view
        self._eval_batch = 0
        self._parts = {True: {}, False: {}}  # training?, name -> summed tensor
        self._cached_teacher = None  # the teacher cache (a datasets.Dataset), once in use
        self._counts = {True: 0, False: 0}
        self._check_drop_path(args)
        self.weight_average = self._average_weights(args)
        self.companions = CheckpointCompanions(self.projections, self.weight_average)
        self.add_callback(self.companions)
        self.augmentation, self.mixing = args.augmentation, args.mixing  # read once, not rebuilt every step
        self._augmenter = None  # built at the first training batch, for its size
        if ((self.mixing.mixes or self.augmentation.active) and teacher is None
                and (args.kd_weight > 0 or args.dad_kd_weight > 0)):
            raise ValueError("augmentation and mixup/cutmix change the images the stored teacher logits were computed "
                             "on: pass the teacher, which then runs on the augmented images")

    def _check_drop_path(self, args) -> None:
        """A drop-path rate is built into the student when it loads; the trainer cannot add it."""
        if not args.drop_path_rate:
            return
        config = unwrap_adapters(self.model).config
        if not supports_drop_path(config) or getattr(config, "drop_path_rate", None) != args.drop_path_rate:
            raise ValueError(f"drop_path_rate={args.drop_path_rate} is a load-time setting of the student: load it "
                             f"with from_pretrained(..., drop_path_rate={args.drop_path_rate}), a model whose config "
                             "reads it (the recipes do)")

    def _average_weights(self, args) -> ema.WeightAverage | None:
        """The EMA of the student (its projections included), moved after every optimizer step."""
        if not args.ema_decay:
            return None
        if self.is_fsdp_enabled or zero_stage(self.accelerator) == 3:
            raise ValueError("ema_decay averages the whole student on every process, and this run shards it (FSDP or "
                             "ZeRO-3): run under DDP or ZeRO-2, or without --ema_decay")
        average = ema.WeightAverage(self.model, args.ema_decay)
        self.add_callback(ema.WeightAverageCallback(average))
        return average

    def _tap_teacher(self, teacher, args) -> None:
        """Hooks on a transformers teacher for the feature terms, mapped by relative depth."""
        if not self._feature_terms:
            self.teacher_token_layers = self.teacher_attention_layers = []
            self.teacher_taps = FeatureTaps(teacher, need_cls=False)
            return
        teacher_depth = len(transformer_blocks(teacher))
        self.teacher_token_layers = map_layers(self.student_taps.token_layers, self.student_taps.depth, teacher_depth)
        self.teacher_attention_layers = map_layers(self.student_taps.attention_layers, self.student_taps.depth,
                                                   teacher_depth)
        self.teacher_taps = FeatureTaps(teacher, self.teacher_token_layers, self.teacher_attention_layers,
                                        need_cls=args.cls_weight > 0)
        if args.attn_weight > 0:
            read_attention_maps(teacher, self.teacher_taps.attention_modules, self.teacher_attention_layers,
                                args.attn_rows)
        check_compatible(self.student_taps, self.teacher_taps, embeddings=args.cls_weight > 0,
                         patches=args.patch_weight > 0, attention=args.attn_weight > 0)
        width, to_width = self.student_taps.hidden_size, self.teacher_taps.hidden_size
        if width != to_width and (args.cls_weight > 0 or args.patch_weight > 0):
            made = projections.FeatureProjections(
                width, to_width, self.student_taps.token_layers if args.patch_weight > 0 else (),
                cls=args.cls_weight > 0, kind=args.projection)
            first = next(self.model.parameters())
            self.projections = projections.attach(self.model, made.to(first.device, first.dtype))

    def _check_checkpointing(self, args) -> None:
        """Reentrant checkpointing reruns a block under no_grad: what a hook captures inside it (an
        attention map, an inner block's tokens) carries no gradient, so those losses would not train."""
        if not args.activation_checkpointing:
            return
        kwargs = args.activation_checkpointing_kwargs if isinstance(args.activation_checkpointing_kwargs, dict) else {}
        inner = args.attn_weight > 0 or any(i != self.student_taps.depth - 1 for i in self.student_taps.token_layers)
        if kwargs.get("use_reentrant", False) and inner:
            raise ValueError("reentrant gradient checkpointing recomputes each block without autograd, so attention "
                             "maps and inner blocks' tokens captured inside it get no gradient: use "
                             "--activation_checkpointing_kwargs '{\"use_reentrant\": false}' (the default)")

    @staticmethod
    def _check_heads(model, teacher, args) -> None:
        if (args.kd_weight > 0 or args.dad_kd_weight > 0) and teacher is not None:
            student_classes, teacher_classes = head_classes(model), head_classes(teacher)
            if student_classes is None or teacher_classes is None:
                raise ValueError("logit distillation (kd_weight, dad_kd_weight) needs image classifiers as "
                                 "teacher and student; set those weights to 0")
            match = match_head(teacher, student_classes)
            if match == REORDER:
                raise ValueError("the teacher predicts the student's classes in another order (or among others): "
                                 "reorder its head first with hf_robust_distill.heads.align_head(teacher, "
                                 "student_class_names), or KD would match the wrong classes")
            if match != SAME:
                raise ValueError("logit distillation needs a teacher of the student's classes: the teacher "
                                 + describe_difference(teacher_classes, student_classes))
        if (args.ce_weight > 0 or args.dad_ce_weight > 0 or args.kd_weight > 0) and not is_image_classifier(model):
            raise ValueError("ce_weight, dad_ce_weight and kd_weight need a student with a classification head; "
                             "set them to 0")

    def _prepare_input(self, data):
        """The batch reaches the device as the collator made it (``Trainer`` would cast every float
        tensor to DeepSpeed's dtype): its pixels are the views' input and its stored logits the
        losses' targets, both kept in float32; each model casts its input at its own door."""
        if isinstance(data, torch.Tensor):
            return data.to(self.args.device)
        return super()._prepare_input(data)

    # ---- the student's view ----------------------------------------------------------------

    def _view_generator(self, device: torch.device, training: bool) -> torch.Generator:
        """A generator seeded from (seed, step, micro-batch, rank), so a resumed run draws the
        same distortions as an uninterrupted one; evaluation draws the same views every time."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        if training:
            step = self.state.global_step
            micro = self._view_key[1] + 1 if self._view_key[0] == step else 0
            self._view_key = (step, micro)
            entropy = [self.args.seed, 0, step, micro, self.args.process_index]
        else:
            entropy = [self.args.seed, 1, self._eval_batch, 0, self.args.process_index]
            self._eval_batch += 1
        seed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)
        return self._generator.manual_seed(seed)

    # ---- the loss ----------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        bad_images = inputs.pop("bad_images", ())
        if model.training:
            self.bad_images.record(bad_images)
        if "pixel_values" not in inputs:  # every image of the micro-batch failed to decode
            return self._nothing_to_learn(model, return_outputs)
        pixels = inputs["pixel_values"]
        labels = inputs.get("labels")
        generator = self._view_generator(pixels.device, model.training)
        dad = self._dad_batch(inputs, labels, generator, model.training)
        if model.training and self.augmentation.active:
            pixels, dad = self._augmented(pixels, dad, generator)
            inputs = {}  # outputs stored with the images are of the unaugmented ones: the teacher runs
        if dad is not None and self.args.dad_objective == "official":
            pixels, labels, inputs = self._joint_batch(pixels, dad, labels, inputs)
            dad = None
        batch = len(pixels)
        if model.training and self.mixing.active:
            pixels, dad, labels = self._mixed(pixels, dad, labels, generator)
            if self.mixing.mixes:
                inputs = {}  # logits stored with the images are of the unmixed ones: the teacher runs
        with torch.no_grad():
            views = [self.distorter(pixels, generator)]
            if dad is not None:
                views.append(self.distorter(dad, generator))
            teacher, teacher_dad_logits = self._teacher_outputs(pixels, dad, inputs)
        student = self.student_taps(model, self.student_pixels(_joined(views)))  # one pass over both views
        student_clean = student.rows(slice(0, batch))
        parts = self.loss_parts(student_clean, teacher, labels)
        if dad is not None:
            parts.update(self.dad_loss_parts(student.logits[batch:], teacher_dad_logits, labels))
        loss = sum(self.loss_weights[name] * value for name, value in parts.items())
        self._accumulate(parts, model.training)
        self._last_parts = parts
        return (loss, student_clean) if return_outputs else loss

    @staticmethod
    def _joint_batch(pixels, dad, labels, inputs):
        """The official objective's batch: the clean images, then their DAD images, with their
        labels and the teacher's stored logits, when there are both."""
        joint = {}
        stored_clean, stored_dad = (inputs.get(name) for name in STORED_TEACHER_LOGITS)
        if stored_clean is not None and stored_dad is not None:
            joint[STORED_TEACHER_LOGITS[0]] = torch.cat([stored_clean, stored_dad])
        return torch.cat([pixels, dad]), torch.cat([labels, labels]) if labels is not None else None, joint

    def _augmented(self, pixels, dad, generator):
        """The batch augmented, its DAD images with the same parameters."""
        if self._augmenter is None:
            self._augmenter = Augmenter(self.augmentation, tuple(pixels.shape[-2:]))
        images = self._augmenter([pixels] + ([dad] if dad is not None else []), generator)
        return images[0], images[1] if dad is not None else None

    def _mixed(self, pixels, dad, labels, generator):
        """The batch mixed (mixup/cutmix, its DAD images with it) and its soft, smoothed targets."""
        given = labels if labels is not None else torch.full((len(pixels),), -100, device=pixels.device)
        images = [pixels] + ([dad] if dad is not None else [])
        num_classes = unwrap_adapters(self.model).config.num_labels
        images, targets = mix_batch(images, given, num_classes, self.mixing, generator)
        return images[0], images[1] if dad is not None else None, targets if labels is not None else None

    @staticmethod
    def _nothing_to_learn(model, return_outputs: bool):
        """A zero loss that still reaches every trainable parameter (DDP expects a gradient for each)."""
        loss = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
        return (loss, Features()) if return_outputs else loss

    def _dad_batch(self, inputs, labels, generator, training: bool) -> torch.Tensor | None:
        """The batch's DAD images: made now (online) or read from the batch (offline)."""
        mode = self.args.dad_mode
        if mode == "none":
            return None
        if mode == "offline":
            if "dad_pixel_values" in inputs:
                return inputs["dad_pixel_values"]
            if not training:
                return None  # evaluation sets carry no DAD images: clean and distorted terms only
            raise ValueError("offline DAD needs each clean image's DAD image in the batch (dad_pixel_values): "
                             "pair the training set with dad.pair_with_dad(train, dad_dataset) and prepare it "
                             "with extra_images={'dad_image': 'dad_pixel_values'}")
        return dad_images(self.teacher_classifier, self.discretizer, inputs["pixel_values"], labels,
                          self.attack, generator)

    def _run_teacher(self, pixels: torch.Tensor) -> Features:
        if self.teacher_taps is not None:
            return self.teacher_taps(self.teacher, self.teacher_pixels(pixels))  # cast at the teacher's door
        return Features(logits=self.teacher(pixels))

    def _teacher_outputs(self, pixels, dad, inputs) -> tuple[Features | None, torch.Tensor | None]:
        """The teacher's features on the clean batch and its logits on the DAD batch, from one
        forward pass over both; logits stored in an offline dataset are used instead."""
        a = self.args
        cached = self._cached_features(inputs)  # --cache_teacher: the clean view's outputs, read
        stored_clean, stored_dad = (inputs.get(name) for name in STORED_TEACHER_LOGITS)
        need_clean = cached is None and (self._feature_terms or (a.kd_weight > 0 and stored_clean is None))
        need_dad = dad is not None and a.dad_kd_weight > 0 and stored_dad is None
        clean = cached
        if clean is None and stored_clean is not None:
            clean = Features(logits=stored_clean)
        dad_logits = stored_dad if dad is not None else None
        runs = [x for x, needed in ((pixels, need_clean), (dad, need_dad)) if needed]
        if runs:
            features = self._run_teacher(_joined(runs))
            if need_clean:
                clean = features.rows(slice(0, len(pixels)))
            if need_dad:
                dad_logits = features.logits[-len(dad):]
        return clean, dad_logits

    def _cached_features(self, inputs) -> Features | None:
        """The teacher's features read from the batch (``--cache_teacher``), or ``None``."""
        prefix = teacher_cache.PREFIX
        if not any(key.startswith(prefix) and key not in STORED_TEACHER_LOGITS for key in inputs):
            return None

        def layers(kind):
            return {int(key.rsplit("_", 1)[1]): value for key, value in inputs.items()
                    if key.startswith(f"{prefix}{kind}_")}

        taps = self.teacher_taps
        features = Features(logits=inputs.get(f"{prefix}logits"), cls=inputs.get(f"{prefix}cls"),
                            tokens=layers("tokens"), attentions=layers("attention"))
        if taps is not None and taps.patch_size:
            features.num_prefix_tokens = taps.prefix_tokens
            features.grid = patch_grid(self.teacher_pixels.size, taps.patch_size)
        return features

    def loss_parts(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        """The unweighted loss terms of the clean sample whose weight is not zero."""
        a = self.args
        parts = {}
        project = self.projections
        if a.cls_weight > 0:
            negatives, offset = gather_rows(teacher.cls) if a.cls_loss == "infonce" else (None, 0)
            cls = project.project_cls(student.cls) if project is not None else student.cls
            parts["loss_cls"] = cls_loss(cls, teacher.cls, a.cls_loss, a.infonce_temperature, negatives, offset)
        if a.patch_weight > 0:
            parts["loss_patch"] = patch_loss(
                [project.project_tokens(i, student.patch_tokens(i)) if project is not None else student.patch_tokens(i)
                 for i in self.student_taps.token_layers],
                [resample_tokens(teacher.patch_tokens(i), teacher.grid, student.grid)
                 for i in self.teacher_token_layers], a.patch_loss)
        if a.attn_weight > 0:
            pairs = [self._aligned_attention(student, teacher, i, j)
                     for i, j in zip(self.student_taps.attention_layers, self.teacher_attention_layers)]
            parts["loss_attn"] = attention_loss([s for s, _ in pairs], [t for _, t in pairs], a.attn_rows)
        if a.kd_weight > 0:
            parts["loss_kd"] = kd_loss(student.logits, teacher.logits, a.temperature)
        if a.ce_weight > 0:
            parts["loss_ce"] = ce_loss(student.logits, self._labels(labels))
        if self._trains_head and labels is not None:
            parts["loss_head"] = ce_loss(student.logits, labels)  # the head's input is detached
        return parts

    @staticmethod
    def _aligned_attention(student: Features, teacher: Features, i: int, j: int):
        """Student layer ``i``'s and teacher layer ``j``'s maps, as they are when the two models
        share prefix, grid and heads, else cut to [CLS] + grid, resampled and head-averaged."""
        s, t = student.attentions[i], teacher.attentions[j]
        if (student.num_prefix_tokens, student.grid, s.shape[1]) == (teacher.num_prefix_tokens, teacher.grid,
                                                                    t.shape[1]):
            return s, t
        return align_attention(s, t, student_prefix=student.num_prefix_tokens,
                               teacher_prefix=teacher.num_prefix_tokens, student_grid=student.grid,
                               teacher_grid=teacher.grid)

    def dad_loss_parts(self, student_logits, teacher_logits, labels) -> dict[str, torch.Tensor]:
        """The unweighted loss terms of the DAD image whose weight is not zero."""
        parts = {}
        if self.args.dad_kd_weight > 0:
            parts["loss_kd_dad"] = kd_loss(student_logits, teacher_logits, self.args.temperature)
        if self.args.dad_ce_weight > 0:
            parts["loss_ce_dad"] = ce_loss(student_logits, self._labels(labels))
        return parts

    @staticmethod
    def _labels(labels):
        if labels is None:
            raise ValueError("ce_weight and dad_ce_weight need labels in the dataset")
        return labels

    # ---- several processes ------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._check_every_parameter_reached()
        folder = resume_folder(resume_from_checkpoint, self.args.output_dir)
        if folder is not None:  # under every launcher (its own resume path skips _load_from_checkpoint)
            self.companions.load(folder)
        if self.is_fsdp_enabled:  # the plugin is shared: this student's blocks, right before it is prepared
            prepare_fsdp(self.accelerator, self.model, self.args)
        if self.args.cache_teacher and self.teacher is not None and self._cached_teacher is None:
            self._use_teacher_cache()
        output = super().train(folder, *args, **kwargs)
        if self.weight_average is not None:
            self.weight_average.copy_to(self.model)  # the average is the student saved and reported
        return output

    def evaluate(self, *args, **kwargs):
        """With ``ema_decay``, the average is the student evaluated, as in the official DAD run."""
        if self.weight_average is None:
            return super().evaluate(*args, **kwargs)
        with self.weight_average.applied(self.model):
            return super().evaluate(*args, **kwargs)

    def _use_teacher_cache(self) -> None:
        """Builds (or finds) the teacher's outputs on the training set, every process its share, and
        has the collator put them beside each batch."""
        taps = self.teacher_taps
        tokens, attentions = (self.teacher_token_layers, self.teacher_attention_layers) if taps else ([], [])
        fingerprint = getattr(self.train_dataset, "_fingerprint", None) or f"{len(self.train_dataset)} rows"
        key = teacher_cache.cache_key(self.teacher, fingerprint, tokens, attentions, self.args.attn_rows,
                                      self.teacher_pixels.size, self.teacher_dtype)
        folder = os.path.join(self.args.teacher_cache_dir or os.path.join(self.args.output_dir, "teacher-cache"), key)
        cache = teacher_cache.build_teacher_cache(
            self._run_teacher, self.train_dataset, folder, tokens, attentions,
            batch_size=self.args.per_device_eval_batch_size, device=self.args.device,
            lockstep=self.teacher_is_sharded)
        self._cached_teacher = cache
        self.train_dataset = teacher_cache.CachedTeacherDataset(self.train_dataset, cache)
        self.data_collator = teacher_cache.TeacherCacheCollator(self.data_collator, cache)

    def _check_every_parameter_reached(self) -> None:
        """Under DDP without ``find_unused_parameters``, a parameter that gets no gradient stalls the
        second step; one probe pass names them before the first."""
        a = self.args
        if (a.world_size < 2 or a.ddp_find_unused_parameters or self.is_fsdp_enabled or self.is_deepspeed_enabled
                or is_sharded(self.model)):
            return
        unreached = [name for name in unreached_parameters(self.model, self.student_taps, self.student_pixels.size,
                                                           reads_logits=a.logits_read or self._trains_head)
                     if not name.startswith(projections.ATTRIBUTE + ".")]  # read by their loss terms
        if unreached:
            raise ValueError(
                f"no loss term reaches {len(unreached)} trainable parameters of the student ({summarise(unreached)}), "
                "and DDP runs without find_unused_parameters: distil a later layer as well (e.g. --patch_layers 6 -1), "
                "freeze those parameters, or pass --ddp_find_unused_parameters true (a graph walk every step)")

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Also under FSDP's sharded state dict, the folder a user saves gets the whole student,
        loadable with plain ``from_pretrained`` (checkpoints stay sharded, for resuming)."""
        if lora.is_lora(self.model) and not _internal_call:  # checkpoints keep the adapter, to resume from
            return self._save_merged(output_dir or self.args.output_dir)
        if _internal_call or not sharded_checkpoints(self.accelerator):
            return super().save_model(output_dir, _internal_call)
        state_dict = self.accelerator.get_state_dict(self.model)  # every process joins the gather
        self._save(output_dir or self.args.output_dir, state_dict=state_dict)
        if self.args.push_to_hub:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save_merged(self, folder: str) -> None:
        """A LoRA student's folder: the adapters merged into a plain model, which loads without peft,
        from the whole weights every process helps gather (FSDP2 shards, ZeRO-3 partitions)."""
        state_dict = self.accelerator.get_state_dict(self.deepspeed if self.is_deepspeed_enabled else self.model)
        if not self.args.should_save:
            return
        merged = lora.merged_model(self.accelerator.unwrap_model(self.model), state_dict)
        bad = non_finite_tensors(merged.state_dict())
        if bad:
            raise weights_error(bad, folder, self.args.output_dir)
        merged.save_pretrained(folder)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(folder)
        torch.save(self.args, os.path.join(folder, TRAINING_ARGS_NAME))

    def saved_student(self, folder: str | None = None) -> PreTrainedModel:
        """The trained student, whole, on this process: the module itself, or where its weights are
        sharded (FSDP, ZeRO-3) or carry LoRA adapters the copy ``save_model`` wrote to ``folder``, read back."""
        model = self.accelerator.unwrap_model(self.model)
        if not (lora.is_lora(model) or is_sharded(model)):
            return model
        with whole_weights():
            return type(unwrap_adapters(model)).from_pretrained(folder or self.args.output_dir).to(self.args.device)

    @property
    def teacher_is_sharded(self) -> bool:
        """Whether the teacher's forward needs every process (evaluate a whole copy on one)."""
        return self.teacher is not None and is_sharded(self.teacher)

    # ---- divergence ----------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The step, stopped before the optimizer applies it when the loss is NaN or Inf on any
        process (one flag gathered; ``Trainer`` already synchronises on the loss each step)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss).reshape(1)
        everywhere = self.accelerator.gather(finite) if self.args.world_size > 1 else finite
        if not bool(everywhere.all()):
            parts = {name: float(value.detach()) for name, value in self._last_parts.items()}
            if bool(finite):
                loss, parts = torch.tensor(float("nan")), {"the loss of another process": float("nan")}
            raise loss_error(self.state.global_step + 1, float(loss), parts, self.args.output_dir)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        """The step's gradient norm; a NaN or Inf one stops training before the optimizer applies it
        (except under fp16 loss scaling, whose scaler skips such steps itself)."""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        if grad_norm is not None and self.accelerator.scaler is None and not math.isfinite(float(grad_norm)):
            names = [n for n, p in model.named_parameters() if p.grad is not None and not bool(p.grad.isfinite().all())]
            raise gradient_error(self.state.global_step + 1, float(grad_norm), names, self.args.output_dir)
        return grad_norm

    def _save(self, output_dir: str | None = None, state_dict=None):
        """Saves the student unless a weight is NaN or Inf: a diverged run keeps its last good checkpoint."""
        bad = self.args.should_save and non_finite_tensors(state_dict if state_dict is not None
                                                           else self.model.state_dict())
        if bad:
            raise weights_error(bad, output_dir or self.args.output_dir, self.args.output_dir)
        super()._save(output_dir, state_dict)

    # ---- logging of the parts -----------------------------------------------------------------

    def _accumulate(self, parts: dict[str, torch.Tensor], training: bool) -> None:
        sums = self._parts[training]
        for name, value in parts.items():
            value = value.detach()
            sums[name] = sums[name] + value if name in sums else value
        self._counts[training] += 1

    def _mean_parts(self, training: bool) -> dict[str, float]:
        """Means since the last call, averaged over processes; resets the sums."""
        sums, count = self._parts[training], self._counts[training]
        self._parts[training], self._counts[training] = {}, 0
        if not sums:
            return {}
        names = list(sums)
        means = torch.stack([sums[n] for n in names]) / count
        means = self.accelerator.reduce(means, reduction="mean")
        return {n: round(v, 6) for n, v in zip(names, means.tolist())}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # the periodic training log
            logs.update(self._mean_parts(training=True))
        super().log(logs, start_time)

    # ---- evaluation ----------------------------------------------------------------------------

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._eval_batch = 0
        self._parts[False], self._counts[False] = {}, 0
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        for name, value in self._mean_parts(training=False).items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss on the distorted view and, with labels, the student's logits on both views."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, student = self.compute_loss(model, inputs, return_outputs=True)
            if prediction_loss_only or labels is None or student.logits is None:
                return loss.detach(), None, None
            pixels = self.student_pixels(inputs["pixel_values"], model_dtype(model))
            clean_logits = model(pixel_values=pixels).logits
        return loss.detach(), (clean_logits.detach(), student.logits.detach()), labels

    # ---- checkpoints ---------------------------------------------------------------------------

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Reads checkpoint weights back through ``from_pretrained``.

        transformers 5.x writes some models' weights under their legacy names (ViT's
        ``vit.encoder.layer.N...``) while ``Trainer`` reloads them with a non-strict
        ``load_state_dict`` that matches none of them, so a resumed run would silently restart
        from the initial weights. ``from_pretrained`` converts the names; loading is strict.
        """
        model = self.model if model is None else model
        if not self._reloads_through_from_pretrained(model, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        else:
            reloaded = type(model).from_pretrained(resume_from_checkpoint, config=model.config,
                                                   dtype=next(model.parameters()).dtype)
            missing, unexpected = model.load_state_dict(reloaded.state_dict(), strict=False)
            if unexpected or any(not key.startswith(projections.ATTRIBUTE + ".") for key in missing):
                raise RuntimeError(f"{resume_from_checkpoint} does not hold this student's weights: missing "
                                   f"{missing[:5]}, unexpected {unexpected[:5]}")

    def _load_best_model(self):
        if not self._reloads_through_from_pretrained(self.model, self.state.best_model_checkpoint):
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _reloads_through_from_pretrained(self, model, checkpoint) -> bool:
        return (not (self.is_fsdp_enabled or self.is_deepspeed_enabled) and isinstance(model, PreTrainedModel)
                and os.path.isfile(os.path.join(checkpoint, "config.json")))
