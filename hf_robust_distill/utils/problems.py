"""Problems gathered before any work, each under the flag it comes from, raised together as one
``PreflightError``. The checks are pure functions that raise ``ValueError``; ``Problems.check``
turns each failure into a listed problem."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

CHECK_ERRORS = (ValueError, TypeError, KeyError, OSError, ImportError)


WORK = {"training": "trained", "evaluation": "evaluated"}


class PreflightError(ValueError):
    """The problems a run found before its work (training, or an evaluation); nothing was done or written."""

    def __init__(self, problems: list[tuple[str, str]], work: str = "training"):
        self.problems = list(problems)
        lines = [f"  {i}. {where}: {message}" for i, (where, message) in enumerate(self.problems, 1)]
        count = f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}"
        super().__init__(f"{count} found before {work} (nothing was {WORK[work]} or written):\n" + "\n".join(lines))


class Problems:
    """Problems found so far, each with where it comes from (a flag, a file, a split)."""

    def __init__(self, work: str = "training"):
        self.found: list[tuple[str, str]] = []
        self.work = work  # what the run does once nothing is wrong: "training" or "evaluation"

    def __bool__(self) -> bool:
        return bool(self.found)

    def __len__(self) -> int:
        return len(self.found)

    def add(self, where: str, message: str) -> None:
        self.found.append((where, message))

    def check(self, where: str, function: Callable, *args, **kwargs):
        """``function(*args, **kwargs)``, or ``None`` with the failure listed under ``where``."""
        try:
            return function(*args, **kwargs)
        except PreflightError as error:
            self.found.extend(error.problems)
        except CHECK_ERRORS as error:
            self.add(where, _message(error))
        return None

    def raise_if_any(self) -> None:
        if self.found:
            raise PreflightError(self.found, self.work)


def _message(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return text.strip() or type(error).__name__


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_choice(value: str, choices: Sequence[str]) -> None:
    if str(value).lower() not in choices:
        raise ValueError(f"one of {', '.join(choices)}, got {value!r}{did_you_mean(str(value), choices)}")


def check_fraction(value: float, allow_zero: bool = False) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        raise ValueError(f"a fraction in {'[0, 1]' if allow_zero else '(0, 1]'}, got {value}")
