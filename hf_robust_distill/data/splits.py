"""Which images train and which evaluate: one rule for the training recipes and the evaluation alike.
The named split; else the first labelled validation/test split; else ``HELD_OUT`` of the training
split, held out with ``SPLIT_SEED``. ``SplitSource`` records which, for the report and the card."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from datasets import Dataset, DatasetDict

from .datasets import SPLIT_SEED, UNLABELLED, find_columns, unlabelled_rows

logger = logging.getLogger(__name__)

EVAL_SPLIT_NAMES = ("validation", "valid", "val", "test")
HELD_OUT = 0.1
"""The share of the training split held out for evaluation when a dataset has no evaluation split."""


@dataclass(frozen=True)
class SplitSource:
    """Where evaluation images come from: split ``name``; ``held_out``, the share of it held out
    (a dataset without an evaluation split); ``seed``, the seed that drew them (held out, or the
    demo digits' test split), ``None`` where nothing was drawn."""

    name: str | None
    held_out: float | None = None
    seed: int | None = None

    def describe(self) -> str:
        """E.g. "10% of its train split, held out with split seed 42", "test split"."""
        if self.held_out is not None:
            return f"{self.held_out:.0%} of its {self.name} split, held out with split seed {self.seed}"
        drawn = f", drawn with split seed {self.seed}" if self.seed is not None else ""
        return f"{self.name} split{drawn}" if self.name else f"drawn with split seed {self.seed}" if drawn else ""


def choose_splits(dataset: DatasetDict, train_split: str = "train", eval_split: str | None = None,
                  seed: int = SPLIT_SEED, label_column: str | None = None, evaluation_only: bool = False,
                  held_out: float = HELD_OUT) -> tuple[Dataset | None, Dataset, SplitSource]:
    """(training split, evaluation split, where the evaluation images come from) by the one rule.
    ``evaluation_only``: an evaluation, which needs no training split: it scores the images the
    training recipes evaluate on (the same held-out share with the same seed), or the dataset's only
    split when it has no ``train_split``."""
    has_train = train_split in dataset
    if not has_train and not evaluation_only:
        raise ValueError(f"no split {train_split!r} in the dataset; it has {list(dataset)}: pass --train_split")
    train = dataset[train_split] if has_train else None
    if eval_split is not None:
        return train, _named_split(dataset, eval_split), SplitSource(eval_split)
    name = _first_labelled_split(dataset, label_column, besides=train_split)
    if name is not None:
        return train, dataset[name], SplitSource(name)
    if has_train:
        parts = dataset[train_split].train_test_split(test_size=held_out, seed=seed)
        if evaluation_only:
            logger.warning("evaluating on the %.0f%% of the %r split the training recipes hold out (split seed %d); "
                           "--eval_split %s scores the whole split", 100 * held_out, train_split, seed, train_split)
        return parts["train"], parts["test"], SplitSource(train_split, held_out, seed)
    if len(dataset) == 1:
        name = next(iter(dataset))
        return None, dataset[name], SplitSource(name)
    raise ValueError(f"none of the dataset's splits {list(dataset)} is a labelled {'/'.join(EVAL_SPLIT_NAMES)} "
                     "split: name the one to evaluate with --eval_split")


def split_train_eval(dataset: DatasetDict, train_split: str = "train", eval_split: str | None = None,
                     eval_fraction: float = HELD_OUT, seed: int = SPLIT_SEED,
                     label_column: str | None = None) -> tuple[Dataset, Dataset]:
    """The training split and an evaluation split: the named one, the first of the usual names
    whose images are labelled (an unlabelled ``test`` split, labels all -1, is passed over), or a
    held-out ``eval_fraction`` of the training split, drawn with ``seed`` (the recipes' rule)."""
    train, evaluation, _ = choose_splits(dataset, train_split, eval_split, seed, label_column, held_out=eval_fraction)
    return train, evaluation


def _named_split(dataset: DatasetDict, name: str) -> Dataset:
    if name not in dataset:
        raise ValueError(f"no split {name!r} in the dataset; it has {list(dataset)}: pass --eval_split")
    return dataset[name]


def _first_labelled_split(dataset: DatasetDict, label_column: str | None, besides: str | None = None) -> str | None:
    """The first of the usual evaluation splits whose images are labelled (an unlabelled ``test``
    split, labels all -1, is passed over), or ``None``."""
    for name in EVAL_SPLIT_NAMES:
        if name in dataset and name != besides:
            column = find_columns(dataset[name], label_column=label_column)[1]
            if column is not None and unlabelled_rows(dataset[name], column) == len(dataset[name]):
                logger.warning("the %r split is unlabelled (every label is %d): not evaluating on it", name,
                               UNLABELLED)
                continue
            return name
    return None
