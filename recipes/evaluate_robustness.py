"""Robustness report of any image classifier that loads with ``from_pretrained`` (a Hub id or a
folder; a saved ``CLIPZeroShotClassifier`` too): accuracy on clean images and under every
ImageNet-C corruption x severity, corruption errors and mCE, natural shifts; written as
``robustness_report.json`` and ``robustness.png`` in ``--output_dir``.

    python recipes/evaluate_robustness.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset_name <imagenet-1k on the Hub> --eval_split validation --robustness_baseline alexnet \\
        --natural_shifts imagenet-r=axiong/imagenet-r:test --output_dir vit-b16-robustness
    python recipes/evaluate_robustness.py --model_name_or_path my-student --baseline_report teacher/robustness_report.json
    python recipes/evaluate_robustness.py      # the embedded demo: the demo zoo's ViT on the digits

Flags: the fields of ``EvaluateArguments``, ``DataArguments`` and ``RobustnessArguments``. Images are
decoded with the model's own image processor, as ``pipeline("image-classification")`` decodes them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from hf_robust_distill import RobustnessReport, evaluate_robustness
from hf_robust_distill.cli import (DataArguments, RobustnessArguments, dataset_label, decode_evaluation_split,
                                   load_recipe_data, parse_recipe_args, run_recipe)
from hf_robust_distill.data import ImageResizer
from hf_robust_distill.hub import plain_name
from hf_robust_distill.models import (DIFFERENT, config_classes, describe_difference, fit_to_classes,
                                      load_pixel_classifier, match_classes, read_image_processor, read_model_config,
                                      saved_head_classes)
from hf_robust_distill.utils import Problems

logger = logging.getLogger("evaluate_robustness")


@dataclass
class EvaluateArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Image classifier (Hub id or folder). Unset: the embedded demo."})
    baseline_report: str | None = field(
        default=None, metadata={"help": "A baseline model's robustness_report.json: mCE relative to it."})
    output_dir: str = field(default="robustness", metadata={"help": "Where the report and the plot go."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available."})
    seed: int = field(default=0, metadata={"help": "Seed of the corrupted sets."})
    max_bad_image_fraction: float = field(
        default=0.01, metadata={"help": "Images that fail to decode are left out; more than this share stops the run."})


DEMO_DEFAULTS = dict(output_dir="demo_output/evaluate", corruption_cache_dir="demo_output/corrupted",
                     robustness_baseline="none")


def model_classes(path: str) -> list[str] | None:
    """The classes a checkpoint predicts, read from its files (no weights)."""
    saved = saved_head_classes(path) if os.path.isdir(path) else None
    return saved if saved is not None else config_classes(read_model_config(path, "the model"))


def preflight(argv):
    problems = Problems()
    args, data_args, robustness = parse_recipe_args((EvaluateArguments, DataArguments, RobustnessArguments), argv,
                                                    demo_defaults=DEMO_DEFAULTS, demo_unless="model_name_or_path",
                                                    problems=problems)
    if robustness is not None:
        robustness.check(problems, baselines=("alexnet", "none", "teacher"))
        if robustness.robustness_baseline.lower() == "teacher" and not (args and args.baseline_report):
            problems.add("--robustness_baseline", "evaluate_robustness.py has no teacher: give --baseline_report, or "
                                                  "--robustness_baseline alexnet or none")
    if args is not None and args.baseline_report:
        problems.check("--baseline_report", RobustnessReport.load, args.baseline_report)
    if None in (args, data_args, robustness) or (not args.model_name_or_path and problems):
        problems.raise_if_any()
    if not args.model_name_or_path:
        from hf_robust_distill.cli import demo_model

        args.model_name_or_path = demo_model("vit", seed=args.seed)
    classes = problems.check("--model_name_or_path", model_classes, args.model_name_or_path)
    processor = problems.check("--model_name_or_path", read_image_processor, args.model_name_or_path, "the model")
    data = load_recipe_data(data_args, problems, seed=args.seed)
    if data is not None and not data.scored:
        problems.add("--dataset_name", "a robustness report needs labels of at least two classes")
    elif data is not None and classes is not None and match_classes(classes, data.names) == DIFFERENT:
        if len(classes) == len(data.names) and not data.named:
            logger.warning("the labels have no names: reading them as the model's class indices")
        else:
            problems.add("--model_name_or_path", f"the model does not predict the dataset's classes: "
                                                 f"{describe_difference(classes, data.names)}")
    if processor is not None and data is not None and data.scored:
        decode_evaluation_split(data, ImageResizer(processor), robustness, args.max_bad_image_fraction, problems)
    problems.raise_if_any()
    return args, data_args, robustness, data, processor


def main(argv: list[str] | None = None) -> RobustnessReport:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args, data_args, robustness, data, processor = preflight(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.baseline_report:
        baseline = RobustnessReport.load(args.baseline_report)
    else:
        baseline = None if robustness.robustness_baseline.lower() == "none" else "alexnet"
    classifier = load_pixel_classifier(args.model_name_or_path).to(device)
    fit_to_classes(classifier, data.names)
    report = evaluate_robustness(
        classifier, data.evaluation, **robustness.evaluation_kwargs(), decode_with=ImageResizer(processor),
        baseline=baseline, seed=args.seed, device=device, model_name=plain_name(args.model_name_or_path),
        dataset_name=dataset_label(data_args.dataset_name), split=data_args.eval_split,
        image_column=data.image_column, label_column=data.label_column)
    os.makedirs(args.output_dir, exist_ok=True)
    report_path = report.save(args.output_dir)
    report.plot(args.output_dir)
    print(f"\nTop-1 accuracy (%) of {report.model_name} on {report.dataset_name}:\n\n{report.to_markdown()}\n")
    for name, value in report.headline().items():
        print(f"{name}: {value:.2f}")
    if report.skipped_images:
        print(f"{report.skipped_images} images did not decode and were left out")
    plot = os.path.abspath(os.path.join(args.output_dir, "robustness.png"))
    print(f"\nReport: {os.path.abspath(report_path)}\nPlot: {plot}")
    return report


if __name__ == "__main__":
    run_recipe(main)
