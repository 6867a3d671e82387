# Copyright 2026 The hf_robust_distill Authors. Licensed under the Apache License, Version 2.0.
"""Corruption robustness: an accuracy grid (corruption x severity) in, corruption errors and mCE out.

This file is self-contained (NumPy, ``datasets``, ``evaluate``) so that it can be published as a
Hub metric as it is; ``hf_robust_distill`` imports its functions, so the package's reports and
the metric compute the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import datasets
import evaluate
import numpy as np

IMAGENET_C_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
"""The 15 corruptions mCE averages over (Hendrycks & Dietterich, 2019)."""

ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640, "defocus_blur": 0.819880,
    "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572,
    "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
"""AlexNet's top-1 error on ImageNet-C, averaged over severities 1-5: the normaliser of mCE."""

SEVERITIES = (1, 2, 3, 4, 5)


def accuracy_grid(corruptions: Iterable[str], severities: Iterable[int], accuracies: Iterable[float]
                  ) -> dict[str, dict[int, float]]:
    """Rows (corruption, severity, accuracy) as {corruption: {severity: accuracy}}; a repeated
    cell, a severity outside 1-5 or an accuracy outside [0, 1] is an error."""
    grid: dict[str, dict[int, float]] = {}
    for corruption, severity, accuracy in zip(corruptions, severities, accuracies, strict=True):
        severity, accuracy = int(severity), float(accuracy)
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be 1-5, got {severity} for {corruption}")
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracies are fractions in [0, 1], got {accuracy} for {corruption} at {severity}")
        if severity in grid.setdefault(corruption, {}):
            raise ValueError(f"{corruption} at severity {severity} is given twice")
        grid[corruption][severity] = accuracy
    return grid


def mean_errors(grid: Mapping[str, Mapping[int, float]]) -> dict[str, float]:
    """Each corruption's top-1 error averaged over its severities."""
    return {c: float(np.mean([1.0 - a for a in by_severity.values()])) for c, by_severity in grid.items()}


def corruption_errors(errors: Mapping[str, float], baseline_errors: Mapping[str, float]) -> dict[str, float]:
    """CE_c = sum_s E_{s,c} / sum_s E^baseline_{s,c}, in %, from errors averaged over the same
    severities. Corruptions the baseline lacks are left out; one it never errs on has no CE (NaN)."""
    return {c: 100.0 * e / baseline_errors[c] if baseline_errors[c] > 0 else float("nan")
            for c, e in errors.items() if c in baseline_errors}


def relative_corruption_errors(errors: Mapping[str, float], clean_error: float,
                               baseline_errors: Mapping[str, float], baseline_clean_error: float) -> dict[str, float]:
    """Relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^b_{s,c} - E^b_clean), in %: how much
    accuracy a corruption takes away, against how much it takes from the baseline."""
    out = {}
    for c, e in errors.items():
        if c in baseline_errors:
            drop = baseline_errors[c] - baseline_clean_error
            out[c] = 100.0 * (e - clean_error) / drop if drop > 0 else float("nan")
    return out


def mean_over(values: Mapping[str, float], corruptions: Iterable[str] | None = None) -> float | None:
    """The mean of ``values`` over ``corruptions`` (all of them when ``None``); ``None`` when
    some are missing."""
    names = list(values) if corruptions is None else list(corruptions)
    if not names or any(c not in values for c in names):
        return None
    return float(np.mean([values[c] for c in names]))


