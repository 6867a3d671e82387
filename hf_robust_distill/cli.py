"""What the recipes share: data and robustness flags, YAML-or-flags parsing with demo defaults,
the checks every recipe runs before its first step, and the end-of-training report, card and push."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field, fields

import yaml
from accelerate import PartialState
from datasets import Dataset
from transformers import HfArgumentParser

from .data import (DEMO_DATASET, class_names, encode_string_labels, find_columns, label_values, load_image_dataset,
                   split_train_eval)
from .images import BadImage, list_of, too_many_message
from .preflight import (Problems, check_choice, check_corruptions, check_natural_shifts, check_repo_id, did_you_mean,
                        parse_severities, read_class_names_file)
from .preflight import check_labels as _check_labels

logger = logging.getLogger(__name__)


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": f"Hub id, local imagefolder or saved dataset; unset or "
                                        f"'{DEMO_DATASET}': the embedded digits."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_split: str = field(default="train")
    eval_split: str | None = field(
        default=None, metadata={"help": "Defaults to the first labelled validation/test split, or 10% of train."})
    image_column: str | None = field(default=None, metadata={"help": "Found by type unless given."})
    label_column: str | None = field(default=None, metadata={"help": "Found by type unless given."})
    class_names_file: str | None = field(
        default=None, metadata={"help": "Class names in label order, one per line (or a JSON list), for labels that "
                                        "are plain integers (a CLIP teacher's zero-shot head needs names)."})
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)


# ---- parsing -------------------------------------------------------------------------------------

def parse_recipe_args(dataclass_types, argv: list[str] | None = None, defaults: dict | None = None,
                      demo_defaults: dict | None = None, demo_unless: str = "teacher_name_or_path",
                      problems: Problems | None = None):
    """Flags parsed into ``dataclass_types``, on top of ``--config file.yaml`` and ``defaults``.
    Without ``--<demo_unless>`` (on the line or in the YAML) the embedded demo's settings are the
    defaults too; any flag still overrides them.

    Unknown YAML keys and flags, and values a dataclass rejects, are added to ``problems`` (each
    dataclass that fails is returned as ``None``); without ``problems`` they are raised together."""
    own = problems if problems is not None else Problems()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    from_yaml = {}
    if "--config" in argv:
        at = argv.index("--config")
        path = argv[at + 1] if at + 1 < len(argv) else None
        del argv[at : at + 2]
        from_yaml = own.check("--config", _read_yaml, path, actions) or {}
    demo = f"--{demo_unless}" not in argv and not from_yaml.get(demo_unless)
    parser.set_defaults(**{**(defaults or {}), **((demo_defaults or {}) if demo else {}), **from_yaml})
    parser.exit_on_error = False
    try:
        namespace, remaining = parser.parse_known_args(args=argv)
    except argparse.ArgumentError as error:
        own.add(f"--{error.argument_name.lstrip('-')}" if error.argument_name else "flags", error.message)
        own.raise_if_any()
    after_a_flag = False  # a value after an unknown flag is that flag's
    for token in remaining:
        if token.startswith("--"):
            name = token[2:].split("=")[0]
            own.add(f"--{name}", f"unknown flag{did_you_mean(name, actions)}")
            after_a_flag = True
        elif not after_a_flag:
            own.add(repr(token), "a value without a flag")
    outputs = []
    for dtype in dataclass_types:
        inputs = {f.name: getattr(namespace, f.name) for f in fields(dtype) if f.init and hasattr(namespace, f.name)}
        outputs.append(own.check(f"flags of {dtype.__name__}", dtype, **inputs))
    if problems is None:
        own.raise_if_any()
    return outputs


def _read_yaml(path: str | None, actions: dict[str, argparse.Action]) -> dict:
    """A YAML recipe's keys, each a known flag, string values converted as the flag would convert them."""
    if not path or not os.path.isfile(path):
        raise ValueError(f"no file {path!r}")
    with open(path) as f:
        try:
            values = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must map flag names to values (key: value lines), got a {type(values).__name__}")
    unknown = [k for k in values if k not in actions]
    if unknown:
        raise ValueError("; ".join(f"unknown key {k!r}{did_you_mean(str(k), actions)}" for k in unknown)
                         + f" (in {path})")
    converted = {}
    for key, value in values.items():
        action = actions[key]
        if isinstance(value, str) and action.type not in (None, str):
            try:
                value = action.type(value)
            except (TypeError, ValueError):
                raise ValueError(f"{key}: {value!r} is not a valid value (in {path})") from None
        converted[key] = value
    return converted


# ---- data ----------------------------------------------------------------------------------------

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

    @property
    def scored(self) -> bool:
        """Whether accuracy can be measured: labels and at least two classes."""
        return self.label_column is not None and self.names is not None and len(self.names) > 1


