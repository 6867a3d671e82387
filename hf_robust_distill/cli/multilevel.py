"""What ``recipes/multilevel.py`` runs: its arguments and defaults, the checks before any weight is
read, the models it loads, and the end of its run (the table with the linear probe, reports, cards)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..data.images import ImageResizer
from ..evaluation.linear_probe import cls_features, fit_linear_probe
from ..models.heads import DIFFERENT, fit_to_classes, is_image_classifier, match_classes
from ..models.loading import (check_drop_path, config_classes, load_vision_model, load_with_head, read_image_processor,
                              read_model_config, student_load_kwargs, whole_weights)
from ..models.pixels import PixelPreprocessor, PixelSpaceClassifier
from ..models.taps import check_feature_terms
from ..training.checks import check_resume_matches
from ..training.config import DistillationConfig
from ..utils.problems import Problems, check_fraction
from ..views.distortions import parse_distortions
from .arguments import DataArguments, RobustnessArguments
from .finish import FinishedStudent, RunEnd, finish_run
from .parsing import parse_recipe_args
from .preflight import (check_card_possible, check_recipe_flags, check_streaming, decode_evaluation_split,
                        raise_before_the_demo_zoo)
from .recipe_data import RecipeData, RecipeRun, load_recipe_data

logger = logging.getLogger("multilevel")


@dataclass
class ScriptArguments:
    _argument_group_name = "the models and the final table"

    teacher_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher ViT (Hub id or path). Unset: the embedded demo."})
    student_name_or_path: str | None = field(
        default=None, metadata={"help": "Student initialisation (transformers, a timm/<name> id, or a folder "
                                        "convert_checkpoint wrote); defaults to the teacher's checkpoint.",
                                "aliases": ["--model_name_or_path"]})
    eval_distortions: str | None = field(
        default=None, metadata={"help": "Columns of the final table (a distortion spec); defaults to "
                                        "each entry of --distortions."})
    linear_probe: bool = field(
        default=False, metadata={"help": "Also fit a linear probe on the student's frozen [CLS] features of "
                                         "distorted training images (the paper's protocol)."})
    probe_label_fraction: float = field(
        default=1.0, metadata={"help": "Fraction of training labels the linear probe sees."})


DESCRIPTION = ("Asymmetric multi-level ViT distillation: the frozen teacher sees clean images, the student distorted "
               "ones; losses align the [CLS] embedding, the patch tokens and the attention maps. Without "
               "--teacher_name_or_path: the embedded demo (the digits, a tiny ViT).")
METHOD_DEFAULTS = dict(
    learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.05, optim="adamw_torch",
    distortions="clean,pixel_mask:0.5-0.9,noise:0.1-0.5,blur:1-4",
)
"""The method's own optimisation, chosen from the sweep in benchmarks/multilevel_defaults.py (docs)."""
DEMO_DEFAULTS = dict(
    output_dir="demo_output/multilevel", corruption_cache_dir="demo_output/corrupted", num_train_epochs=4,
    per_device_train_batch_size=32, per_device_eval_batch_size=128, logging_steps=50, eval_strategy="no",
    save_strategy="no", report_to="none", distortions="pixel_mask:0.5-0.8,noise:0.2-0.5,blur:2-3", linear_probe=True,
    disable_tqdm=True, dataloader_pin_memory=torch.accelerator.is_available(),
)


@dataclass
class MultilevelRun(RecipeRun):
    """A run checked before any weight is read, with the teacher's image processor."""

    teacher_processor: object = None

    @property
    def teacher_path(self) -> str:
        return self.script_args.teacher_name_or_path

    @property
    def student_path(self) -> str:
        return self.script_args.student_name_or_path or self.script_args.teacher_name_or_path


def parse_args(argv: list[str] | None = None, problems: Problems | None = None):
    """(ScriptArguments, DataArguments, RobustnessArguments, DistillationConfig) from the command
    line, optionally on top of ``--config file.yaml``; the method's defaults, and with no teacher
    given the embedded demo's settings too; any flag still overrides them."""
    return parse_recipe_args((ScriptArguments, DataArguments, RobustnessArguments, DistillationConfig), argv,
                             defaults=METHOD_DEFAULTS, demo_defaults=DEMO_DEFAULTS, problems=problems,
                             description=DESCRIPTION)


def build_teacher_if_demo(script_args: ScriptArguments, config: DistillationConfig) -> None:
    if script_args.teacher_name_or_path:
        return
    from .demo import demo_model

    script_args.teacher_name_or_path = demo_model("vit", seed=config.seed)  # every process builds it together


def preflight(argv) -> MultilevelRun:
    """Everything checked before any weight is loaded: flags, checkpoints (configs only), data,
    labels, classes, the evaluation images. Raises one ``PreflightError`` listing every problem."""
    problems = Problems()
    parsed = script_args, data_args, robustness, config = parse_args(argv, problems)
    repo_id = check_recipe_flags(problems, script_args, robustness, config)
    if script_args is not None:
        problems.check("--probe_label_fraction", check_fraction, script_args.probe_label_fraction)
    raise_before_the_demo_zoo(problems, parsed, script_args and script_args.teacher_name_or_path)
    build_teacher_if_demo(script_args, config)
    teacher_path = script_args.teacher_name_or_path
    student_path = script_args.student_name_or_path or teacher_path
    teacher_config = problems.check("--teacher_name_or_path", read_model_config, teacher_path, "the teacher")
    student_config = (teacher_config if student_path == teacher_path else
                      problems.check("--student_name_or_path", read_model_config, student_path, "the student"))
    flag = "--student_name_or_path" if script_args.student_name_or_path else "--teacher_name_or_path"
    processor = problems.check(flag, read_image_processor, student_path, "the student")
    teacher_processor = problems.check("--teacher_name_or_path", read_image_processor, teacher_path, "the teacher")
    with config.main_process_first(desc="loading the dataset"):
        data = load_recipe_data(data_args, problems, labels_train=config.ce_weight > 0)
    check_streaming(problems, data, config, {"--cache_teacher": config.cache_teacher,
                                             "--linear_probe": script_args.linear_probe})
    _check_models(problems, config, data, student_config, teacher_config)
    check_card_possible(data, data is not None and data.scored and student_config is not None, repo_id, problems)
    if processor is not None and data is not None:
        decode_evaluation_split(data, ImageResizer(processor), robustness, config.max_bad_image_fraction, problems)
    problems.raise_if_any()
    return MultilevelRun(script_args, data_args, robustness, config, data, repo_id, processor,
                         teacher_processor=teacher_processor)


