"""What ``recipes/dad.py`` runs: its arguments and defaults (the paper's objective, or the official
script's), the checks before any weight is read, the teacher (a CLIP zero-shot head or a classifier),
the VQ model, the offline DAD training set, the plain-KD baseline, and the end of its run."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field, replace

import torch
from transformers import AutoConfig

from ..data.columns import DAD_IMAGE, DAD_PIXELS, STORED_TEACHER_LOGITS
from ..data.datasets import check_dataset_reachable, prepare_dataset
from ..data.images import ImageResizer
from ..methods.dad.discretize import VQDiscretizer, read_vq_config
from ..methods.dad.offline import generate_dad_dataset, load_dad_source, pair_with_dad
from ..models.heads import DIFFERENT, describe_difference, fit_to_classes, match_classes
from ..models.loading import (check_drop_path, config_classes, load_with_head, read_image_processor, read_model_config,
                              student_load_kwargs, whole_weights)
from ..models.pixels import PixelPreprocessor, PixelSpaceClassifier
from ..models.prompts import resolve_templates
from ..models.taps import check_feature_terms
from ..models.zero_shot import HEAD_WEIGHTS, CLIPZeroShotClassifier, load_pixel_classifier, saved_head_classes
from ..training.checks import check_resume_matches
from ..training.config import DistillationConfig
from ..training.frozen import frozen_autocast, is_sharded
from ..utils.problems import Problems
from ..views.distortions import parse_distortions
from .arguments import DataArguments, RobustnessArguments
from .finish import FinishedStudent, RunEnd, finish_run
from .parsing import parse_recipe_args
from .preflight import (check_card_possible, check_recipe_flags, check_streaming, decode_evaluation_split,
                        raise_before_the_demo_zoo)
from .recipe_data import RecipeRun, load_recipe_data

logger = logging.getLogger("dad")


@dataclass
class ScriptArguments:
    _argument_group_name = "the models and the DAD images"

    teacher_name_or_path: str | None = field(
        default=None, metadata={"help": "CLIP checkpoint (a zero-shot head is built from the class names), a "
                                        "saved CLIPZeroShotClassifier, or an image classifier. Unset: the demo."})
    prompt_templates: str = field(
        default="openai", metadata={"help": "Zero-shot prompt set of a CLIP teacher: openai (80), short (7), plain."})
    vq_name_or_path: str | None = field(default=None, metadata={"help": "VQ model in diffusers format."})
    vq_subfolder: str | None = field(default=None, metadata={"help": "Subfolder of the VQ model, e.g. vqvae."})
    vq_input_range: str | None = field(
        default=None, metadata={"help": "'[-1,1]' or '[0,1]'; read from vq_discretizer.json when saved there."})
    student_name_or_path: str | None = field(default=None, metadata={
        "help": "Student initialisation (transformers, a timm/<name> id, or a folder convert_checkpoint wrote).",
        "aliases": ["--model_name_or_path"]})
    dad_dataset: str | None = field(
        default=None, metadata={"help": "Offline mode: a dataset made by generate_dad_dataset (the folder it wrote, a "
                                        "saved dataset or a Hub id); made into <output_dir>/dad-dataset when unset."})
    dad_teacher_logits: bool = field(
        default=True, metadata={"help": "Offline generation also stores the teacher's logits (training skips "
                                        "the teacher)."})
    generation_batch_size: int = field(default=64, metadata={"help": "Batch size of offline generation."})
    eval_distortions: str = field(
        default="gaussian_noise:3,gaussian_blur:3,contrast:4,pixel_mask:0.5",
        metadata={"help": "Columns of the final accuracy table (a distortion spec)."})
    generate_only: bool = field(
        default=False, metadata={"help": "Offline mode: generate the DAD dataset (into <output_dir>/dad-dataset "
                                         "unless --dad_dataset names one) and stop; the same command without the "
                                         "flag then trains from it."})
    plain_kd_baseline: bool = field(
        default=False, metadata={"help": "Also train a plain-KD student (no DAD images) for the table."})


DAD_DEFAULTS = dict(
    dad_mode="offline", distortions="clean", cls_weight=0.0, patch_weight=0.0, attn_weight=0.0, kd_weight=0.5,
    ce_weight=0.5, dad_kd_weight=0.5, temperature=4.0, learning_rate=2e-3, weight_decay=0.05,
    lr_scheduler_type="cosine", warmup_steps=0.05,
)
"""The method's defaults, for the DAD student and the plain-KD baseline alike: the winners of the sweep in
benchmarks/dad_defaults.py (learning rate 2e-3 and CE 0.5, against the official script's 1e-4 and 1;
docs/flags.md). The attack stays the official one: the sweep's scores rise with the budget up to the
largest tried, where one step saturates the pixels (docs/dad.md, the attack budget). recipes/configs/dad_vit_base.yaml keeps the official ImageNet values."""
DEMO_DEFAULTS = dict(
    output_dir="demo_output/dad", corruption_cache_dir="demo_output/corrupted", num_train_epochs=1,
    per_device_train_batch_size=32, per_device_eval_batch_size=128,
    learning_rate=5e-4, ce_weight=1.0, logging_steps=50, eval_strategy="no", save_strategy="no", report_to="none",
    disable_tqdm=True, prompt_templates="short", plain_kd_baseline=True,
    dataloader_pin_memory=torch.accelerator.is_available(),
)
"""The demo's zoo CLIP is a weaker teacher than its student on clean digits (74 % against 87 %), the
opposite of the method's premise: the demo keeps the gentler learning rate and CE weight it was tuned
with (the method's defaults lose 2 to 12 mCE points there, docs/flags.md)."""


DESCRIPTION = ("Discrete Adversarial Distillation (DAD): a frozen teacher teaches a student on clean images and on "
               "discrete adversarial images (a PGD step against the teacher between two passes through a VQ model). "
               "Without --teacher_name_or_path: the embedded demo (the digits, a tiny CLIP, VQ model and ViT).")
OFFICIAL_OBJECTIVE_DEFAULTS = dict(ce_weight=0.75, kd_weight=0.25, dad_kd_weight=0.0, dad_ce_weight=0.0)


def parse_args(argv=None, problems: Problems | None = None):
    """(ScriptArguments, DataArguments, RobustnessArguments, DistillationConfig)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults, demo_defaults = dict(DAD_DEFAULTS), dict(DEMO_DEFAULTS)
    if _flag_value(argv, "--dad_objective") == "official":  # its weights over the demo's own
        defaults.update(OFFICIAL_OBJECTIVE_DEFAULTS)
        demo_defaults = {k: v for k, v in demo_defaults.items() if k not in OFFICIAL_OBJECTIVE_DEFAULTS}
    return parse_recipe_args((ScriptArguments, DataArguments, RobustnessArguments, DistillationConfig), argv,
                             defaults=defaults, demo_defaults=demo_defaults, problems=problems,
                             description=DESCRIPTION)


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def use_demo_zoo(script_args: ScriptArguments, config: DistillationConfig) -> None:
    """With no teacher given: the tiny CLIP, VQ model and ViT of the demo zoo."""
    if script_args.teacher_name_or_path:
        return
    from hf_robust_distill.cli import demo_model

    script_args.teacher_name_or_path = demo_model("clip", seed=config.seed)  # every process builds it together
    script_args.vq_name_or_path = script_args.vq_name_or_path or demo_model("vq", seed=config.seed)
    script_args.student_name_or_path = script_args.student_name_or_path or demo_model("vit", seed=config.seed)


def check_teacher(path: str, data) -> None:
    """Before any weight is read: the teacher gives logits for the dataset's classes."""
    names = data.names if data is not None else None
    saved = saved_head_classes(path) if os.path.isdir(path) else None
    if saved is not None:
        if match_classes(saved, names) == DIFFERENT:
            raise ValueError(f"the saved zero-shot head predicts other classes than the dataset's: "
                             f"{describe_difference(saved, names or [])}; build the head from the CLIP checkpoint "
                             "for these classes")
        return
    config = read_model_config(path, "the teacher")
    if config.model_type == "clip":
        if data is not None and not data.named:
            raise ValueError("a CLIP teacher builds its zero-shot head from the class names, and the labels have "
                             "none: give --class_names_file (one name per line, in label order)")
        return
    classes = config_classes(config)
    if match_classes(classes, names) == DIFFERENT:
        raise ValueError(f"the teacher {path} does not predict the dataset's classes "
                         f"({describe_difference(classes, names or [])}): use a CLIP teacher, or a classifier "
                         "fine-tuned on them")


def check_feature_teacher(path: str, student_config, config) -> None:
    """The [CLS], patch and attention terms need a ViT teacher of the student's shape, not a CLIP head."""
    teacher_config = read_model_config(path, "the teacher")
    if teacher_config.model_type.startswith("clip"):
        raise ValueError("a CLIP teacher gives logits only: set cls_weight, patch_weight and attn_weight to 0, or "
                         "use a ViT teacher of the student's shape for those terms")
    check_feature_terms(student_config, teacher_config, config)


def check_dad_dataset(name_or_path: str) -> None:
    if os.path.isdir(name_or_path):
        return
    if os.path.exists(name_or_path) or name_or_path.startswith((".", "/", "~")):
        raise ValueError(f"{name_or_path!r} is not a folder: give the folder generate_dad_dataset wrote, a saved "
                         "dataset or a Hub id")
    check_dataset_reachable(name_or_path)


def load_teacher(path: str, names: list[str], templates: str, built=None):
    """(teacher, its [0,1]-pixel classifier): a CLIP zero-shot classifier or an image classifier,
    its outputs in the dataset's class order. ``built``: a CLIP classifier built before, whose head
    is reused (a whole copy of a sharded teacher, made by one process)."""
    if not os.path.isfile(os.path.join(path, HEAD_WEIGHTS)) and AutoConfig.from_pretrained(path).model_type == "clip":
        head = {} if built is None else dict(head=built.head, logit_scale=built.logit_scale)
        teacher = CLIPZeroShotClassifier.from_clip(path, names, templates=templates, **head)
        return teacher, teacher
    classifier = load_pixel_classifier(path)
    fit_to_classes(classifier, names, "the teacher")
    if isinstance(classifier, CLIPZeroShotClassifier):
        return classifier, classifier
    return classifier.model, classifier


def offline_training_set(script_args, data, config, teacher_classifier, discretizer, resizer):
    """The training split with each row's DAD image (and teacher logits) beside it."""
    if script_args.dad_dataset:
        dad = load_dad_source(script_args.dad_dataset)
    else:
        dad = generate_dad_dataset(
            teacher_classifier, discretizer, data.train, os.path.join(config.output_dir, "dad-dataset"), resizer,
            image_column=data.image_column, label_column=data.label_column, attack=config.attack_settings(offline=True),
            batch_size=script_args.generation_batch_size, teacher_logits=script_args.dad_teacher_logits,
            seed=config.seed, autocast=frozen_autocast(config))
    stored = [c for c in STORED_TEACHER_LOGITS if c in dad.column_names]
    return prepare_dataset(pair_with_dad(data.train, dad, config.max_bad_image_fraction), resizer, data.image_column,
                           data.label_column, extra_images={DAD_IMAGE: DAD_PIXELS}, extra_columns=tuple(stored),
                           augmentation=config.augmentation, seed=config.seed, pixel_dtype=torch.uint8,
                           shared_draws=config.dad_objective != "official")  # docs/training-data.md: why


def plain_kd_config(config: DistillationConfig) -> DistillationConfig:
    """The baseline's arguments: the same run without DAD images (their objective's CE and KD terms
    on the clean batch alone), in <output_dir>/plain-kd."""
    return replace(config, output_dir=os.path.join(config.output_dir, "plain-kd"), dad_mode="none",
                   dad_objective="separate", dad_kd_weight=0.0, dad_ce_weight=0.0)


class DADRun(RecipeRun):
    """A run checked before any weight is read."""

    @property
    def needs_teacher(self) -> bool:
        """Whether training runs the teacher: online DAD, no stored logits, or augmented or mixed
        batches (new images; stored logits are of the originals)."""
        config = self.config
        return (config.dad_mode == "online" or not self.script_args.dad_teacher_logits or config.augmentation.active
                or config.mixing.mixes)


def load_frozen_models(run: DADRun):
    """(teacher, its [0, 1]-pixel classifier, the VQ discretizer), whole on every process."""
    args = run.script_args
    with whole_weights():  # every process runs the frozen teacher and VQ model
        teacher, classifier = load_teacher(args.teacher_name_or_path, run.data.names, args.prompt_templates)
        discretizer = VQDiscretizer.from_pretrained(args.vq_name_or_path, subfolder=args.vq_subfolder,
                                                    input_range=args.vq_input_range, device=run.config.device)
    return teacher, classifier, discretizer


def training_set(run: DADRun, teacher_classifier, discretizer):
    """The training split as the DAD student reads it: with each row's DAD image (offline: generated
    now or read), or plain (online: made every step)."""
    if run.config.dad_mode != "offline":
        return run.training_set(run.data.train)
    teacher_classifier.to(run.config.device)
    return offline_training_set(run.script_args, run.data, run.config, teacher_classifier, discretizer, run.resizer)


def load_student(run: DADRun, config: DistillationConfig):
    path = run.script_args.student_name_or_path
    student, head = load_with_head(path, run.data.names,
                                   **student_load_kwargs(config, read_model_config(path, "the student")))
    if head == "new":
        logger.warning("the student's head predicts other classes than the dataset's: starting a new head (the CE and "
                       "KD terms train it)")
    return student


def finish(run: DADRun, trainers: dict, teacher_classifier) -> dict:
    """After training: the robustness reports of the teacher and every student, every process scoring
    its share; on the main process the table (the plain-KD baseline first), the cards and the push."""
    results = {"trainer": trainers["DAD student"]}
    if "plain-KD student" in trainers:
        results["baseline"] = trainers["plain-KD student"]
    args, config = run.script_args, run.config
    pixels = PixelPreprocessor.from_image_processor(run.processor)
    students = [FinishedStudent(name, PixelSpaceClassifier(trainer.saved_student().eval(), pixels),
                                trainer.args.output_dir, args.student_name_or_path,
                                "kd" if name == "plain-KD student" else "dad", trainer.args)
                for name, trainer in trainers.items()]
    if is_sharded(teacher_classifier):  # its forward needs every process: this one evaluates a whole copy
        with whole_weights():
            _, teacher_classifier = load_teacher(args.teacher_name_or_path, run.data.names, args.prompt_templates,
                                                 built=teacher_classifier)
    end = RunEnd(config, run.robustness, run.data_args, run.data, run.prepared(run.data.evaluation), run.resizer,
                 [str(entry) for entry in parse_distortions(args.eval_distortions)], args.teacher_name_or_path,
                 teacher=teacher_classifier.to(config.device).eval(), repo_id=run.repo_id,
                 vq_name_or_path=args.vq_name_or_path, skipped_training_images=len(results["trainer"].bad_images))
    return {**results, **finish_run(end, students)}


def preflight(argv) -> DADRun:
    """Everything checked before any weight is loaded: flags, the teacher, VQ model and student
    (configs only), data, labels, classes, the evaluation images. Raises one ``PreflightError``
    listing every problem."""
    problems = Problems()
    parsed = script_args, data_args, robustness, config = parse_args(argv, problems)
    repo_id = check_recipe_flags(problems, script_args, robustness, config, script="recipes/dad.py")
    if script_args is not None and config is not None and script_args.generate_only and config.dad_mode != "offline":
        problems.add("--generate_only", "generates an offline DAD dataset: use it with --dad_mode offline")
    if config is not None and config.dad_mode == "none":
        problems.add("--dad_mode", "recipes/dad.py trains with DAD: --dad_mode online or offline")
    if script_args is not None:
        problems.check("--prompt_templates", resolve_templates, script_args.prompt_templates)
    if script_args is not None and config is not None and script_args.plain_kd_baseline:
        problems.check("--plain_kd_baseline", plain_kd_config, config)
    raise_before_the_demo_zoo(problems, parsed, script_args and script_args.teacher_name_or_path)
    use_demo_zoo(script_args, config)
    if not script_args.vq_name_or_path:
        problems.add("--vq_name_or_path", "DAD needs a VQ model (diffusers format; --vq_subfolder if nested)")
    else:
        problems.check("--vq_name_or_path", read_vq_config, script_args.vq_name_or_path, script_args.vq_subfolder,
                       script_args.vq_input_range)
    student_path = script_args.student_name_or_path
    processor = student_config = None
    if not student_path:
        problems.add("--student_name_or_path", "is required (the teacher is usually another architecture)")
    else:
        student_config = problems.check("--student_name_or_path", read_model_config, student_path, "the student")
        processor = problems.check("--student_name_or_path", read_image_processor, student_path, "the student")
    with config.main_process_first(desc="loading the dataset"):
        data = load_recipe_data(data_args, problems,
                                labels_train=config.ce_weight > 0 or config.dad_ce_weight > 0)
    check_streaming(problems, data, config, {"--cache_teacher": config.cache_teacher,
                                             "--dad_mode offline (its DAD images are paired by row)":
                                                 config.dad_mode == "offline"})
    if student_config is not None:
        problems.check("--drop_path_rate", check_drop_path, student_config, config.drop_path_rate)
    if data is not None and not data.scored:
        problems.add("--dataset_name", "DAD distils a classifier: the dataset needs labels of at least two classes"
                     + (f" ({data.unlabelled_because})" if data.unlabelled_because else ""))
    problems.check("--teacher_name_or_path", check_teacher, script_args.teacher_name_or_path, data)
    if config.resume_from_checkpoint and student_config is not None and data is not None and data.names:
        problems.check("--resume_from_checkpoint", check_resume_matches, config.resume_from_checkpoint,
                       student_config, len(data.names))
    if student_config is not None and any(w > 0 for w in (config.cls_weight, config.patch_weight, config.attn_weight)):
        problems.check("--cls_weight / --patch_weight / --attn_weight", check_feature_teacher,
                       script_args.teacher_name_or_path, student_config, config)
    if config.dad_mode == "offline" and script_args.dad_dataset:
        problems.check("--dad_dataset", check_dad_dataset, script_args.dad_dataset)
    check_card_possible(data, student_config is not None, repo_id, problems)
    if processor is not None and data is not None:
        decode_evaluation_split(data, ImageResizer(processor), robustness, config.max_bad_image_fraction, problems)
    problems.raise_if_any()
    return DADRun(script_args, data_args, robustness, config, data, repo_id, processor)


