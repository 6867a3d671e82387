"""A recipe's data: its splits, their columns and class names, every label checked, and the
evaluation split decoded once before training."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from datasets import Dataset, IterableDataset, IterableDatasetDict, Value

from ..data.datasets import (DEMO_DATASET, check_labels as _check_labels, class_names, encode_string_labels,
                             find_columns, label_values, load_image_dataset, prepare_dataset, read_class_names_file)
from ..data.images import ImageResizer
from ..data.splits import EVAL_SPLIT_NAMES, SplitSource, choose_splits
from ..data.streams import load_stream, prepare_stream, read_whole
from ..utils.problems import Problems
from .arguments import DataArguments

logger = logging.getLogger(__name__)


@dataclass
class RecipeData:
    """A recipe's splits, their columns and their class names (in label order)."""

    train: Dataset
    evaluation: Dataset
    image_column: str
    label_column: str | None
    names: list[str] | None
    named: bool = True  # False: names made up from integer labels ("0", "1", ...)
    unlabelled_because: str | None = None  # why the dataset has no labels
    split_source: SplitSource | None = None  # where the evaluation images come from (the report and card say)

    @property
    def scored(self) -> bool:
        """Whether accuracy can be measured: labels and at least two classes."""
        return self.label_column is not None and self.names is not None and len(self.names) > 1


@dataclass
class RecipeRun:
    """A recipe's run checked before any weight is read: its arguments, data, Hub repo and the
    student's image processor."""

    script_args: object
    data_args: object
    robustness: object
    config: object
    data: RecipeData
    repo_id: str | None
    processor: object

    @property
    def resizer(self) -> ImageResizer:
        return ImageResizer(self.processor)

    def prepared(self, split) -> Dataset:
        """A split as the pipeline reads it: decoded and resized by the student's processor (float pixels)."""
        return prepare_dataset(split, self.resizer, self.data.image_column, self.data.label_column)

    def training_set(self, split):
        """The split the trainer learns from: timm's training transform of each original image when the
        run augments, the processor's path otherwise; 8-bit pixels across the bus either way. A stream
        brings its ``StreamCollator`` as ``.collator`` (the trainer uses it)."""
        if isinstance(split, IterableDataset):
            a = self.data_args
            return prepare_stream(a.dataset_name, a.dataset_config, a.train_split, self.resizer, self.data.image_column,
                                  self.data.label_column, augmentation=self.config.augmentation,
                                  seed=self.config.seed, shuffle_buffer=a.shuffle_buffer, max_rows=a.max_train_samples)
        return prepare_dataset(split, self.resizer, self.data.image_column, self.data.label_column,
                               augmentation=self.config.augmentation, seed=self.config.seed, pixel_dtype=torch.uint8)


def load_recipe_data(data_args: DataArguments, problems: Problems, labels_train: bool = False,
                     evaluation_only: bool = False) -> RecipeData | None:
    """The splits of ``data_args``, with string labels encoded as classes and every label checked
    (``labels_train``: a loss reads the training labels; ``evaluation_only``: an evaluation, which
    reads one split and needs no training split); problems are added, not raised. Training and
    evaluation choose the evaluation images by one rule and ``--split_seed``."""
    if data_args.streaming:
        dataset = problems.check("--streaming", load_stream, data_args.dataset_name, data_args.dataset_config)
        splits = problems.check("--streaming", _stream_splits, dataset, data_args, evaluation_only) if dataset else None
    else:
        dataset = problems.check("--dataset_name", load_image_dataset, data_args.dataset_name,
                                 data_args.dataset_config, seed=data_args.split_seed)
        splits = _splits(dataset, data_args, problems, evaluation_only) if dataset is not None else None
    if splits is None:
        return None
    train, evaluation, source = splits
    columns = problems.check("--image_column / --label_column", find_columns, train, data_args.image_column,
                             data_args.label_column)
    if columns is None:
        return None
    image_column, label_column = columns
    if label_column is not None and label_column not in evaluation.features:
        problems.add("--eval_split", f"the evaluation split has no label column {label_column!r}")
        return None
    streamed = isinstance(train, IterableDataset)
    if not streamed:
        train, evaluation = encode_string_labels([train, evaluation], label_column)
    names, named = _class_names(evaluation if streamed else train, label_column, data_args, problems)
    data = RecipeData(train, evaluation, image_column, label_column, names, named, split_source=source)
    if label_column is None:
        data.unlabelled_because = no_labels_reason(data_args)
        logger.warning("%s: no accuracy table, robustness report or model card will be written",
                       data.unlabelled_because)
        return data
    checked = [("evaluation split", evaluation, dict(for_accuracy=True))]
    if not evaluation_only and not streamed:  # a stream's labels are read as it is trained on, not scanned first
        checked.insert(0, ("training split", train, dict(for_accuracy=False, for_training=labels_train)))
    for split, rows, role in checked:
        note = problems.check(f"--label_column ({split})", _check_labels, label_values(rows, label_column),
                              len(names) if names else None, split, **role)
        if note:
            logger.warning(note)
    if names is not None and len(names) < 2:
        logger.warning("the dataset has a single class: accuracy means nothing here, so no accuracy table, robustness "
                       "report or model card will be written")
    return data


