"""The end of a training run, the same for every recipe: the teacher's and each student's
robustness report, their model cards and the push."""

from __future__ import annotations

import os

from ..data.datasets import DEMO_DATASET
from .arguments import RobustnessArguments

TEACHER_REPORT_FILE = "teacher_robustness_report.json"


def push_if_requested(config, repo_id: str | None, force: bool = False):
    """After training: the student in ``config.output_dir`` to ``repo_id`` (when one was asked
    for by ``take_push_request``); the commit info, or ``None``."""
    if not repo_id:
        return None
    from ..hub.push import push_robust_student

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
    from ..evaluation.report import RobustnessReport
    from ..evaluation.robustness import evaluate_robustness
    from ..hub.card import plain_name, training_settings, write_student_card

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
