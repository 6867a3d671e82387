"""The push of a trained student to the Hub: only its own files (weights, config, image processor,
card, report, plot), refused at chance level or with NaN weights; also ``python -m hf_robust_distill.hub``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from huggingface_hub import ModelCard

from ..evaluation.report import REPORT_FILE, RobustnessReport
from ..training.divergence import non_finite_weights_in
from .card import CARD_FILE, REPO_PLACEHOLDER, STUDENT_FILES, WEIGHTS


class PushToHubError(RuntimeError):
    """A push that did not complete; the local folder is as it was, and the message says how to retry."""


def student_files(folder: str) -> list[str]:
    """The files of ``folder`` a push sends: weights, config, image processor, card, report, plot."""
    names = sorted(os.listdir(folder))
    files = [n for n in names
             if (n in STUDENT_FILES or WEIGHTS.fullmatch(n)) and os.path.isfile(os.path.join(folder, n))]
    missing = [n for n in ("config.json", CARD_FILE) if n not in files]
    if not any(WEIGHTS.fullmatch(n) for n in files):
        missing.append("model.safetensors")
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete student: {', '.join(missing)} missing (the recipes write "
                                "them at the end of training; write_student_card writes the card)")
    return files


def retry_command(folder: str, repo_id: str) -> str:
    return f"python -m hf_robust_distill.hub {folder} {repo_id}"


class RefusedPush(ValueError):
    """A student that must not be published: weights with NaN or Inf, or accuracy at or below chance."""


def check_publishable(folder: str, force: bool = False) -> None:
    """Refuses, before any request, weights with NaN or Inf (always) and a student whose clean
    accuracy is at or below chance (unless ``force``)."""
    bad = non_finite_weights_in(folder)
    if bad:
        raise RefusedPush(f"refusing to push {folder}: {len(bad)} weight tensors hold NaN or Inf "
                          f"({', '.join(bad[:5])}); the run diverged, retrain it")
    report_path = os.path.join(folder, REPORT_FILE)
    report = RobustnessReport.load(report_path) if os.path.isfile(report_path) else None
    if report is not None and report.at_or_below_chance and not force:
        raise RefusedPush(
            f"refusing to push {folder}: its clean accuracy ({100 * report.clean_accuracy:.1f}%) is at or below chance "
            f"({100 * report.chance_accuracy:.1f}%, always answering the most frequent class), so it learned nothing "
            "usable. Train it longer or fix the setup; to publish it anyway pass --force_push "
            f"(python -m hf_robust_distill.hub {folder} <repo_id> --force)")


def push_robust_student(folder: str, repo_id: str, *, token: str | None = None, private: bool | None = None,
                        revision: str | None = None, commit_message: str = "Upload robust student (hf_robust_distill)",
                        force: bool = False):
    """Pushes the student in ``folder`` to the Hub model repo ``repo_id`` (created if needed):
    its safetensors weights, config, image processor, card, robustness report and plot; never the
    teacher, checkpoints, training arguments or generated datasets that lie beside them.

    Before any request it refuses weights with NaN or Inf, and a student at or below chance
    accuracy unless ``force`` (``RefusedPush``). The card is sent with ``repo_id`` in its loading
    example; the local folder is only read. On failure (no network, bad token, no permission)
    raises ``PushToHubError`` naming the cause and the command that retries. Returns the commit info.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    files = student_files(folder)
    check_publishable(folder, force)
    card = ModelCard.load(os.path.join(folder, CARD_FILE))
    model_name = card.data.get("model_name") or Path(folder).name
    content = str(card).replace(REPO_PLACEHOLDER.format(name=model_name), repo_id)
    if token and token in content:
        raise ValueError("the model card contains the Hub token; refusing to push it")
    operations = [CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=content.encode())]
    operations += [CommitOperationAdd(path_in_repo=n, path_or_fileobj=os.path.join(folder, n))
                   for n in files if n != CARD_FILE]
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        return api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)
    except Exception as error:  # network, HTTP and offline-mode errors all end here
        raise PushToHubError(
            f"pushing {folder} to the Hub repo {repo_id} failed: {type(error).__name__}: {error}\n"
            f"The local folder is complete and unchanged. Once the cause is fixed (network, HF_TOKEN or "
            f"`hf auth login`, write access to {repo_id}), retry with:\n    {retry_command(folder, repo_id)}"
        ) from error


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hf_robust_distill.hub",
                                     description="Push a distilled student folder to the Hub.")
    parser.add_argument("folder")
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true", default=None)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--force", action="store_true", help="push a student at or below chance accuracy")
    args = parser.parse_args(argv)
    try:
        check_repo_id(args.repo_id)
    except ValueError as error:
        parser.error(str(error))
    if not os.path.isdir(args.folder):
        parser.error(f"no folder {args.folder!r}: give the student's folder (the recipe's --output_dir)")
    try:
        info = push_robust_student(args.folder, args.repo_id, private=args.private, revision=args.revision,
                                   force=args.force)
    except (PushToHubError, RefusedPush) as error:
        sys.exit(str(error))
    print(f"pushed to {info.commit_url}")


def check_repo_id(repo_id: str) -> None:
    """A Hub model repo id the Hub accepts (``namespace/name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if "<" in repo_id or ">" in repo_id:
        raise ValueError(f"{repo_id!r} is a placeholder: write your Hub user (or organisation) name and the model's, "
                         "e.g. jane/vit-b16-robust")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id: use namespace/name with letters, digits, '-', "
                         f"'_' and '.' only ({str(error).splitlines()[0]})") from None
    if "/" not in repo_id:
        raise ValueError(f"{repo_id!r} has no namespace: write <your-username-or-org>/{repo_id}")