def load_recipe_data(data_args: DataArguments, problems: Problems, seed: int = 0,
                     labels_train: bool = False) -> RecipeData | None:
    """The splits of ``data_args``, with string labels encoded as classes and every label checked
    (``labels_train``: a loss reads the training labels); problems are added, not raised."""
    dataset = problems.check("--dataset_name", load_image_dataset, data_args.dataset_name, data_args.dataset_config,
                             seed=seed)
    if dataset is None:
        return None
    splits = problems.check("--train_split / --eval_split", split_train_eval, dataset, data_args.train_split,
                            data_args.eval_split, seed=seed, label_column=data_args.label_column)
    if splits is None:
        return None
    train, evaluation = splits
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    columns = problems.check("--image_column / --label_column", find_columns, train, data_args.image_column,
                             data_args.label_column)
    if columns is None:
        return None
    image_column, label_column = columns
    if label_column is not None and label_column not in evaluation.features:
        problems.add("--eval_split", f"the evaluation split has no label column {label_column!r}")
        return None
    train, evaluation = encode_string_labels([train, evaluation], label_column)
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
    data = RecipeData(train, evaluation, image_column, label_column, names, named)
    if label_column is None:
        data.unlabelled_because = no_labels_reason(data_args)
        logger.warning("%s: no accuracy table, robustness report or model card will be written",
                       data.unlabelled_because)
        return data
    num_classes = len(names) if names else None
    for split, rows, role in (("training split", train, dict(for_accuracy=False, for_training=labels_train)),
                              ("evaluation split", evaluation, dict(for_accuracy=True))):
        note = problems.check(f"--label_column ({split})", _check_labels, label_values(rows, label_column),
                              num_classes, split, **role)
        if note:
            logger.warning(note)
    if names is not None and len(names) < 2:
        logger.warning("the dataset has a single class: accuracy means nothing here, so no accuracy table, robustness "
                       "report or model card will be written")
    return data


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


def decode_evaluation_split(data: RecipeData, resizer, robustness: RobustnessArguments, max_fraction: float,
                            problems: Problems) -> list[BadImage]:
    """Decodes the evaluation split once, before training, into the corruption cache the
    robustness report reads; lists its bad images, and a problem when they pass ``max_fraction``.
    The one check that takes time, so it runs last and only when nothing else is wrong."""
    from .corrupted_sets import CorruptedSetCache, decode_evaluation_set

    if problems or data.label_column is None:
        return []
    with PartialState().main_process_first():
        decoded = problems.check("--eval_split", decode_evaluation_set, data.evaluation, resizer,
                                 CorruptedSetCache(robustness.corruption_cache_dir), data.image_column,
                                 data.label_column, robustness.robustness_batch_size,
                                 robustness.robustness_num_workers)
    if decoded is None:
        return []
    _, bad = decoded
    if len(bad) > max_fraction * len(data.evaluation):
        problems.add("--eval_split", too_many_message(bad, len(data.evaluation), max_fraction, "evaluation split"))
    elif bad:
        logger.warning("%d image(s) of the evaluation split do not decode and are left out of every accuracy: %s",
                       len(bad), list_of(bad))
    return bad


# ---- robustness report, card and push ------------------------------------------------------------

TEACHER_REPORT_FILE = "teacher_robustness_report.json"
BASELINES = ("teacher", "alexnet", "none")


