"""A distilled student's model card: robustness table, plot, ``model-index`` results, settings and
citations, rendered from its ``RobustnessReport`` with the Jinja template of ``model_cards/``.

A card never holds a token or a local path: checkpoints and datasets that are not Hub ids appear
by their folder name only."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..convert.record import CONVERSION_FILE
from ..evaluation.protocols import PROTOCOLS
from ..evaluation.report import PLOT_FILE, REPORT_FILE, RobustnessReport

CARD_TEMPLATE = Path(str(resources.files("hf_robust_distill.model_cards") / "robust_student.md"))

"""The card template: ``model_cards/robust_student.md`` at the top of the repository, installed
inside the package (``hf_robust_distill.model_cards``)."""


CARD_FILE = "README.md"


STUDENT_FILES = ("config.json", "preprocessor_config.json", "model.safetensors.index.json", CARD_FILE, REPORT_FILE,
                 PLOT_FILE, CONVERSION_FILE)


WEIGHTS = re.compile(r"model(-\d+-of-\d+)?\.safetensors")


REPO_PLACEHOLDER = "your-username/{name}"


METHOD_TAGS = {"multilevel": ["multilevel-distillation"], "dad": ["dad", "adversarial-augmentation"], "kd": [],
               "evaluated": []}


METHODS = {
    "multilevel": (
        "asymmetric multi-level ViT distillation",
        "teacher and student start from the same pretrained ViT; the frozen teacher sees clean images, the "
        "student sees distorted ones, and the student learns to match the teacher's [CLS] embedding, patch "
        "tokens and attention maps (Alexis et al., 2026).",
    ),
    "dad": (
        "Discrete Adversarial Distillation (DAD)",
        "the student learns by knowledge distillation on clean images and on adversarial examples against the "
        "teacher, discretized by a VQ model so that they look like natural images rather than noise "
        "(Zhou et al., 2023).",
    ),
    "kd": (
        "knowledge distillation",
        "the student learns to match the teacher's softened predictions (and the labels) on clean images; it "
        "is the plain-KD baseline that DAD is compared with.",
    ),
    "evaluated": (
        "evaluated only",
        "its weights are the source's, and only the robustness report below is this package's, made on the same "
        "protocol as the students it trains, so the two compare.",
    ),
}


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` reads as a Hub repo id (``name`` or ``namespace/name``) rather than a path."""
    if not name or os.path.exists(name) or name.startswith((".", "~", "/")) or "\\" in name:
        return False
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None and name.count("/") <= 1


def public_name(name_or_path: str | None) -> str | None:
    """A Hub id as it is, in backticks; a local path as its folder name only."""
    if not name_or_path:
        return None
    if is_hub_id(name_or_path):
        if "/" in name_or_path:
            return f"[`{name_or_path}`](https://huggingface.co/{name_or_path})"
        return f"`{name_or_path}`"
    return f"a local checkpoint (`{Path(str(name_or_path).rstrip('/')).name}`)"


def plain_name(name_or_path: str) -> str:
    """A Hub id as it is; a local path as its folder name (what reports and cards may show)."""
    return name_or_path if is_hub_id(name_or_path) else Path(str(name_or_path).rstrip("/")).name


