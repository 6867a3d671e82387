"""Checks of the robustness flags before any work: corruption names for a backend, severities,
natural-shift specs."""

from __future__ import annotations

from collections.abc import Sequence

from ..data.datasets import check_dataset_reachable
from ..utils.problems import CHECK_ERRORS, _message, did_you_mean
from ..views.corruptions import CORRUPTIONS
from .corrupted_sets import resolve_backend
from .natural_shifts import NaturalShift


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
