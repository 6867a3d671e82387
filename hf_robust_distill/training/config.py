"""``DistillationConfig``: ``TrainingArguments`` plus every hyper-parameter of the method."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..data.augmentation import INTERPOLATIONS, AugmentationSettings, check_augmentation_flags
from ..methods.dad.attacks import NORMS
from ..methods.dad.online import (DAD_MODES, DAD_OBJECTIVES, OFFLINE_STEP_SIZE, ONLINE_STEP_SIZE, AttackSettings,
                                  check_dad_flags)
from ..methods.losses import ATTENTION_ROWS, CLS_LOSSES, PATCH_LOSSES
from ..methods.objective import check_objective_flags
from ..methods.projections import KINDS as PROJECTIONS, check_projection_flags
from ..models.lora import DEFAULT_TARGETS as LORA_TARGETS, check_lora_flags
from ..utils.problems import Problems
from ..views.distortions import check_distortion_flags
from ..views.mixing import MixingSettings, check_mixing_flags
from .ema import check_ema_flags
from .frozen import TEACHER_DTYPES, check_frozen_flags
from .launchers import check_bf16_runs_here, follow_launcher_precision
from .teacher_cache import check_cache_flags

DEFAULT_DISTORTIONS = "pixel_mask:0.5-0.9,noise:0.1-0.5,blur:1-4"


@dataclass
class DistillationConfig(TrainingArguments):
    """Training arguments of robust distillation: asymmetric multi-level distillation and DAD.

    The teacher sees the clean image, the student a distorted one drawn from ``distortions``.
    The loss is ``cls_weight * L_cls + patch_weight * L_patch + attn_weight * L_attn
    + kd_weight * L_kd + ce_weight * L_ce``; every term with weight 0 is skipped entirely.
    Defaults (1.0 / 1.0 / 0.1 on [CLS] cosine / last-layer patch cosine / last-layer attention
    KL) are this package's choice where the paper's are unknown; see docs/flags.md.

    With ``dad_mode`` ``online`` or ``offline`` the student also sees the discrete adversarial
    image x_dad of each sample, adding ``dad_kd_weight * L_kd(x_dad) + dad_ce_weight * L_ce(x_dad)``.
    DAD's objective, CE + (T^2/2) KL(t(x)||s(x)) + (T^2/2) KL(t(x_dad)||s(x_dad)), is
    ``ce_weight=1, kd_weight=0.5, dad_kd_weight=0.5`` with the other weights 0 (``L_kd``
    carries the T^2).
    """

    _argument_group_name = "the method: DistillationConfig"

    distortions: str = field(
        default=DEFAULT_DISTORTIONS,
        metadata={"help": "The student's view: comma-separated name:level or name:low-high, e.g. "
                          "'gaussian_noise:1-5,gaussian_blur:3,pixel_mask:0.5-0.9'. Paper distortions: noise "
                          "(std), blur (sigma px), pixel_mask, patch_mask (ratio); ImageNet-C names take "
                          "severities 1-5; 'clean' leaves a sample undistorted."},
    )
    distortion_patch_size: int | None = field(
        default=None, metadata={"help": "Patch size of patch_mask; defaults to the student's patch size."})
    cls_weight: float = field(default=1.0, metadata={"help": "Weight of the [CLS] embedding loss."})
    cls_loss: str = field(default="cosine", metadata={"help": f"One of {CLS_LOSSES}.", "choices": list(CLS_LOSSES)})
    infonce_temperature: float = field(default=0.1, metadata={"help": "Temperature of the InfoNCE [CLS] loss."})
    patch_weight: float = field(default=1.0, metadata={"help": "Weight of the patch-token loss."})
    patch_loss: str = field(default="cosine", metadata={"help": f"One of {PATCH_LOSSES}.", "choices": list(PATCH_LOSSES)})
    patch_layers: list[int] = field(
        default_factory=lambda: [-1],
        metadata={"help": "Student blocks whose patch tokens are aligned (0-based, negative from the end)."})
    projection: str = field(
        default="linear", metadata={"help": "When the student is narrower or wider than the teacher: the learned map of "
                                            "its [CLS] and patch tokens to the teacher's width, 'linear' or 'mlp'. "
                                            "Saved beside checkpoints, never in the student's folder.",
                                    "choices": list(PROJECTIONS)})
    attn_weight: float = field(default=0.1, metadata={"help": "Weight of the attention-map loss."})
    attn_rows: str = field(
        default="all", metadata={"help": "Attention rows compared: 'all' queries or the 'cls' query only.",
                                 "choices": list(ATTENTION_ROWS)})
    attn_layers: list[int] = field(
        default_factory=lambda: [-1],
        metadata={"help": "Student blocks whose attention maps are aligned (0-based, negative from the end)."})
    kd_weight: float = field(default=0.0, metadata={"help": "Weight of logit distillation (needs a teacher head)."})
    temperature: float = field(default=4.0, metadata={"help": "Temperature of logit distillation."})
    ce_weight: float = field(default=0.0, metadata={"help": "Weight of cross-entropy with the labels."})
    head_ce_weight: float = field(
        default=1.0, metadata={"help": "When no KD or CE term reads the student's logits: weight of the cross-entropy "
                                       "that trains its classification head on detached features (the backbone "
                                       "learns from the feature terms only), so no head is left untrained. 0 "
                                       "freezes the head instead."})
    max_bad_image_fraction: float = field(
        default=0.01, metadata={"help": "Images that fail to decode are skipped and logged; more than this share of "
                                        "a split stops the run with their list."})
    dad_mode: str = field(
        default="none", metadata={"help": "Discrete adversarial images for the student: 'none', 'online' "
                                          "(made each step with the teacher and a VQ model) or 'offline' "
                                          "(read from a dataset made by generate_dad_dataset).",
                                  "choices": list(DAD_MODES)})
    dad_objective: str = field(
        default="separate", metadata={"help": "How DAD images enter the loss. 'separate': their own terms "
                                              "(dad_kd_weight, dad_ce_weight) beside the clean batch's (the paper's "
                                              "equation). 'official': the official training script as it runs: clean "
                                              "and DAD images as one joint batch (mixup/cutmix across it), ce_weight "
                                              "x SoftCE + kd_weight x T^2 KL over it (0.75 and 0.25 there).",
                                      "choices": list(DAD_OBJECTIVES)})
    dad_kd_weight: float = field(default=0.0, metadata={"help": "Weight of logit distillation on DAD images."})
    dad_ce_weight: float = field(default=0.0, metadata={"help": "Weight of cross-entropy on DAD images."})
    attack_norm: str = field(default="l2", metadata={"help": "Norm of the PGD ball.", "choices": list(NORMS)})
    attack_eps: float = field(default=0.1, metadata={"help": "Radius of the PGD ball in [0,1] pixel units."})
    attack_step_size: float | None = field(
        default=None, metadata={"help": f"PGD step; defaults to {ONLINE_STEP_SIZE} online and "
                                        f"{OFFLINE_STEP_SIZE} offline (the official DAD settings)."})
    attack_steps: int = field(default=1, metadata={"help": "Number of PGD steps."})
    attack_random_start: float = field(
        default=0.8, metadata={"help": "Probability that a sample's attack starts at a random point of the ball."})
    lora_r: int = field(default=0, metadata={"help": "Rank of LoRA adapters on the student (0: train it in full). The "
                                                     "head trains in full; the final folder holds the merged model."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (the update is alpha / r)."})
    lora_target_modules: str = field(
        default=LORA_TARGETS, metadata={"help": "Comma-separated module names that get adapters (ViT family: "
                                                "q_proj, k_proj, v_proj, o_proj, fc1, fc2)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    random_resized_crop: bool = field(
        default=False, metadata={"help": "timm's RandomResizedCrop of each original training image (scale "
                                         "--crop_scale_min to 1, ratio 3/4-4/3) to the model's size, image by image in "
                                         "the data loader's workers; the teacher sees the crop the student sees."})
    crop_scale_min: float = field(default=0.08, metadata={"help": "Smallest area share RandomResizedCrop keeps."})
    train_interpolation: str = field(
        default="bicubic", metadata={"help": "Interpolation of the random crop: bicubic (DeiT and the official DAD "
                                             "run), bilinear, or random (timm's train.py default).",
                                     "choices": list(INTERPOLATIONS)})
    hflip: float = field(default=0.0, metadata={"help": "Probability of a horizontal flip (the official run: 0.5)."})
    rand_augment: str | None = field(
        default=None, metadata={"help": "timm's RandAugment, e.g. 'rand-m9-mstd0.5-inc1' (the official run): its "
                                        "operations per image."})
    color_jitter: float = field(
        default=0.0, metadata={"help": "timm's brightness, contrast and saturation jitter (the official run: 0.4); "
                                       "as in timm, applied only without --rand_augment."})
    random_erasing: float = field(
        default=0.0, metadata={"help": "Probability of timm's random erasing of a box with noise (the official run: "
                                       "0.25), its noise that of the model's normalised space."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup's Beta(alpha, alpha) (the official DAD run: "
                                                             "0.8); 0: off. Targets become soft."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix's Beta(alpha, alpha) (the official DAD run: "
                                                              "1.0); 0: off."})
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability that a batch is mixed."})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "With both on, the probability of CutMix."})
    ema_decay: float = field(
        default=0.0, metadata={"help": "Keep an exponential moving average of the student's weights with this decay "
                                       "(the official DAD run: 0.99992); it is the student evaluated during "
                                       "training and saved at the end. 0: off."})
    drop_path_rate: float | None = field(
        default=None, metadata={"help": "Stochastic depth of the student (the official DAD run: 0.25), for students "
                                        "whose config has drop_path_rate (BEiT, DINOv2, Swin, ConvNeXt, ...; not "
                                        "ViT or DeiT in transformers). Unset: the checkpoint's own."})
    cache_teacher: bool = field(
        default=False, metadata={"help": "Compute what the losses read of the teacher (it sees the clean image) once, "
                                         "before training, into a datasets cache, and read it in every epoch instead "
                                         "of running the teacher. Not with online DAD, whose attack needs it."})
    teacher_cache_dir: str | None = field(
        default=None, metadata={"help": "Where --cache_teacher keeps its caches (one per teacher, data, layers and "
                                        "size); default <output_dir>/teacher-cache."})
    teacher_dtype: str = field(
        default="auto", metadata={"help": "Dtype of the frozen teacher, CLIP and VQ model: 'auto' is bfloat16 on a GPU "
                                          "under mixed precision (--bf16/--fp16 or the accelerate config's; float16 "
                                          "where the GPU has no bf16), float32 otherwise.",
                                  "choices": list(TEACHER_DTYPES)})
    teacher_sharding: bool | None = field(
        default=None, metadata={"help": "Shard the frozen teacher across processes for its forward passes (FSDP2 "
                                        "fully_shard; under DeepSpeed ZeRO-3 its own inference engine). Unset: "
                                        "sharded under ZeRO-3, a whole copy per process otherwise."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "DDP's search for parameters without a gradient, a graph walk each step. Off: "
                                         "the trainer checks before training that the chosen layers reach every "
                                         "trainable parameter, and names those they leave out."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the distillation collator needs every column."})

    def __post_init__(self):
        # Before TrainingArguments reads them: DeepSpeed's bf16/fp16 setting comes from the launcher.
        self.bf16, self.fp16 = follow_launcher_precision(self.bf16, self.fp16)
        problems = Problems()  # every problem, each under its flag, checked by the module of its concern
        problems.check("--bf16", check_bf16_runs_here, self.bf16 or self.bf16_full_eval, self.use_cpu)
        problems.raise_if_any()  # before transformers refuses it in words that name no flag
        super().__post_init__()
        for check in FLAG_CHECKS:
            check(self, problems)
        problems.raise_if_any()

    @staticmethod
    def runnable_here(inputs: dict, problems: Problems) -> dict:
        """The recipes' flags with what this machine cannot run (``--bf16`` without a bf16 GPU) turned
        off, each listed in ``problems`` under its flag with its fix: the config still builds, so
        the checkpoints and the data are checked in the same pass."""
        try:
            check_bf16_runs_here(inputs.get("bf16") or inputs.get("bf16_full_eval"), inputs.get("use_cpu", False))
        except ValueError as error:
            problems.add("--bf16", str(error))
            return {**inputs, "bf16": False, "bf16_full_eval": False}
        return inputs

    def __getstate__(self) -> dict:
        """Pickled (``training_args.bin`` beside every checkpoint) without the Hub token."""
        return {**self.__dict__, "hub_token": None}

    @property
    def augmentation(self) -> AugmentationSettings:
        """The training augmentation (crop, flip, RandAugment or colour jitter, erasing)."""
        return AugmentationSettings(self.random_resized_crop, (self.crop_scale_min, 1.0), self.hflip,
                                    self.rand_augment, self.color_jitter, self.random_erasing,
                                    self.train_interpolation)

    @property
    def mixing(self) -> MixingSettings:
        """Mixup/CutMix and label smoothing (``label_smoothing_factor``) of the training batches."""
        return MixingSettings(self.mixup_alpha, self.cutmix_alpha, self.mixup_prob, self.mixup_switch_prob,
                              self.label_smoothing_factor)

    @property
    def logits_read(self) -> bool:
        """Whether a KD or CE term reads the student's logits (and so trains its head)."""
        return any(w > 0 for w in (self.kd_weight, self.ce_weight, self.dad_kd_weight, self.dad_ce_weight))

    def attack_settings(self, offline: bool | None = None) -> AttackSettings:
        """The PGD settings of DAD; the default step size follows ``dad_mode`` (or ``offline``)."""
        offline = self.dad_mode == "offline" if offline is None else offline
        default_step = OFFLINE_STEP_SIZE if offline else ONLINE_STEP_SIZE
        return AttackSettings(norm=self.attack_norm, eps=self.attack_eps, steps=self.attack_steps,
                              step_size=default_step if self.attack_step_size is None else self.attack_step_size,
                              random_start_prob=self.attack_random_start)


def check_run_flags(args, problems: Problems) -> None:
    """The fields no other concern owns: the columns the collator needs, the student's drop-path rate
    (a load-time setting) and the share of bad images a split may hold."""
    if args.remove_unused_columns:
        problems.add("--remove_unused_columns", "remove_unused_columns=True drops the columns distillation needs; "
                                                "leave it False")
    if args.drop_path_rate is not None and not 0 <= args.drop_path_rate < 1:
        problems.add("--drop_path_rate", f"drop_path_rate lies in [0, 1), got {args.drop_path_rate}")
    if not 0 <= args.max_bad_image_fraction <= 1:
        problems.add("--max_bad_image_fraction", f"max_bad_image_fraction is a share of a split, in [0, 1], got "
                                                 f"{args.max_bad_image_fraction}")


FLAG_CHECKS = (check_objective_flags, check_distortion_flags, check_dad_flags, check_lora_flags, check_ema_flags,
               check_mixing_flags, check_augmentation_flags, check_cache_flags, check_projection_flags,
               check_frozen_flags, check_run_flags)
