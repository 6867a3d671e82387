"""What the recipes share: data flags, YAML-or-flags parsing with demo defaults, train/eval splits."""

from __future__ import annotations

import os
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


TEACHER_REPORT_FILE = "teacher_robustness_report.json"


@dataclass
class RobustnessArguments:
    robustness_corruptions: str | None = field(
        default=None, metadata={"help": "Comma-separated corruptions of the robustness report; default: the 15 of "
                                        "ImageNet-C that --robustness_backend makes."})
    robustness_severities: str = field(default="1,2,3,4,5", metadata={"help": "Comma-separated severities."})
    robustness_backend: str = field(
        default="torch", metadata={"help": "torch (batched ports, on device), reference (the ImageNet-C code, per "
                                           "image) or auto (ports where they exist).",
                                   "choices": ["torch", "reference", "auto"]})
    robustness_baseline: str = field(
        default="teacher", metadata={"help": "What mCE is normalised by: teacher (relative to the teacher's report), "
                                             "alexnet (ImageNet-scale runs) or none."})
    natural_shifts: str | None = field(
        default=None, metadata={"help": "Comma-separated name=dataset[:split], e.g. imagenet-r=axiong/imagenet-r:test "
                                        "(imagenet-r and imagenet-a bring their 200-class subsets)."})
    corruption_cache_dir: str | None = field(
        default=None, metadata={"help": "Where corrupted evaluation sets are cached; default "
                                        "$HF_HOME/hf_robust_distill/corrupted."})
    robustness_batch_size: int = field(default=64, metadata={"help": "Batch size of the robustness evaluation."})
    robustness_num_workers: int = field(default=0, metadata={"help": "Data-loader workers (the reference backend "
                                                                     "corrupts in them)."})
    card_license: str | None = field(default=None, metadata={"help": "License of the pushed student, e.g. apache-2.0."})

    def evaluation_kwargs(self) -> dict:
        """Keyword arguments of ``evaluate_robustness``."""
        return dict(
            corruptions=(None if not self.robustness_corruptions
                         else [c.strip() for c in self.robustness_corruptions.split(",")]),
            severities=[int(s) for s in self.robustness_severities.split(",")], backend=self.robustness_backend,
            natural_shifts=[s.strip() for s in self.natural_shifts.split(",")] if self.natural_shifts else (),
            cache_dir=self.corruption_cache_dir, batch_size=self.robustness_batch_size,
            num_workers=self.robustness_num_workers,
        )


def take_push_request(config) -> str | None:
    """The Hub repo the student goes to after training, or ``None``. Turns the Trainer's own push
    off, so that nothing contacts the Hub before training ends; a missing repo id fails now."""
    if not config.push_to_hub:
        return None
    if not config.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id <namespace>/<name>")
    config.push_to_hub = False
    return config.hub_model_id


def push_if_requested(config, repo_id: str | None):
    """After training: the student in ``config.output_dir`` to ``repo_id`` (when one was asked
    for by ``take_push_request``); the commit info, or ``None``."""
    if not repo_id:
        return None
    from .hub import push_robust_student

    commit = push_robust_student(config.output_dir, repo_id, token=config.hub_token, private=config.hub_private_repo)
    print(f"Pushed the student to {commit.commit_url}")
    return commit


def report_and_card(students: dict, teacher, teacher_name: str, evaluation, robustness: RobustnessArguments, config,
                    *, train_dataset: str | None, num_train_examples: int, image_size,
                    repo_id: str | None = None, vq_name_or_path: str | None = None, eval_split: str | None = None,
                    image_column: str | None = None, label_column: str | None = None) -> dict:
    """The end of a training recipe: the teacher's robustness report (the baseline; ``teacher`` may
    be ``None`` when it has no head for these classes), then for each student
    ``{name: (classifier, folder, initialisation, method, its DistillationConfig)}`` its report,
    plot and model card in its folder. Classifiers take [0, 1] pixels (``PixelSpaceClassifier``).
    Returns ``{name: RobustnessReport}`` (the teacher's under "teacher")."""
    from .evaluation import evaluate_robustness
    from .hub import plain_name, training_settings, write_student_card
    from .report import RobustnessReport

    choice = robustness.robustness_baseline.lower()
    if choice not in ("teacher", "alexnet", "none"):
        raise ValueError(f"--robustness_baseline is teacher, alexnet or none, got {robustness.robustness_baseline!r}")
    train_dataset = _dataset_label(train_dataset)
    kwargs = dict(robustness.evaluation_kwargs(), image_size=image_size, seed=config.seed, split=eval_split,
                  dataset_name=train_dataset, image_column=image_column, label_column=label_column,
                  progress=not config.disable_tqdm)
    reports: dict[str, RobustnessReport] = {}
    if teacher is not None:
        reports["teacher"] = evaluate_robustness(teacher, evaluation, model_name=plain_name(teacher_name), **kwargs,
                                                 baseline="alexnet" if choice == "alexnet" else None)
        reports["teacher"].save(os.path.join(config.output_dir, TEACHER_REPORT_FILE))
    baseline = {"teacher": reports.get("teacher"), "alexnet": "alexnet", "none": None}[choice]
    print("\nRobustness reports and model cards:")
    for name, (model, folder, init, method, student_config) in students.items():
        settings = training_settings(student_config, method, vq_name_or_path)
        folder_name = os.path.basename(os.path.abspath(folder))
        card_name = repo_id.split("/")[-1] if repo_id and folder == config.output_dir else folder_name
        report = evaluate_robustness(model, evaluation, model_name=card_name, baseline=baseline, **kwargs)
        paths = write_student_card(
            folder, report, method=method, teacher=teacher_name, train_dataset=train_dataset, settings=settings,
            model_name=card_name, student_init=init, repo_id=repo_id if folder == config.output_dir else None,
            architecture=_architecture(model), num_train_examples=num_train_examples,
            license=robustness.card_license)
        reports[name] = report
        mce = "" if report.mce is None else f", mCE {report.mce:.1f} (vs {report.baseline['name']})"
        print(f"  {name}: clean {100 * report.clean_accuracy:.1f}%, mean corrupted "
              f"{100 * report.mean_corrupted_accuracy:.1f}%{mce}\n    {os.path.abspath(paths['card'])}\n"
              f"    {os.path.abspath(paths['plot'])}\n    {os.path.abspath(paths['report'])}")
    return reports


def _architecture(classifier) -> str | None:
    config = getattr(getattr(classifier, "model", classifier), "config", None)
    architectures = getattr(config, "architectures", None) or []
    return architectures[0] if architectures else getattr(config, "model_type", None)


def _dataset_label(name: str | None) -> str:
    from .data import DEMO_DATASET

    if not name:
        return DEMO_DATASET
    return name if not os.path.exists(name) else os.path.basename(os.path.abspath(name))
