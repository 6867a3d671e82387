"""What ``recipes/evaluate_robustness.py`` runs: its arguments, the checks before any weight is read,
the classifier it loads, the report and its plot."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from accelerate import PartialState

from ..data.digest import images_digest
from ..data.imagenet_classes import is_imagenet_1k
from ..data.images import ImageResizer
from ..evaluation.checks import check_alexnet_severities, check_same_images, parse_severities
from ..evaluation.protocols import resolve_protocol
from ..evaluation.report import RobustnessReport
from ..evaluation.robustness import evaluate_robustness
from ..convert.record import ConversionRecord
from ..hub.card import plain_name, write_student_card
from ..models.heads import DIFFERENT, describe_difference, fit_to_classes, is_image_classifier, match_classes
from ..models.loading import config_classes, read_image_processor, read_model_config, save_image_processor
from ..models.zero_shot import load_pixel_classifier, saved_head_classes
from ..training.checks import check_output_dir
from ..utils.problems import Problems
from .arguments import DataArguments, RobustnessArguments
from .finish import dataset_label, model_architecture, runs_timm
from .parsing import parse_recipe_args
from .preflight import decode_evaluation_split
from .recipe_data import RecipeData, load_recipe_data

logger = logging.getLogger("evaluate_robustness")


@dataclass
class EvaluateArguments:
    _argument_group_name = "the model and the report"

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Image classifier (Hub id or folder). Unset: the embedded demo."})
    baseline_report: str | None = field(
        default=None, metadata={"help": "A baseline model's robustness_report.json: mCE relative to it."})
    output_dir: str = field(default="robustness", metadata={
        "help": "Where the report, its plot and the model card go, with the model's weights and processor beside "
                "them, ready for python -m hf_robust_distill.hub."})
    device: str | None = field(default=None, metadata={"help": "Default: this process's accelerator when there is "
                                                                 "one (under accelerate launch, each its own)."})
    seed: int = field(
        default=42, metadata={"help": "Seed of the corrupted sets: the training recipes draw theirs with their --seed "
                                      "(42 by default), so a student's card is reproduced with the same."})
    max_bad_image_fraction: float = field(
        default=0.01, metadata={"help": "Images that fail to decode are left out; more than this share stops the run."})


DESCRIPTION = ("Robustness report of an image classifier: accuracy on clean images and under every ImageNet-C "
               "corruption and severity, mCE, calibration, natural shifts. Without --model_name_or_path: the "
               "embedded demo's ViT on the digits.")
EVALUATION_DEFAULTS = dict(robustness_baseline="auto")
"""mCE against AlexNet on ImageNet-1k's classes (the published baseline), and no mCE elsewhere unless
a baseline is given (``--robustness_baseline alexnet`` or ``--baseline_report``)."""
DEMO_DEFAULTS = dict(output_dir="demo_output/evaluate", corruption_cache_dir="demo_output/corrupted")
BASELINES = ("auto", "alexnet", "none", "teacher")


def model_classes(path: str) -> list[str] | None:
    """The classes a checkpoint predicts, read from its files (no weights)."""
    saved = saved_head_classes(path) if os.path.isdir(path) else None
    return saved if saved is not None else config_classes(read_model_config(path, "the model"))


@dataclass
class EvaluationRun:
    args: EvaluateArguments
    data_args: DataArguments
    robustness: RobustnessArguments
    data: RecipeData
    processor: object

    @property
    def device(self) -> torch.device:
        """``--device``, else this process's accelerator (``accelerate launch`` gives each its own)."""
        return torch.device(self.args.device) if self.args.device else PartialState().device


def load_classifier(run: EvaluationRun) -> torch.nn.Module:
    """The model as a classifier of [0, 1] pixels, its outputs in the dataset's class order."""
    classifier = load_pixel_classifier(run.args.model_name_or_path).to(run.device)
    fit_to_classes(classifier, run.data.names)
    return classifier


def mce_baseline(run: EvaluationRun):
    """What mCE is normalised by: another model's report, AlexNet, or nothing (``None``: no mCE)."""
    if run.args.baseline_report:
        return RobustnessReport.load(run.args.baseline_report)
    choice = run.robustness.robustness_baseline.lower()
    if choice == "auto":
        return "alexnet" if is_imagenet_1k(run.data.names) else None
    return None if choice == "none" else "alexnet"


def evaluate(run: EvaluationRun, classifier) -> RobustnessReport:
    """The robustness report of ``classifier`` on the run's evaluation split."""
    args, robustness, data = run.args, run.robustness, run.data
    if PartialState().is_main_process:
        logger.info("the report and its plot go into %s (--output_dir)", os.path.abspath(args.output_dir))
    return evaluate_robustness(
        classifier, data.evaluation, **robustness.evaluation_kwargs(), decode_with=ImageResizer(run.processor),
        baseline=mce_baseline(run), seed=args.seed, device=run.device, model_name=plain_name(args.model_name_or_path),
        dataset_name=dataset_label(run.data_args.dataset_name), split=run.data.split_source,
        image_column=data.image_column, label_column=data.label_column)


