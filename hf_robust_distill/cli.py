"""What the recipes share: data flags, YAML-or-flags parsing with demo defaults, train/eval splits."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser

from .data import DEMO_DATASET, load_image_dataset, split_train_eval


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": f"Hub id, local imagefolder or saved dataset; unset or "
                                        f"'{DEMO_DATASET}': the embedded digits."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_split: str = field(default="train")
    eval_split: str | None = field(default=None, metadata={"help": "Defaults to validation/test or 10% of train."})
    image_column: str | None = field(default=None, metadata={"help": "Found by type unless given."})
    label_column: str | None = field(default=None, metadata={"help": "Found by type unless given."})
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)


def parse_recipe_args(dataclass_types, argv: list[str] | None = None, defaults: dict | None = None,
                      demo_defaults: dict | None = None, demo_unless: str = "teacher_name_or_path"):
    """Flags parsed into ``dataclass_types``, on top of ``--config file.yaml`` and ``defaults``.
    Without ``--<demo_unless>`` (on the line or in the YAML) the embedded demo's settings are the
    defaults too; any flag still overrides them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    from_yaml = {}
    if "--config" in argv:
        at = argv.index("--config")
        with open(argv[at + 1]) as f:
            from_yaml = yaml.safe_load(f) or {}
        del argv[at : at + 2]
    demo = f"--{demo_unless}" not in argv and not from_yaml.get(demo_unless)
    parser.set_defaults(**{**(defaults or {}), **((demo_defaults or {}) if demo else {}), **from_yaml})
    return parser.parse_args_into_dataclasses(args=argv)


def load_splits(data_args: DataArguments, seed: int = 0):
    """(train, evaluation) splits, each cut to its ``max_*_samples``."""
    dataset = load_image_dataset(data_args.dataset_name, data_args.dataset_config, seed=seed)
    train, evaluation = split_train_eval(dataset, data_args.train_split, data_args.eval_split, seed=seed)
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation
