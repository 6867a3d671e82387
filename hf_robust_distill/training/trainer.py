"""``RobustDistillationTrainer``: a ``transformers.Trainer`` whose student learns, from distorted
images, what a frozen teacher computes from the clean ones.

It composes: the views (``ViewPipeline``), the teacher (``DistillationTeacher``), the objective
(``DistillationObjective``) and the log of its parts (``LossPartsLog``); what is left here are the
``Trainer`` overrides that join them, and the guards against divergence and lost weights.
"""

from __future__ import annotations

import math
import os

import torch
from transformers import PreTrainedModel, Trainer
from transformers.trainer_utils import EvalPrediction

from ..data.columns import BAD_IMAGES, LABELS, PIXELS
from ..data.datasets import collate_images
from ..data.images import BadImageLog
from ..methods import projections
from ..methods.objective import DistillationObjective
from ..models import lora
from ..models.heads import is_image_classifier, unwrap_adapters
from ..models.loading import check_drop_path, save_image_processor, whole_weights
from ..models.pixels import as_preprocessor, model_dtype
from ..models.taps import Features
from ..views.distortions import Distorter
from . import teacher_cache
from .checkpoints import CheckpointCompanions, load_from_pretrained, reloads_through_from_pretrained, resume_folder
from .checks import check_checkpointing, check_trainer_inputs
from .config import DistillationConfig
from .distributed import check_every_parameter_reached, zero_loss
from .divergence import gradient_error, loss_error, non_finite_tensors, weights_error
from .ema import WeightAverage, WeightAverageCallback
from .epochs import DrawEpochCallback, StreamPosition
from .frozen import inference_dtype, is_sharded, zero_stage
from .launchers import prepare_fsdp, save_merged_lora, sharded_checkpoints
from .parts_log import LossPartsLog
from .student import prepare_student, student_taps, trains_head_apart
from .teacher import DistillationTeacher
from .view_pipeline import ViewPipeline


def accuracy_clean_and_distorted(eval_pred: EvalPrediction) -> dict[str, float]:
    """Student accuracy on the clean and on the distorted view of each evaluation image."""
    clean, distorted = eval_pred.predictions
    labels = eval_pred.label_ids
    return {
        "accuracy_clean": float((clean.argmax(-1) == labels).mean()),
        "accuracy_distorted": float((distorted.argmax(-1) == labels).mean()),
    }


class RobustDistillationTrainer(Trainer):
    """Asymmetric distillation: the teacher (frozen, eval, no grad) sees the clean batch, the
    student the same batch distorted on the device by ``args.distortions``.

    With ``args.dad_mode`` the student also learns from discrete adversarial (DAD) images:
    ``online`` makes them each step (VQ, one PGD step against the teacher, VQ again; pass the
    ``discretizer``), ``offline`` reads them from the batch (``dad_pixel_values``, a training
    set paired by ``pair_with_dad``), with the teacher's logits when they were stored.

    The teacher is a transformers model (a ViT of the student's shape for the [CLS], patch and
    attention terms; any image classifier for logit terms) or a classifier of [0, 1] pixels
    such as ``CLIPZeroShotClassifier`` (logit terms only). With ``teacher=None`` only
    cross-entropy terms may be on: supervised fine-tuning on the distorted view (the usual
    baseline), or on clean images with ``distortions="clean"``.

    ``processing_class`` is the student's image processor: it sets the student's input size and
    normalisation, and is saved beside every checkpoint. ``teacher_processor`` does the same for
    a transformers teacher and defaults to the student's (both start from one checkpoint).
    Pixels arrive from the collator as 8-bit levels (read as the processor rescales them) or floats
    in [0, 1]; each model normalises them at its own door.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(self, model=None, teacher=None, args: DistillationConfig | None = None,
                 train_dataset=None, eval_dataset=None, processing_class=None, data_collator=None,
                 compute_metrics=None, *, teacher_processor=None, distorter: Distorter | None = None,
                 discretizer=None, **kwargs):
        check_trainer_inputs(model, teacher, args, train_dataset=train_dataset, processing_class=processing_class,
                             discretizer=discretizer)
        trains_head = trains_head_apart(model, args, train_dataset)
        model = prepare_student(model, args, trains_head=trains_head)
        if compute_metrics is None and is_image_classifier(model):
            compute_metrics = accuracy_clean_and_distorted
        self.streams = isinstance(train_dataset, torch.utils.data.IterableDataset)
        data_collator = data_collator or getattr(train_dataset, "collator", None) or collate_images  # a stream's
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, data_collator=data_collator,
                         compute_metrics=compute_metrics, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.student_pixels, self.student_taps = as_preprocessor(processing_class), student_taps(model, args)
        check_checkpointing(args, inner_token_layers=any(i != self.student_taps.depth - 1
                                                         for i in self.student_taps.token_layers))
        check_drop_path(unwrap_adapters(model).config, args.drop_path_rate, loaded=True)
        # --bf16/--fp16, or the launcher's mixed_precision (accelerate launch sets ACCELERATE_MIXED_PRECISION)
        frozen_dtype = inference_dtype(args.teacher_dtype, mixed_precision=args.mixed_precision != "no",
                                       device=args.device)
        self.teacher = DistillationTeacher(teacher, args, self.accelerator, dtype=frozen_dtype,
                                           pixels=as_preprocessor(teacher_processor or processing_class),
                                           student_taps=self.student_taps)
        attached = projections.for_pair(self.model, self.student_taps, self.teacher.taps, args)
        self.objective = DistillationObjective(args, self.teacher.layers, attached, trains_head=trains_head)
        self.views = ViewPipeline.for_run(
            args, patch_size=self.student_taps.patch_size, num_classes=unwrap_adapters(model).config.num_labels,
            teacher_classifier=self.teacher.classifier, distorter=distorter, processor=processing_class,
            discretizer=discretizer.to(args.device, dtype=frozen_dtype) if discretizer is not None else None)
        # Each process draws its share of the training set, and counts the bad images it draws.
        share = (math.ceil(len(train_dataset) / max(args.world_size, 1)) if hasattr(train_dataset, "__len__") else
                 max(args.max_steps, 0) * args.per_device_train_batch_size * args.gradient_accumulation_steps)
        self.bad_images = BadImageLog(share, args.max_bad_image_fraction)
        self.loss_parts = LossPartsLog(self.accelerator)
        self.weight_average = self._average_weights(args)
        self.companions = CheckpointCompanions(attached, self.weight_average)
        self.add_callback(self.companions)
        holders = [h for h in (train_dataset, data_collator) if hasattr(h, "set_epoch")]
        if holders:  # draws that follow the epoch (AugmentedImages, a stream's collator)
            self.add_callback(DrawEpochCallback(*holders))
        self.stream_position = StreamPosition()
        self.add_callback(self.stream_position)

    def _build_accelerator_args(self, **kwargs) -> dict:
        """A stream is shared among the processes by its shards, each process reading its own (not every
        batch dispatched from process 0), through torchdata's stateful loader, whose position
        ``StreamPosition`` keeps beside each checkpoint."""
        if self.streams:
            kwargs["dataloader_config"].dispatch_batches = False
            kwargs["dataloader_config"].use_stateful_dataloader = True
        return super()._build_accelerator_args(**kwargs)

    def _average_weights(self, args) -> WeightAverage | None:
        """The EMA of the student (its projections included), moved after every optimizer step."""
        if not args.ema_decay:
            return None
        if self.is_fsdp_enabled or zero_stage(self.accelerator) == 3:
            raise ValueError("ema_decay averages the whole student on every process, and this run shards it (FSDP or "
                             "ZeRO-3): run under DDP or ZeRO-2, or without --ema_decay")
        average = WeightAverage(self.model, args.ema_decay)
        self.add_callback(WeightAverageCallback(average))
        return average

    # ---- the loss ----------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # 1. the images that did not decode are counted; a micro-batch of none has nothing to learn
        bad_images = inputs.pop(BAD_IMAGES, ())
        if model.training:
            self.bad_images.record(bad_images)
        if PIXELS not in inputs:
            return (zero_loss(model), Features()) if return_outputs else zero_loss(model)
        # 2. the views: DAD images, augmentation, mixing, the student's distorted view
        batch = self.views(inputs, training=model.training, step=self.state.global_step)
        # 3. the teacher on the clean images (and on the DAD images), or what the batch carries of it
        with torch.no_grad():
            teacher, teacher_dad_logits = self.teacher.outputs(batch.images, batch.dad, batch.teacher_columns)
        # 4. the student on both its views, in one pass
        student = self.student_taps(model, self.student_pixels(batch.view))
        clean = student.rows(slice(0, len(batch.images)))
        # 5. the objective: the weighted loss and its parts
        loss, parts = self.objective(clean, teacher, batch.labels, dad_teacher_logits=teacher_dad_logits,
                                     dad_logits=student.logits[len(batch.images):] if batch.dad is not None else None)
        # 6. the parts, logged beside the total
        self.loss_parts.add(parts, training=model.training)
        return (loss, clean) if return_outputs else loss

    def _prepare_input(self, data):
        """The batch reaches the device as the collator made it (``Trainer`` would cast every float
        tensor to DeepSpeed's dtype): its pixels are the views' input and its stored logits the
        losses' targets, both kept in float32; each model casts its input at its own door."""
        if isinstance(data, torch.Tensor):
            return data.to(self.args.device)
        return super()._prepare_input(data)

    # ---- training ----------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        a = self.args
        if a.world_size > 1 and not (a.ddp_find_unused_parameters or self.is_fsdp_enabled or self.is_deepspeed_enabled
                                     or is_sharded(self.model)):
            check_every_parameter_reached(self.model, self.student_taps, self.student_pixels.size,
                                          reads_logits=a.logits_read or self.objective.trains_head,
                                          ignored_prefix=projections.ATTRIBUTE + ".")  # read by their loss terms
        folder = resume_folder(resume_from_checkpoint, a.output_dir)
        self.stream_position.folder = folder
        if folder is not None:  # under every launcher (its own resume path skips _load_from_checkpoint)
            self.companions.load(folder)
        if self.is_fsdp_enabled:  # the plugin is shared: this student's blocks, right before it is prepared
            prepare_fsdp(self.accelerator, self.model, a)
        if a.cache_teacher and self.teacher.model is not None and self.teacher.cache is None:
            self.use_teacher_cache()
        output = super().train(folder, *args, **kwargs)
        if self.weight_average is not None:
            self.weight_average.copy_to(self.model)  # the average is the student saved and reported
        return output

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """A stream restarts at the position saved with the checkpoint (nothing decoded again); other
        training sets skip their first batches as ``Trainer`` skips them."""
        resumed = self.stream_position.resumed(dataloader, self.args.process_index)
        return resumed if resumed is not None else super().get_resumed_dataloader(dataloader, num_batches)

    def use_teacher_cache(self) -> None:
        """Builds (or finds) the teacher's outputs on the training set, every process its share, and
        has the collator put them beside each batch."""
        cache = self.teacher.build_cache(
            self.train_dataset, self.args.teacher_cache_dir or os.path.join(self.args.output_dir, "teacher-cache"),
            batch_size=self.args.per_device_eval_batch_size, device=self.args.device, rows=self.args.attn_rows)
        self.train_dataset = teacher_cache.CachedTeacherDataset(self.train_dataset, cache)
        self.data_collator = teacher_cache.TeacherCacheCollator(self.data_collator, cache)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The step, stopped before the optimizer applies it when the loss is NaN or Inf on any
        process (one flag gathered; ``Trainer`` already synchronises on the loss each step)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss).reshape(1)
        everywhere = self.accelerator.gather(finite) if self.args.world_size > 1 else finite
        if not bool(everywhere.all()):
            parts = {name: float(value.detach()) for name, value in self.loss_parts.last.items()}
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

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # the periodic training log
            logs.update(self.loss_parts.means(training=True))
        super().log(logs, start_time)

    # ---- evaluation ----------------------------------------------------------------------------

    def evaluate(self, *args, **kwargs):
        """With ``ema_decay``, the average is the student evaluated, as in the official DAD run."""
        if self.weight_average is None:
            return super().evaluate(*args, **kwargs)
        with self.weight_average.applied(self.model):
            return super().evaluate(*args, **kwargs)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self.views.seeds.evaluation_batch = 0
        self.loss_parts.restart(training=False)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        for name, value in self.loss_parts.means(training=False).items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss on the distorted view and, with labels, the student's logits on both views."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get(LABELS)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, student = self.compute_loss(model, inputs, return_outputs=True)
            if prediction_loss_only or labels is None or student.logits is None:
                return loss.detach(), None, None
            pixels = self.student_pixels(inputs[PIXELS], model_dtype(model))
            clean_logits = model(pixel_values=pixels).logits
        return loss.detach(), (clean_logits.detach(), student.logits.detach()), labels

    # ---- saving and loading ------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Also under FSDP's sharded state dict, the folder a user saves gets the whole student,
        loadable with plain ``from_pretrained`` (checkpoints stay sharded, for resuming); a LoRA
        student's gets the merged model (its checkpoints keep the adapters, to resume from)."""
        if lora.is_lora(self.model) and not _internal_call:
            return save_merged_lora(self, output_dir or self.args.output_dir)
        if _internal_call or not sharded_checkpoints(self.accelerator):
            return super().save_model(output_dir, _internal_call)
        state_dict = self.accelerator.get_state_dict(self.model)  # every process joins the gather
        self._save(output_dir or self.args.output_dir, state_dict=state_dict)
        if self.args.push_to_hub:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save(self, output_dir: str | None = None, state_dict=None):
        """Saves the student unless a weight is NaN or Inf: a diverged run keeps its last good checkpoint."""
        bad = self.args.should_save and non_finite_tensors(state_dict if state_dict is not None
                                                           else self.model.state_dict())
        if bad:
            raise weights_error(bad, output_dir or self.args.output_dir, self.args.output_dir)
        super()._save(output_dir, state_dict)
        if self.args.should_save and self.processing_class is not None:  # a timm processor saves nothing itself
            save_image_processor(self.processing_class, output_dir or self.args.output_dir, self.model)

    def saved_student(self, folder: str | None = None) -> PreTrainedModel:
        """The trained student, whole, on this process: the module itself, or where its weights are
        sharded (FSDP, ZeRO-3) or carry LoRA adapters the copy ``save_model`` wrote to ``folder``, read back."""
        model = self.accelerator.unwrap_model(self.model)
        if not (lora.is_lora(model) or is_sharded(model)):
            return model
        self.accelerator.wait_for_everyone()  # the main process has written the copy
        with whole_weights():
            return type(unwrap_adapters(model)).from_pretrained(folder or self.args.output_dir).to(self.args.device)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        if reloads_through_from_pretrained(model, resume_from_checkpoint, launcher_loads=self._launcher_loads):
            return load_from_pretrained(model, resume_from_checkpoint)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        best = self.state.best_model_checkpoint
        if reloads_through_from_pretrained(self.model, best, launcher_loads=self._launcher_loads):
            return load_from_pretrained(self.model, best)
        super()._load_best_model()

    @property
    def _launcher_loads(self) -> bool:
        return self.is_fsdp_enabled or self.is_deepspeed_enabled