def summarize(grid: Mapping[str, Mapping[int, float]], clean_accuracy: float | None = None,
              baseline: str | Mapping | None = "alexnet") -> dict:
    """Mean corrupted accuracy, CE per corruption and mCE against ``baseline`` (``"alexnet"``,
    or another model's ``{"grid": ..., "clean_accuracy": ...}``), and relative CE/mCE when both
    clean accuracies are known. mCE averages over the 15 ImageNet-C corruptions when all are in
    the grid, otherwise over those that are (and ``mce_corruptions`` says which)."""
    errors = mean_errors(grid)
    out: dict = {"mean_corrupted_accuracy": float(np.mean([a for row in grid.values() for a in row.values()]))
                 if grid else None}
    if baseline is None:
        return out
    if isinstance(baseline, str):
        if baseline.lower() != "alexnet":
            raise ValueError(f"unknown baseline {baseline!r}: 'alexnet' or a baseline model's accuracy grid")
        incomplete = [c for c, row in grid.items() if c in ALEXNET_ERRORS and sorted(row) != list(SEVERITIES)]
        if incomplete:
            raise ValueError(f"AlexNet's errors are averages over severities 1-5; evaluate all five for {incomplete}")
        baseline_errors, baseline_clean_error = ALEXNET_ERRORS, None
    else:
        base_grid = baseline["grid"]
        mismatched = [c for c in grid if c in base_grid and sorted(base_grid[c]) != sorted(grid[c])]
        if mismatched:
            raise ValueError(f"the baseline was evaluated at other severities for {mismatched}")
        baseline_errors = mean_errors(base_grid)
        base_clean = baseline.get("clean_accuracy")
        baseline_clean_error = None if base_clean is None else 1.0 - float(base_clean)
    ce = corruption_errors(errors, baseline_errors)
    covered = [c for c in IMAGENET_C_CORRUPTIONS if c in ce]
    mce_corruptions = list(IMAGENET_C_CORRUPTIONS) if len(covered) == len(IMAGENET_C_CORRUPTIONS) else list(ce)
    out.update(corruption_errors=ce, mce=mean_over(ce, mce_corruptions), mce_corruptions=mce_corruptions)
    if clean_accuracy is not None and baseline_clean_error is not None:
        relative = relative_corruption_errors(errors, 1.0 - float(clean_accuracy), baseline_errors,
                                              baseline_clean_error)
        out.update(relative_corruption_errors=relative, relative_mce=mean_over(relative, mce_corruptions))
    return out


_DESCRIPTION = """\
Corruption robustness of an image classifier from its top-1 accuracy on corrupted images, one
row per (corruption, severity): the mean corrupted accuracy, the corruption error of each
corruption CE_c = sum_s E_{s,c} / sum_s E^baseline_{s,c} and their mean, mCE (Hendrycks &
Dietterich, 2019). The baseline is AlexNet's published ImageNet-C errors (for ImageNet-scale
evaluations) or another model's accuracy grid on the same data. With clean accuracies it also
gives the relative CE and relative mCE, which count only the accuracy a corruption takes away.
"""

_KWARGS_DESCRIPTION = """
Args:
    corruption (`list` of `str`): the corruption of each row, e.g. "gaussian_noise".
    severity (`list` of `int`): its severity, 1-5.
    accuracy (`list` of `float`): top-1 accuracy in [0, 1] on that corruption and severity.
    clean_accuracy (`float`, *optional*): top-1 accuracy on the clean images.
    baseline (`str` or `dict`, defaults to `"alexnet"`): "alexnet", `None` (accuracies only), or a
        baseline model's rows: {"corruption": [...], "severity": [...], "accuracy": [...],
        "clean_accuracy": float (optional)}.
Returns:
    mean_corrupted_accuracy (`float`): mean accuracy over all rows.
    corruption_errors (`dict`): CE per corruption, in %.
    mce (`float`): mean CE over the 15 ImageNet-C corruptions (over the given ones when some are missing), in %.
    mce_corruptions (`list`): the corruptions mCE averages over.
    relative_corruption_errors, relative_mce: the clean-subtracted versions, when clean accuracies are known.
Examples:
    >>> metric = evaluate.load("path/to/corruption_robustness")
    >>> metric.compute(corruption=["gaussian_noise"] * 5, severity=[1, 2, 3, 4, 5],
    ...                accuracy=[0.6, 0.5, 0.4, 0.3, 0.2])["mce"]  # doctest: +ELLIPSIS
    67.68...
"""

_CITATION = """\
@inproceedings{hendrycks2019benchmarking,
  title={Benchmarking Neural Network Robustness to Common Corruptions and Perturbations},
  author={Dan Hendrycks and Thomas Dietterich},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CorruptionRobustness(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"corruption": datasets.Value("string"), "severity": datasets.Value("int32"),
                                        "accuracy": datasets.Value("float64")}),
            reference_urls=["https://github.com/hendrycks/robustness", "https://arxiv.org/abs/1903.12261"],
        )

    def _compute(self, corruption, severity, accuracy, clean_accuracy=None, baseline="alexnet"):
        grid = accuracy_grid(corruption, severity, accuracy)
        if isinstance(baseline, Mapping) and "grid" not in baseline:
            baseline = {"grid": accuracy_grid(baseline["corruption"], baseline["severity"], baseline["accuracy"]),
                        "clean_accuracy": baseline.get("clean_accuracy")}
        return summarize(grid, clean_accuracy, baseline)