def _stream_splits(stream: IterableDatasetDict, data_args: DataArguments, evaluation_only: bool):
    """(training stream, evaluation split read whole, where it comes from): a stream holds nothing out,
    so its evaluation split is the named one or the first of the usual names."""
    name = data_args.eval_split or next((n for n in EVAL_SPLIT_NAMES if n in stream), None)
    if name is None or name not in stream:
        raise ValueError(f"the stream's splits are {list(stream)}: a stream cannot hold out part of its training "
                         "split, so name its evaluation split with --eval_split (or drop --streaming)")
    evaluation = read_whole(stream[name], data_args.max_eval_samples)
    if evaluation_only:
        return evaluation, evaluation, SplitSource(name)
    if data_args.train_split not in stream:
        raise ValueError(f"no split {data_args.train_split!r} in the stream; it has {list(stream)}: pass --train_split")
    train = stream[data_args.train_split]
    features = train.features or {}
    if data_args.label_column and isinstance(features.get(data_args.label_column), Value) and features[
            data_args.label_column].dtype in ("string", "large_string"):
        raise ValueError("a stream's string labels cannot be counted before training: give a ClassLabel column")
    return (train.take(data_args.max_train_samples) if data_args.max_train_samples else train), evaluation, \
        SplitSource(name)


def _splits(dataset, data_args: DataArguments, problems: Problems, evaluation_only: bool):
    """(training split, evaluation split, where its images come from), each cut to its
    ``max_*_samples``; an evaluation's training split is its evaluation split (where its classes are
    read)."""
    where = "--eval_split" if evaluation_only else "--train_split / --eval_split"
    chosen = problems.check(where, choose_splits, dataset, data_args.train_split, data_args.eval_split,
                            data_args.split_seed, data_args.label_column, evaluation_only)
    if chosen is None:
        return None
    train, evaluation, source = chosen
    if data_args.dataset_name in (None, "", DEMO_DATASET) and source.seed is None:
        source = SplitSource(source.name, seed=data_args.split_seed)  # the digits' test split is drawn too
    if data_args.max_eval_samples:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    if evaluation_only:
        return evaluation, evaluation, source
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    return train, evaluation, source


def _class_names(train, label_column: str | None, data_args: DataArguments, problems: Problems):
    """(the classes in label order, whether they are named): the ClassLabel's names, the names file's,
    or, for plain integer labels, the integers."""
    names, named = class_names(train, label_column), True
    if data_args.class_names_file:
        listed = problems.check("--class_names_file", read_class_names_file, data_args.class_names_file)
        if listed is not None and names is not None and listed != names:
            problems.add("--class_names_file", f"{data_args.class_names_file} lists other classes than the dataset's "
                                               f"ClassLabel ({len(listed)} vs {len(names)}); drop the flag")
        names = names or listed
    if names is None and label_column is not None:
        labels = label_values(train, label_column)
        if labels.dtype.kind in "iu" and labels.size and labels.max() >= 0:
            names, named = [str(i) for i in range(int(labels.max()) + 1)], False
            logger.warning("the labels are plain integers (no ClassLabel): the classes are named 0-%d, so heads are "
                           "matched by these numbers; give --class_names_file for their names", len(names) - 1)
    return names, named


def no_labels_reason(data_args: DataArguments) -> str:
    """Why a dataset has no label column, as a user would want to hear it."""
    folder = single_class_folder(data_args.dataset_name, data_args.train_split)
    if folder is not None:
        return (f"every image lies in one class folder ({folder}), and an imagefolder takes its labels from two or "
                "more, so the dataset has none; add a folder for each other class")
    return "the dataset has no labels"


def single_class_folder(name_or_path: str | None, split: str) -> str | None:
    """The one class folder of a local imagefolder whose images all lie in one (``datasets`` then
    gives it no label column), or ``None``."""
    if not name_or_path or not os.path.isdir(name_or_path):
        return None
    for root in (os.path.join(name_or_path, split), name_or_path):
        if os.path.isdir(root):
            folders = [d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d))]
            if len(folders) == 1 and folders[0] not in ("train", "test", "validation"):
                return os.path.join(root, folders[0])
    return None