def training_settings(config, method: str, vq_name_or_path: str | None = None) -> dict[str, str]:
    """The settings a card shows, read from a ``DistillationConfig``: the method's own (distortions
    or DAD's attack and VQ model), loss weights and the optimisation. Nothing else of the
    training arguments (tokens, paths) reaches the card."""
    settings = {}
    if method == "multilevel" or config.distortions != "clean":
        settings["Student's distortions"] = f"`{config.distortions}`"
    if method == "dad":
        attack = config.attack_settings()
        made = "during training" if config.dad_mode == "online" else "once, before training"
        settings["DAD images"] = f"{config.dad_mode} (made {made})"
        settings["Attack"] = (f"{attack.steps}-step {config.attack_norm.upper()} PGD against the teacher, eps "
                              f"{attack.eps:g}, step {attack.step_size:g}, random start with probability "
                              f"{attack.random_start_prob:g}, projected around VQ(x)")
        if vq_name_or_path:
            settings["VQ model"] = public_name(vq_name_or_path)
    weights = {"[CLS]": config.cls_weight, "patch tokens": config.patch_weight, "attention maps": config.attn_weight,
               "KD": config.kd_weight, "CE": config.ce_weight, "KD on DAD images": config.dad_kd_weight,
               "CE on DAD images": config.dad_ce_weight}
    if getattr(config, "lora_r", 0):
        share = getattr(config, "lora_trained_share", None)
        settings["LoRA"] = (f"rank {config.lora_r}, alpha {config.lora_alpha:g} on `{config.lora_target_modules}`"
                            + (f", {share:.2%} of the parameters trained" if share is not None else "")
                            + "; the adapters are merged into these weights")
    settings["Loss weights"] = ", ".join(f"{name} {w:g}" for name, w in weights.items() if w)
    if config.kd_weight or config.dad_kd_weight:
        settings["KD temperature"] = f"{config.temperature:g}"
    steps = config.max_steps and config.max_steps > 0
    epochs = config.num_train_epochs
    length = f"{config.max_steps} steps" if steps else f"{epochs:g} epoch{'' if epochs == 1 else 's'}"
    batch = config.per_device_train_batch_size * max(config.world_size, 1) * config.gradient_accumulation_steps
    optimizer, schedule = (getattr(v, "value", v) for v in (config.optim, config.lr_scheduler_type))
    settings["Optimisation"] = (f"{length}, batch {batch}, {optimizer} lr {config.learning_rate:g} ({schedule}), "
                                f"weight decay {config.weight_decay:g}"
                                + (", bf16" if config.bf16 else ", fp16" if config.fp16 else ""))
    settings["Seed"] = str(config.seed)
    return settings


def eval_results(report: RobustnessReport, dataset_id: str) -> list[EvalResult]:
    """``model-index`` results: clean accuracy, mean corrupted accuracy and mCE, and each natural shift
    under its dataset's Hub id, config and split (a local folder by its name only)."""
    task = dict(task_type="image-classification", task_name="Image Classification")
    protocol = f"{report.protocol} protocol"
    released = report.released_source if is_hub_id(report.released_source) else None
    corrupted = dict(task, dataset_type=plain_name(released) if released else dataset_id,
                     dataset_name=f"{report.dataset_name} (corrupted)", dataset_config="corruptions",
                     dataset_split=report.split)
    results = [EvalResult(**task, dataset_type=dataset_id, dataset_name=report.dataset_name, dataset_split=report.split,
                          metric_type="accuracy", metric_name="Top-1 accuracy (clean)",
                          metric_value=round(100 * report.clean_accuracy, 2))]
    if report.mean_corrupted_accuracy is not None:
        results.append(EvalResult(**corrupted, metric_type="accuracy",
                                  metric_name=f"Mean corrupted top-1 accuracy ({protocol})",
                                  metric_value=round(100 * report.mean_corrupted_accuracy, 2)))
    baseline = plain_name(report.baseline["name"]) if report.baseline else None
    if report.mce is not None:
        results.append(EvalResult(**corrupted, metric_type="mce", metric_name=f"mCE (vs {baseline}; {protocol})",
                                  metric_value=round(report.mce, 2)))
    if report.relative_mce is not None:
        results.append(EvalResult(**corrupted, metric_type="relative_mce",
                                  metric_name=f"Relative mCE (vs {baseline}; {protocol})",
                                  metric_value=round(report.relative_mce, 2)))
    if report.adversarial:
        results.append(EvalResult(**task, dataset_type=dataset_id, dataset_name=report.dataset_name,
                                  dataset_split=report.split, metric_type="robust_accuracy",
                                  metric_name=report.adversarial_name.replace(" accuracy", " top-1 accuracy"),
                                  metric_value=round(100 * report.adversarial["robust_accuracy"], 2)))
    for name, accuracy in report.natural_shifts.items():
        source = report.natural_shift_datasets.get(name, {})  # its Hub id, so the Hub links the result
        results.append(EvalResult(**task, dataset_type=plain_name(source.get("dataset") or name), dataset_name=name,
                                  dataset_config=source.get("config"), dataset_split=source.get("split"),
                                  metric_type="accuracy", metric_name="Top-1 accuracy",
                                  metric_value=round(100 * accuracy, 2)))
    return results