@dataclass
class RobustnessArguments:
    robustness_corruptions: str | None = field(
        default=None, metadata={"help": "Comma-separated corruptions of the robustness report; default: the 15 of "
                                        "ImageNet-C."})
    robustness_severities: str = field(default="1,2,3,4,5", metadata={"help": "Comma-separated severities."})
    robustness_backend: str = field(
        default="torch", metadata={"help": "torch (batched ports of all 19, on device), reference (the ImageNet-C "
                                           "code, per image; pip install 'hf-robust-distill[imagenet-c]') or auto "
                                           "(ports where they exist: all).",
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
    force_push: bool = field(
        default=False, metadata={"help": "Push a student whose clean accuracy is at or below chance (weights with "
                                         "NaN or Inf are never pushed)."})

    @property
    def corruption_names(self) -> list[str] | None:
        if not self.robustness_corruptions:
            return None
        return [c.strip() for c in self.robustness_corruptions.split(",") if c.strip()]

    @property
    def shift_specs(self) -> list[str]:
        return [s.strip() for s in self.natural_shifts.split(",") if s.strip()] if self.natural_shifts else []

    def check(self, problems: Problems, baselines=BASELINES) -> None:
        """Every flag of the report, before any work: names, severities, baseline, shifts."""
        if self.corruption_names is not None:
            problems.check("--robustness_corruptions", check_corruptions, self.corruption_names,
                           self.robustness_backend)
        problems.check("--robustness_severities", parse_severities, self.robustness_severities)
        problems.check("--robustness_baseline", check_choice, self.robustness_baseline, baselines)
        if self.shift_specs:
            problems.check("--natural_shifts", check_natural_shifts, self.shift_specs)
        if self.robustness_batch_size < 1:
            problems.add("--robustness_batch_size", f"must be at least 1, got {self.robustness_batch_size}")

    def evaluation_kwargs(self) -> dict:
        """Keyword arguments of ``evaluate_robustness``."""
        return dict(
            corruptions=self.corruption_names, severities=parse_severities(self.robustness_severities),
            backend=self.robustness_backend, natural_shifts=self.shift_specs, cache_dir=self.corruption_cache_dir,
            batch_size=self.robustness_batch_size, num_workers=self.robustness_num_workers,
        )


def check_recipe_flags(problems: Problems, script_args, robustness: RobustnessArguments | None, config,
                       script: str = "recipes/multilevel.py") -> str | None:
    """What every training recipe checks first, from its flags alone (and the seed it sets before
    any model is made, so new heads and the demo zoo start from it). Returns the Hub repo to push
    to after training, or ``None``."""
    from transformers import set_seed

    from .preflight import check_distortions

    from .preflight import check_output_dir, check_trains_something

    if config is not None:
        set_seed(config.seed)
        problems.check("--output_dir", check_output_dir, config.output_dir)
        problems.check("--num_train_epochs / --max_steps", check_trains_something, config)
    repo_id = take_push_request(config, problems)
    check_training_flags(config, problems, script)
    if script_args is not None:
        problems.check("--eval_distortions", check_distortions, script_args.eval_distortions)
    if robustness is not None:
        robustness.check(problems)
    return repo_id


def raise_before_the_demo_zoo(problems: Problems, parsed: tuple, teacher: str | None) -> None:
    """Problems so far end the run before the embedded demo's models are built (training them takes
    minutes), and when a set of flags did not parse (the rest of the checks need them)."""
    if None in parsed or (not teacher and problems):
        problems.raise_if_any()


def check_training_flags(config, problems: Problems, script: str = "recipes/multilevel.py") -> None:
    """What ``TrainingArguments`` leave to the first step: a checkpoint to resume from that exists
    (``--resume_from_checkpoint true``: the newest in ``output_dir``), one GPU per process, a
    teacher sharded only across several processes, non-reentrant checkpointing with attention maps."""
    from .distributed import check_one_device_per_process
    from .divergence import last_checkpoint

    if config is None:
        return
    problems.check("--num_processes", check_one_device_per_process, config.n_gpu, script)
    if config.teacher_sharding and config.world_size < 2:
        problems.add("--teacher_sharding", "shards the teacher across processes, and this run has one: launch "
                                           f"several (accelerate launch --num_processes N {script} ...)")
    checkpointing = config.activation_checkpointing_kwargs
    if (config.activation_checkpointing and config.attn_weight > 0 and isinstance(checkpointing, dict)
            and checkpointing.get("use_reentrant", False)):
        problems.add("--activation_checkpointing_kwargs", "reentrant checkpointing gives attention maps no gradient: "
                                                          "use '{\"use_reentrant\": false}' (the default)")
    resume = config.resume_from_checkpoint
    if not resume:
        return
    if str(resume).lower() == "true":
        config.resume_from_checkpoint = last_checkpoint(config.output_dir)
        if config.resume_from_checkpoint is None:
            problems.add("--resume_from_checkpoint", f"there is no checkpoint-<step> folder in {config.output_dir} "
                                                     "to resume from")
    elif not os.path.isdir(resume):
        problems.add("--resume_from_checkpoint", f"no checkpoint folder {resume!r} (a run's checkpoints are "
                                                 f"{config.output_dir}/checkpoint-<step>)")


def take_push_request(config, problems: Problems) -> str | None:
    """The Hub repo the student goes to after training, or ``None``. Turns the Trainer's own push
    off, so that nothing contacts the Hub before training ends; a missing or malformed repo id is
    a problem now."""
    if config is None or not config.push_to_hub:
        return None
    config.push_to_hub = False
    if not config.hub_model_id:
        problems.add("--push_to_hub", "needs --hub_model_id <namespace>/<name>")
        return None
    problems.check("--hub_model_id", check_repo_id, config.hub_model_id)
    return config.hub_model_id


def check_card_possible(data: RecipeData | None, student_scored: bool, repo_id: str | None,
                        problems: Problems) -> None:
    """A push needs a card, and a card needs accuracy: labels, two classes, a student head for them."""
    if repo_id is None or data is None:
        return
    if not data.scored:
        problems.add("--push_to_hub", "the dataset has fewer than two labelled classes to measure the student on, so "
                                      "there is no model card to push; use labelled data or drop --push_to_hub")
    elif not student_scored:
        problems.add("--push_to_hub", "the student has no classification head for the dataset's classes, so there is "
                                      "no model card to push; drop --push_to_hub")


def push_if_requested(config, repo_id: str | None, force: bool = False):
    """After training: the student in ``config.output_dir`` to ``repo_id`` (when one was asked
    for by ``take_push_request``); the commit info, or ``None``."""
    if not repo_id:
        return None
    from .hub import push_robust_student

    commit = push_robust_student(config.output_dir, repo_id, token=config.hub_token, private=config.hub_private_repo,
                                 force=force)
    print(f"Pushed the student to {commit.commit_url}")
    return commit


def report_and_card(students: dict, teacher, teacher_name: str, evaluation, robustness: RobustnessArguments, config,
                    *, train_dataset: str | None, num_train_examples: int, decode_with,
                    repo_id: str | None = None, vq_name_or_path: str | None = None, eval_split: str | None = None,
                    image_column: str | None = None, label_column: str | None = None,
                    skipped_training_images: int = 0) -> dict:
    """The end of a training recipe: the teacher's robustness report (the baseline; ``teacher`` may
    be ``None`` when it has no head for these classes), then for each student
    ``{name: (classifier, folder, initialisation, method, its DistillationConfig)}`` its report,
    plot and model card in its folder. Classifiers take [0, 1] pixels (``PixelSpaceClassifier``);
    every model is evaluated on images decoded by ``decode_with`` (the student's processor).
    Returns ``{name: RobustnessReport}`` (the teacher's under "teacher")."""
    from .evaluation import evaluate_robustness
    from .hub import plain_name, training_settings, write_student_card
    from .report import RobustnessReport

    choice = robustness.robustness_baseline.lower()
    train_dataset = dataset_label(train_dataset)
    kwargs = dict(robustness.evaluation_kwargs(), decode_with=decode_with, seed=config.seed, split=eval_split,
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
        if skipped_training_images:
            settings["Training images skipped"] = f"{skipped_training_images} (they did not decode)"
        folder_name = os.path.basename(os.path.abspath(folder))
        card_name = repo_id.split("/")[-1] if repo_id and folder == config.output_dir else folder_name
        report = evaluate_robustness(model, evaluation, model_name=card_name, baseline=baseline, **kwargs)
        paths = write_student_card(
            folder, report, method=method, teacher=teacher_name, train_dataset=train_dataset, settings=settings,
            model_name=card_name, student_init=init, repo_id=repo_id if folder == config.output_dir else None,
            architecture=_architecture(model), num_train_examples=num_train_examples,
            license=robustness.card_license, teacher_report=reports.get("teacher"))
        reports[name] = report
        mce = "" if report.mce is None else f", mCE {report.mce:.1f} (vs {report.baseline['name']})"
        chance = "  AT OR BELOW CHANCE" if report.at_or_below_chance else ""
        print(f"  {name}: clean {100 * report.clean_accuracy:.1f}%, mean corrupted "
              f"{100 * report.mean_corrupted_accuracy:.1f}%{mce}{chance}\n    {os.path.abspath(paths['card'])}\n"
              f"    {os.path.abspath(paths['plot'])}\n    {os.path.abspath(paths['report'])}")
    return reports


def _architecture(classifier) -> str | None:
    config = getattr(getattr(classifier, "model", classifier), "config", None)
    architectures = getattr(config, "architectures", None) or []
    return architectures[0] if architectures else getattr(config, "model_type", None)


def dataset_label(name: str | None) -> str:
    if not name:
        return DEMO_DATASET
    return name if not os.path.exists(name) else os.path.basename(os.path.abspath(name))


_WATCHED: list[tuple[str, bool]] = []


def watch_output_dir(path: str) -> None:
    """The folder a run writes into: if the run then stops on an error, the folder is removed when
    this run made it and left nothing in it (a diverged or bad-image run leaves no empty folder)."""
    _WATCHED.append((path, os.path.exists(path)))


def _remove_if_empty(path: str) -> None:
    for folder, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):  # the deepest first
        try:
            os.rmdir(folder)  # only an empty folder goes
        except OSError:
            pass


def run_recipe(main) -> None:
    """A recipe's ``__main__``: its problems found before training end the process with their list
    (exit status 2, on the main process only, like a flag argparse rejects), not a traceback; a run
    that stops on an error leaves no empty output folder behind."""
    from .preflight import PreflightError

    try:
        main()
    except PreflightError as error:
        if PartialState().is_main_process:
            print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except BaseException:
        for path, existed in _WATCHED:
            if not existed and os.path.isdir(path):
                _remove_if_empty(path)
        raise