def _check_models(problems: Problems, config, data: RecipeData | None, student_config, teacher_config) -> None:
    """The two models against the loss terms, the data's classes and the checkpoint to resume."""
    if student_config is not None and teacher_config is not None:
        problems.check("--student_name_or_path / --teacher_name_or_path", check_feature_terms, student_config,
                       teacher_config, config)
    if student_config is not None:
        problems.check("--drop_path_rate", check_drop_path, student_config, config.drop_path_rate)
    if config.resume_from_checkpoint and student_config is not None and data is not None and data.names:
        problems.check("--resume_from_checkpoint", check_resume_matches, config.resume_from_checkpoint,
                       student_config, len(data.names))
    if teacher_config is not None and data is not None and config.kd_weight > 0:
        if match_classes(config_classes(teacher_config), data.names) == DIFFERENT:
            problems.add("--kd_weight", "logit distillation needs a teacher of the dataset's classes, and the teacher "
                                        "predicts others: set --kd_weight 0, or use a teacher fine-tuned on them")


def load_models(run: MultilevelRun):
    """(teacher, student): the teacher whole on every process, its head fitted to the data's classes
    where it has them; the student with a head for them (a new one when its own predicts others)."""
    with whole_weights():  # every process runs the frozen teacher
        teacher = load_vision_model(run.teacher_path)
    fit_to_classes(teacher, run.data.names, "the teacher")
    config = run.config
    student, head = load_with_head(run.student_path, run.data.names,
                                   **student_load_kwargs(config, read_model_config(run.student_path, "the student")))
    if head == "new":
        how = ("it is trained with cross-entropy on detached features (loss_head), so the backbone learns from "
               "distillation only" if not config.logits_read and config.head_ce_weight > 0 and run.data.scored
               else "the KD and CE terms train it")
        logger.warning("the student's head predicts other classes than the dataset's: starting a new head; %s", how)
    return teacher, student


def finish(run: MultilevelRun, trainer) -> dict:
    """After training: the teacher's and the student's robustness reports, every process scoring its
    share; on the main process the table (clean, each distortion, the linear probe), the card and the push."""
    results = {"trainer": trainer}
    config, data = run.config, run.data
    student_pixels = PixelPreprocessor.from_image_processor(run.processor)
    student = PixelSpaceClassifier(trainer.saved_student(config.output_dir).eval(), student_pixels)
    eval_set = run.prepared(data.evaluation)
    columns = [str(e) for e in parse_distortions(run.script_args.eval_distortions or config.distortions)
               if e.name != "clean"]  # the table's first column is clean already
    end = RunEnd(config, run.robustness, run.data_args, data, eval_set, run.resizer, columns,
                 run.teacher_path, teacher=_scoring_teacher(run, trainer), repo_id=run.repo_id,
                 skipped_training_images=len(trainer.bad_images))
    if run.script_args.linear_probe and data.scored and trainer.is_world_process_zero():
        end.extra_rows = linear_probe_rows(student.model, student_pixels, run.prepared(data.train), eval_set, columns,
                                           run.script_args.probe_label_fraction, config.seed)
    scored = data.scored and is_image_classifier(student.model)  # a student head for the data's classes
    return {**results, **finish_run(end, [FinishedStudent("student", student, config.output_dir, run.student_path,
                                                          "multilevel", config)], scored=scored)}


def _scoring_teacher(run: MultilevelRun, trainer):
    """The teacher as a classifier of [0, 1] pixels when it predicts the data's classes, else ``None``
    (it then only gave features); a whole copy where its forward needs every process."""
    teacher = trainer.teacher.model
    if trainer.teacher.is_sharded:
        with whole_weights():
            teacher = load_vision_model(run.teacher_path).to(run.config.device).eval()
    if fit_to_classes(teacher, run.data.names, "the teacher") == DIFFERENT:
        return None
    return PixelSpaceClassifier(teacher, PixelPreprocessor.from_image_processor(run.teacher_processor))


def linear_probe_rows(student, preprocessor, train, test, columns, fraction, seed) -> dict:
    """Linear probe on frozen [CLS] features of distorted training images, scored per column."""
    spec = ",".join(columns)
    features, labels = cls_features(student, preprocessor, train, view=spec, seed=seed)
    probe = fit_linear_probe(features, labels, fraction=fraction, seed=seed)
    row = {}
    for column in ["clean", *columns]:
        x, y = cls_features(student, preprocessor, test, view=None if column == "clean" else column, seed=seed)
        row[column] = float((probe.predict(x) == y).mean())
    return {f"student, linear probe ({fraction:.0%} labels)": row}