def model_card(report: RobustnessReport, *, method: str, teacher: str | None, train_dataset: str,
               settings: dict[str, str], model_name: str, student_init: str | None = None, repo_id: str | None = None,
               architecture: str | None = None, num_train_examples: int | None = None, license: str | None = None,
               plot_file: str | None = PLOT_FILE, teacher_report: RobustnessReport | None = None,
               conversion: str | None = None, timm: str | None = None) -> ModelCard:
    """The student's card, rendered from ``model_cards/robust_student.md``; with the teacher's
    report, its numbers stand beside the student's (what distillation bought). ``method="evaluated"``
    cards a model this package did not train (``student_init`` its source, ``conversion`` the
    sentence of its ``conversion.json``); ``timm`` says what of it runs timm's code (``"model"``
    or ``"processor"``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    method_name, method_summary = METHODS[method]
    evaluated = method == "evaluated"
    dataset_id = plain_name(train_dataset)
    card_data = ModelCardData(
        model_name=model_name, library_name="transformers",
        pipeline_tag="image-classification", license=license,
        base_model=student_init if is_hub_id(student_init) and "/" in (student_init or "") else None,
        datasets=[dataset_id] if is_hub_id(train_dataset) and "/" in train_dataset and not evaluated else None,
        tags=["hf_robust_distill", "robustness", *([] if evaluated else ["knowledge-distillation"]),
              *METHOD_TAGS[method]],
        eval_results=eval_results(report, dataset_id),
    )
    baseline = report.baseline or {}
    teacher_headline = teacher_report.headline() if teacher_report is not None else {}
    if teacher_headline and baseline.get("name") == teacher_report.model_name and "accuracy" in baseline:
        teacher_headline.update({k: 100.0 for k in ("mCE", "relative mCE") if k in report.headline()})  # the baseline
    return ModelCard.from_template(
        card_data, template_path=str(CARD_TEMPLATE), model_name=model_name,
        repo_id=repo_id or REPO_PLACEHOLDER.format(name=model_name), report=report, headline=report.headline(),
        teacher_headline=teacher_headline, table=report.to_markdown(reference=teacher_report),
        chance_percent=None if report.chance_accuracy is None else 100 * report.chance_accuracy,
        method_name=method_name, method_summary=method_summary, teacher=public_name(teacher),
        student_init=public_name(student_init), evaluated=evaluated, source=public_name(student_init),
        conversion=conversion, license=license, needs_timm=timm is not None, timm_model=timm == "model",
        train_dataset=public_name(train_dataset) if is_hub_id(train_dataset) else f"`{dataset_id}`",
        eval_dataset=f"`{plain_name(report.dataset_name)}`" + (f" ({report.split_description})"
                                                                 if report.split_description else ""),
        num_train_examples=num_train_examples, settings=settings, plot_file=plot_file,
        architecture_phrase=(f"a {architecture}" if "`" in architecture else f"a `{architecture}`") if architecture
        else "an",
        backends_phrase=_backends_phrase(report.backends),
        protocol_phrase=PROTOCOLS.get(report.protocol, report.protocol),
        baseline_phrase=("AlexNet's ImageNet-C errors" if baseline.get("name") == "AlexNet"
                         else f"the errors of {public_name(baseline.get('name'))} on the same images"),
    )


def _backends_phrase(backends: dict[str, str]) -> str:
    used = set(backends.values())
    if used == {"torch"}:
        return "the package's batched torch ports of ImageNet-C"
    if used == {"reference"}:
        return "the reference ImageNet-C code (imagecorruptions)"
    if used == {"released"}:
        return "Hendrycks & Dietterich and read from the released ImageNet-C images"
    reference = sorted(c for c, b in backends.items() if b == "reference")
    return f"the package's torch ports of ImageNet-C, and the reference code for {', '.join(reference)}"


def write_student_card(output_dir: str, report: RobustnessReport, teacher_report: RobustnessReport | None = None,
                       **card_kwargs) -> dict[str, str]:
    """Writes the report (JSON), its plot and the model card into ``output_dir``, next to the
    student's weights, the teacher's numbers beside the student's when its report is given: the
    folder is then ready for ``push_robust_student``."""
    paths = {"report": report.save(os.path.join(output_dir, REPORT_FILE)),
             "plot": os.path.join(output_dir, PLOT_FILE)}
    report.plot(paths["plot"], reference=teacher_report)
    card = model_card(report, teacher_report=teacher_report, **card_kwargs)
    paths["card"] = os.path.join(output_dir, CARD_FILE)
    card.save(paths["card"])
    return paths
