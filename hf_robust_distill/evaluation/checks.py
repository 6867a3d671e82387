"""Checks of the robustness flags before any work: corruption names for a backend, severities,
natural-shift specs."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..data.datasets import check_dataset_reachable
from ..utils.problems import CHECK_ERRORS, _message, did_you_mean
from ..views.corruptions import CORRUPTIONS
from .corrupted_sets import resolve_backend
from .natural_shifts import NaturalShift

logger = logging.getLogger(__name__)


def check_corruptions(names: Sequence[str], backend: str) -> None:
    """Every name is an ImageNet-C corruption the backend makes."""

    problems = [f"unknown corruption {n!r}{did_you_mean(n, CORRUPTIONS)}" for n in names
                if n not in CORRUPTIONS]
    if problems:
        problems[-1] += f" (the corruptions: {', '.join(CORRUPTIONS)})"
    for name in (n for n in names if n in CORRUPTIONS):
        try:
            resolve_backend(name, backend)
        except (ValueError, ImportError) as error:
            problems.append(str(error))
    if problems:
        raise ValueError("; ".join(problems))


def parse_severities(text: str) -> list[int]:
    values = [s.strip() for s in str(text).split(",") if s.strip()]
    if not values or not all(v.isdigit() and 1 <= int(v) <= 5 for v in values):
        raise ValueError(f"severities are integers from 1 to 5, comma-separated (e.g. 1,2,3,4,5), got {text!r}")
    return [int(v) for v in values]


def check_alexnet_severities(baseline, severities: Sequence[int]) -> None:
    """An mCE against AlexNet needs every severity 1-5: its published errors average over all five."""
    if isinstance(baseline, str) and baseline.lower() == "alexnet" and sorted(set(severities)) != [1, 2, 3, 4, 5]:
        raise ValueError(f"an mCE against AlexNet needs all five severities (its published errors average over 1-5), "
                         f"got {', '.join(map(str, sorted(set(severities))))}: evaluate severities 1,2,3,4,5, or "
                         "choose another baseline (none: accuracies only)")


def check_natural_shifts(shifts: Sequence[NaturalShift | str]) -> None:
    """Each shift (a ``NaturalShift`` or a ``name=dataset[:split]`` spec) parses, names a known class
    subset, and names a folder that exists or a dataset ``datasets`` can resolve (from its cache when
    offline), without downloading its images."""
    problems = []
    for spec in shifts:
        try:
            shift = NaturalShift.parse(spec) if isinstance(spec, str) else spec
            shift.subset()
            check_dataset_reachable(shift.dataset, shift.config)
        except CHECK_ERRORS as error:
            problems.append(_message(error))
    if problems:
        raise ValueError("; ".join(problems))


def check_same_images(baseline, images_digest: str, seed: int, protocol: str | None = None) -> None:
    """A baseline report (a ``RobustnessReport``) scored the images this evaluation scores: the same
    evaluation images (their digest), corrupted sets drawn with the same seed, by the same protocol.
    Otherwise its mCE and relative mCE would compare errors on other images."""
    if baseline is None or isinstance(baseline, (str, dict)):
        return
    differences = []
    if baseline.images_digest is None:
        logger.warning("the baseline report of %s does not record which images it scored (it was written before "
                       "reports kept their images' digest): its mCE holds only if they are these images",
                       baseline.model_name)
    elif baseline.images_digest != images_digest:
        differences.append(f"other evaluation images ({baseline.dataset_name}, {baseline.split_description}, "
                           f"{baseline.num_examples} images)")
    if baseline.seed != seed:
        differences.append(f"corrupted sets drawn with seed {baseline.seed}, not {seed}")
    if protocol is not None and baseline.protocol != protocol:
        differences.append(f"the {baseline.protocol} protocol, not {protocol}")
    if differences:
        raise ValueError(f"the baseline report of {baseline.model_name} scored {'; '.join(differences)}: its "
                         "errors do not normalise these; evaluate both models on the same images (the same "
                         "--dataset_name, --eval_split, --split_seed, --max_eval_samples, --seed and protocol)")
