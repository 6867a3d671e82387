"""Robustness report of any image classifier that loads with ``from_pretrained`` (a Hub id or a
folder; a saved ``CLIPZeroShotClassifier`` too): accuracy on clean images and under every
ImageNet-C corruption x severity, corruption errors and mCE, natural shifts; written as
``robustness_report.json`` and ``robustness.png`` in ``--output_dir``.

    python recipes/evaluate_robustness.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset_name <imagenet-1k on the Hub> --eval_split validation --robustness_baseline alexnet \\
        --robustness_backend auto --robustness_num_workers 8 \\
        --natural_shifts imagenet-r=axiong/imagenet-r:test --output_dir vit-b16-robustness
    python recipes/evaluate_robustness.py --model_name_or_path my-student --baseline_report teacher/robustness_report.json
    python recipes/evaluate_robustness.py      # the embedded demo: the demo zoo's ViT on the digits

Flags: the fields of ``EvaluateArguments``, ``DataArguments`` and ``RobustnessArguments``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from hf_robust_distill import RobustnessReport, evaluate_robustness
from hf_robust_distill.cli import DataArguments, RobustnessArguments, load_splits, parse_recipe_args
from hf_robust_distill.teachers import load_pixel_classifier


@dataclass
class EvaluateArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Image classifier (Hub id or folder). Unset: the embedded demo."})
    baseline_report: str | None = field(
        default=None, metadata={"help": "A baseline model's robustness_report.json: mCE relative to it."})
    output_dir: str = field(default="robustness", metadata={"help": "Where the report and the plot go."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available."})
    seed: int = field(default=0, metadata={"help": "Seed of the corrupted sets."})


DEMO_DEFAULTS = dict(output_dir="demo_output/evaluate", corruption_cache_dir="demo_output/corrupted",
                     robustness_baseline="none")


def main(argv: list[str] | None = None) -> RobustnessReport:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args, data_args, robustness = parse_recipe_args((EvaluateArguments, DataArguments, RobustnessArguments), argv,
                                                    demo_defaults=DEMO_DEFAULTS, demo_unless="model_name_or_path")
    if not args.model_name_or_path:
        from hf_robust_distill.demo import demo_model

        args.model_name_or_path = demo_model("vit", seed=args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _, evaluation = load_splits(data_args, seed=args.seed)
    if args.baseline_report:
        baseline = RobustnessReport.load(args.baseline_report)
    elif robustness.robustness_baseline.lower() in ("alexnet", "none"):
        baseline = None if robustness.robustness_baseline.lower() == "none" else "alexnet"
    else:
        raise ValueError("evaluate_robustness.py has no teacher: give --baseline_report, or --robustness_baseline alexnet or none")

    classifier = load_pixel_classifier(args.model_name_or_path).to(device)
    report = evaluate_robustness(
        classifier, evaluation, **robustness.evaluation_kwargs(), baseline=baseline, seed=args.seed, device=device,
        model_name=args.model_name_or_path, dataset_name=data_args.dataset_name or "sklearn-digits",
        split=data_args.eval_split, image_column=data_args.image_column, label_column=data_args.label_column)
    os.makedirs(args.output_dir, exist_ok=True)
    report_path = report.save(args.output_dir)
    report.plot(args.output_dir)
    print(f"\nTop-1 accuracy (%) of {report.model_name} on {report.dataset_name}:\n\n{report.to_markdown()}\n")
    for name, value in report.headline().items():
        print(f"{name}: {value:.2f}")
    print(f"\nReport: {os.path.abspath(report_path)}\nPlot: {os.path.abspath(os.path.join(args.output_dir, 'robustness.png'))}")
    return report


if __name__ == "__main__":
    main()
