"""The end of a training run, the same for every recipe: the table of accuracies, the teacher's and
each student's robustness report, their model cards and the push."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from accelerate import PartialState

from ..data.datasets import DEMO_DATASET
from ..data.images import ImageResizer, timm_data_config
from ..evaluation.distortion_table import distortion_table, report_table
from ..evaluation.robustness import evaluate_robustness
from ..hub.card import plain_name, training_settings, write_student_card
from ..hub.push import push_robust_student
from ..models.timm_models import is_timm
from .arguments import DataArguments, RobustnessArguments
from .recipe_data import RecipeData

TEACHER_REPORT_FILE = "teacher_robustness_report.json"


@dataclass
class FinishedStudent:
    """A trained student: its row in the table (``name``), a classifier of [0, 1] pixels, the folder
    its card goes to, the checkpoint it started from, its method and its run's arguments."""

    name: str
    classifier: torch.nn.Module
    folder: str
    init: str
    method: str
    config: object


@dataclass
class RunEnd:
    """What the end of a run reads besides its students: the run's arguments and data, the prepared
    evaluation split and its decoding, the table's distortion columns, and the teacher (a classifier
    of [0, 1] pixels, or ``None`` when it has no head for these classes)."""

    config: object
    robustness: RobustnessArguments
    data_args: DataArguments
    data: RecipeData
    eval_set: object
    resizer: ImageResizer
    columns: list[str]
    teacher_name: str
    teacher: torch.nn.Module | None = None
    repo_id: str | None = None
    vq_name_or_path: str | None = None
    skipped_training_images: int = 0
    extra_rows: dict = field(default_factory=dict)
    """More rows of the table, computed by the recipe (the multi-level linear probe)."""


def finish_run(run: RunEnd, students: list[FinishedStudent], *, scored: bool = True) -> dict:
    """On every process, after training: the robustness reports, each process scoring its share of
    every set (when ``scored``: labels of two classes and student heads for them); on the main
    process, the table of the teacher and every student, clean and under each distortion column,
    its extra rows, the model cards and the push. Returns ``{"table", "reports", "commit"}``
    (``reports`` when scored; the table and the commit on the main process)."""
    main = PartialState().is_main_process
    results = {"table": {}, "commit": None}
    if scored and main:
        models = {"teacher": run.teacher} if run.teacher is not None else {}
        models.update({student.name: student.classifier for student in students})
        results["table"] = distortion_table(models, {}, run.eval_set, run.columns, run.config.seed)
    results["table"].update(run.extra_rows)
    if results["table"] and main:
        report_table(results["table"], run.config.output_dir)
    if scored:
        results["reports"] = reports_and_cards(run, students, write=main)
    if main:
        results["commit"] = push_if_requested(run.config, run.repo_id, force=run.robustness.force_push)
    return results


def reports_and_cards(run: RunEnd, students: list[FinishedStudent], write: bool = True) -> dict:
    """The teacher's robustness report (the baseline), then each student's report, and (when
    ``write``: on the main process) its plot and model card in its folder, every model evaluated on
    images decoded by the run's resizer (the student's processor). Returns ``{name: RobustnessReport}``
    (the teacher's under "teacher")."""
    config, choice = run.config, run.robustness.robustness_baseline.lower()
    train_dataset = dataset_label(run.data_args.dataset_name)
    kwargs = dict(run.robustness.evaluation_kwargs(), decode_with=run.resizer, seed=config.seed,
                  split=run.data.split_source, dataset_name=train_dataset, image_column=run.data.image_column,
                  label_column=run.data.label_column, progress=not config.disable_tqdm)
    reports = {}
    if run.teacher is not None:
        reports["teacher"] = evaluate_robustness(run.teacher, run.data.evaluation,
                                                 model_name=plain_name(run.teacher_name), **kwargs,
                                                 baseline="alexnet" if choice == "alexnet" else None)
        if write:
            reports["teacher"].save(os.path.join(config.output_dir, TEACHER_REPORT_FILE))
    baseline = {"teacher": reports.get("teacher"), "alexnet": "alexnet", "none": None}[choice]
    if write:
        print("\nRobustness reports and model cards:")
    for student in students:
        main_folder = student.folder == config.output_dir
        card_name = (run.repo_id.split("/")[-1] if run.repo_id and main_folder
                     else os.path.basename(os.path.abspath(student.folder)))
        report = evaluate_robustness(student.classifier, run.data.evaluation, model_name=card_name, baseline=baseline,
                                     **kwargs)
        reports[student.name] = report
        if not write:
            continue
        paths = write_student_card(
            student.folder, report, method=student.method, teacher=run.teacher_name, train_dataset=train_dataset,
            settings=_settings(run, student), model_name=card_name, student_init=student.init,
            repo_id=run.repo_id if main_folder else None, architecture=model_architecture(student.classifier),
            num_train_examples=len(run.data.train) if hasattr(run.data.train, "__len__") else None,
            license=run.robustness.card_license, teacher_report=reports.get("teacher"),
            timm=runs_timm(student.classifier, run.resizer.processor))
        _print_report(student.name, report, paths)
    return reports


def _settings(run: RunEnd, student: FinishedStudent) -> dict[str, str]:
    settings = training_settings(student.config, student.method, run.vq_name_or_path)
    if run.skipped_training_images:
        settings["Training images skipped"] = f"{run.skipped_training_images} (they did not decode)"
    return settings


def _print_report(name: str, report, paths: dict) -> None:
    mce = "" if report.mce is None else f", mCE {report.mce:.1f} (vs {report.baseline['name']})"
    chance = "  AT OR BELOW CHANCE" if report.at_or_below_chance else ""
    attacked = (f", {report.adversarial_name} {100 * report.adversarial['robust_accuracy']:.1f}%"
                if report.adversarial else "")
    print(f"  {name}: clean {100 * report.clean_accuracy:.1f}%, mean corrupted "
          f"{100 * report.mean_corrupted_accuracy:.1f}%{mce}{attacked}{chance}\n    {os.path.abspath(paths['card'])}\n"
          f"    {os.path.abspath(paths['plot'])}\n    {os.path.abspath(paths['report'])}")


def push_if_requested(config, repo_id: str | None, force: bool = False):
    """After training: the student in ``config.output_dir`` to ``repo_id`` (when one was asked
    for by ``take_push_request``); the commit info, or ``None``."""
    if not repo_id:
        return None
    commit = push_robust_student(config.output_dir, repo_id, token=config.hub_token, private=config.hub_private_repo,
                                 force=force)
    print(f"Pushed the student to {commit.commit_url}")
    return commit


def model_architecture(classifier) -> str | None:
    """The card's name of a model's class (a timm model's with its timm architecture)."""
    config = getattr(getattr(classifier, "model", classifier), "config", None)
    architectures = getattr(config, "architectures", None) or []
    name = architectures[0] if architectures else getattr(config, "model_type", None)
    if is_timm(classifier):
        return f"`{name or 'TimmWrapperForImageClassification'}` (timm's `{config.architecture}`)"
    return name


def runs_timm(classifier, processor) -> str | None:
    """What of a published model runs timm's code: ``"model"``, ``"processor"`` or ``None``."""
    if is_timm(classifier):
        return "model"
    return "processor" if timm_data_config(processor) is not None else None


def dataset_label(name: str | None) -> str:
    if not name:
        return DEMO_DATASET
    return name if not os.path.exists(name) else os.path.basename(os.path.abspath(name))