def write_report(run: EvaluationRun, report: RobustnessReport, classifier=None) -> None:
    """On the main process: the report, its plot and a model card in ``--output_dir`` (with the
    model's weights, processor and conversion record beside them, ready for
    ``python -m hf_robust_distill.hub``), and the table printed."""
    if not PartialState().is_main_process:
        return
    output_dir = run.args.output_dir
    os.makedirs(output_dir, exist_ok=True)
    record = copy_model(run, classifier) if classifier is not None else None
    paths = write_student_card(
        output_dir, report, method="evaluated", teacher=None, train_dataset=dataset_label(run.data_args.dataset_name),
        settings={}, model_name=report.model_name, student_init=run.args.model_name_or_path,
        architecture=model_architecture(classifier) if classifier is not None else None,
        license=run.robustness.card_license, conversion=record.summary() if record else None,
        timm=runs_timm(classifier, run.processor) if classifier is not None else None)
    print(f"\nTop-1 accuracy (%) of {report.model_name} on {report.dataset_name}:\n\n{report.to_markdown()}\n")
    for name, value in report.headline().items():
        print(f"{name}: {value:.2f}")
    if report.skipped_images:
        print(f"{report.skipped_images} images did not decode and were left out")
    print(f"\nReport: {os.path.abspath(paths['report'])}\nPlot: {os.path.abspath(paths['plot'])}\n"
          f"Card: {os.path.abspath(paths['card'])}")


def copy_model(run: EvaluationRun, classifier) -> ConversionRecord | None:
    """The evaluated model's weights (its head in the report's class order), processor and
    ``conversion.json`` written beside the card, unless it already lies in ``--output_dir``;
    returns its conversion record (``None``: it was not converted)."""
    source, output_dir = run.args.model_name_or_path, run.args.output_dir
    record = ConversionRecord.load(source) if os.path.isdir(source) else None
    model = getattr(classifier, "model", classifier)
    if not is_image_classifier(model):
        logger.info("%s is no transformers image classifier: the card goes without weights", type(model).__name__)
        return record
    if os.path.isdir(source) and os.path.samefile(source, output_dir):
        return record
    model.save_pretrained(output_dir)
    save_image_processor(run.processor, output_dir, model)
    if record is not None:
        record.save(output_dir)
    return record


def _check_baseline_images(baseline: RobustnessReport, data: RecipeData, seed: int, robustness) -> None:
    """The baseline report scored these images, corrupted alike (before any image is decoded)."""
    protocol = resolve_protocol(robustness.corruption_protocol, is_imagenet_1k(data.names),
                                released=robustness.imagenet_c is not None)
    check_same_images(baseline, images_digest(data.evaluation, data.image_column, data.label_column), seed, protocol)


def _check_auto_baseline(names: list[str], severities: str) -> None:
    """``--robustness_baseline auto`` is AlexNet on ImageNet-1k's classes, whose errors need every severity."""
    try:
        parsed = parse_severities(severities)
    except ValueError:
        return  # listed under its flag already
    check_alexnet_severities("alexnet" if is_imagenet_1k(names) else None, parsed)


def preflight(argv) -> EvaluationRun:
    """Flags, the model's classes and processor (no weights), the data and its evaluation images,
    checked together; one ``PreflightError`` lists every problem."""
    problems = Problems(work="evaluation")
    args, data_args, robustness = parse_recipe_args((EvaluateArguments, DataArguments, RobustnessArguments), argv,
                                                    defaults=EVALUATION_DEFAULTS, demo_defaults=DEMO_DEFAULTS,
                                                    demo_unless="model_name_or_path", problems=problems,
                                                    description=DESCRIPTION)
    if robustness is not None:
        robustness.check(problems, baselines=BASELINES)
        if robustness.robustness_baseline.lower() == "teacher" and not (args and args.baseline_report):
            problems.add("--robustness_baseline", "an evaluation has no teacher: give the baseline model's report with "
                                                  "--baseline_report, or --robustness_baseline auto, alexnet or none")
    if args is not None:
        problems.check("--output_dir", check_output_dir, args.output_dir)
    baseline = None
    if args is not None and args.baseline_report:
        baseline = problems.check("--baseline_report", RobustnessReport.load, args.baseline_report)
    if None in (args, data_args, robustness) or (not args.model_name_or_path and problems):
        problems.raise_if_any()
    if not args.model_name_or_path:
        from .demo import demo_model

        args.model_name_or_path = demo_model("vit", seed=args.seed)
    classes = problems.check("--model_name_or_path", model_classes, args.model_name_or_path)
    processor = problems.check("--model_name_or_path", read_image_processor, args.model_name_or_path, "the model")
    if robustness.imagenet_c and not data_args.dataset_name:  # never the demo digits beside named data
        problems.add("--dataset_name", "--imagenet_c names the released corrupted images; their clean images are "
                                       "ImageNet's validation split, which the report scores beside them: give it "
                                       "(--dataset_name <ImageNet-1k> --eval_split validation)")
        problems.raise_if_any()
    data = load_recipe_data(data_args, problems, evaluation_only=True)
    if data is not None and data.scored and not args.baseline_report and robustness.robustness_baseline == "auto":
        problems.check("--robustness_severities", _check_auto_baseline, data.names, robustness.robustness_severities)
    if data is not None and not data.scored:
        problems.add("--dataset_name", "a robustness report needs labels of at least two classes")
    elif data is not None and classes is not None and match_classes(classes, data.names) == DIFFERENT:
        if len(classes) == len(data.names) and not data.named:
            logger.warning("the labels have no names: reading them as the model's class indices")
        else:
            problems.add("--model_name_or_path", f"the model does not predict the dataset's classes: "
                                                 f"{describe_difference(classes, data.names)}")
    if data is not None and data.scored and args.baseline_report and baseline is not None:
        problems.check("--baseline_report", _check_baseline_images, baseline, data, args.seed, robustness)
    if processor is not None and data is not None and data.scored:
        decode_evaluation_split(data, ImageResizer(processor), robustness, args.max_bad_image_fraction, problems)
    problems.raise_if_any()
    return EvaluationRun(args, data_args, robustness, data, processor)
