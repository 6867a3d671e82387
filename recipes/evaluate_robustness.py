"""Robustness report of any image classifier that loads with ``from_pretrained`` (a Hub id or a
folder; a saved ``CLIPZeroShotClassifier`` too): accuracy on clean images and under every
ImageNet-C corruption x severity, corruption errors and mCE, natural shifts; written as
``robustness_report.json`` and ``robustness.png`` in ``--output_dir``.

    accelerate launch recipes/evaluate_robustness.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset_name <imagenet-1k on the Hub> --eval_split validation \\
        --natural_shifts imagenet-r=axiong/imagenet-r:test --output_dir vit-b16-robustness
    python recipes/evaluate_robustness.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset_name <imagenet-1k on the Hub> --eval_split validation --imagenet_c /data/ImageNet-C
    python recipes/evaluate_robustness.py --model_name_or_path my-student --baseline_report teacher/robustness_report.json
    python recipes/evaluate_robustness.py      # the embedded demo: the demo zoo's ViT on the digits

Flags: the fields of ``EvaluateArguments``, ``DataArguments`` and ``RobustnessArguments``. Images are
decoded with the model's own image processor, as ``pipeline("image-classification")`` decodes them. On
ImageNet-1k the corrupted images follow ImageNet-C's own pipeline (``--corruption_protocol imagenet-c``)
or are the released ones (``--imagenet_c``); under ``accelerate launch`` every process scores its share.
"""

import logging

from hf_robust_distill.cli import run_recipe
from hf_robust_distill.cli.evaluate import (DEMO_DEFAULTS, EvaluateArguments, evaluate, load_classifier, preflight,
                                            write_report)

__all__ = ["DEMO_DEFAULTS", "EvaluateArguments", "main", "preflight"]


def main(argv: list[str] | None = None):
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    # 1. parse, and check flags, the model's files, the data and its evaluation images
    run = preflight(argv)
    # 2. build the classifier
    classifier = load_classifier(run)
    # 3. evaluate it, clean and under every corruption, severity and shift
    report = evaluate(run, classifier)
    # 4. finish: the report, its plot, the card beside the model's files, the table
    write_report(run, report, classifier)
    return report


if __name__ == "__main__":
    run_recipe(main)
