"""``RobustnessReport``: a model's accuracy on clean, corrupted and shifted images, its corruption
errors and mCE, saved as JSON and drawn with matplotlib."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property

from ..data.splits import SplitSource
from ..metrics.corruption_robustness.corruption_robustness import IMAGENET_C_CORRUPTIONS, summarize
from .protocols import MODEL_RESOLUTION, PUBLISHED_PROTOCOLS

REPORT_FILE = "robustness_report.json"
PLOT_FILE = "robustness.png"


@dataclass
class RobustnessReport:
    """``accuracy[corruption][severity]`` and ``clean_accuracy`` are top-1 fractions.

    ``baseline`` is what corruption errors are normalised by: ``{"name": "AlexNet"}`` (its
    published ImageNet-C errors) or another model's ``{"name", "clean_accuracy", "accuracy"}``
    on the same images; ``None`` gives accuracies only. ``backends`` says which implementation
    made each corruption (``"torch"`` ports or the ``"reference"`` ImageNet-C code).
    """

    model_name: str
    dataset_name: str
    num_examples: int
    image_size: tuple[int, int]
    clean_accuracy: float
    accuracy: dict[str, dict[int, float]]
    backends: dict[str, str]
    seed: int = 0
    split: str | None = None
    natural_shifts: dict[str, float] = field(default_factory=dict)
    baseline: dict | None = None
    skipped_images: int = 0  # images of the evaluation set that did not decode (left out of every number)
    chance_accuracy: float | None = None  # always answering the most frequent class
    protocol: str = MODEL_RESOLUTION
    """How the corrupted images were made (``protocols.PROTOCOLS``)."""
    imagenet_1k: bool = False
    """Whether the evaluation set's classes are ImageNet-1k's (published ImageNet-C figures are)."""
    released_source: str | None = None
    """The folder or dataset of released ImageNet-C images read (the released protocol)."""
    natural_shift_datasets: dict[str, dict] = field(default_factory=dict)
    """Where each natural shift's images come from: ``{name: {"dataset", "config", "split"}}``."""
    adversarial: dict | None = None
    """Accuracy under AutoAttack, when asked for: ``{"norm", "eps", "eps_text", "suite", "num_examples",
    "clean_accuracy", "robust_accuracy", "attacks", "package"}`` (``adversarial.adversarial_record``)."""
    held_out_fraction: float | None = None
    """The share of ``split`` held out as the evaluation images (a dataset without an evaluation split)."""
    split_seed: int | None = None
    """The seed that drew the evaluation images (held out, or the demo digits' test split); ``None``: a
    named split, nothing drawn."""
    images_digest: str | None = None
    """sha256 of the evaluation images' encoded files and labels (``data.images_digest``): two reports
    with the same digest scored the same images; ``None`` in reports written before it was kept."""
    calibration: dict = field(default_factory=dict)
    """``{"clean": {"ece", "nll"}, "corrupted": {corruption: {severity: {...}}}, "natural_shifts": {name:
    {...}}}``: expected calibration error (15 bins) and negative log-likelihood; empty in reports
    written before they were measured."""

    @property
    def split_description(self) -> str:
        """Where the evaluation images come from, e.g. "10% of its train split, held out with split seed 42"."""
        return SplitSource(self.split, self.held_out_fraction, self.split_seed).describe()

    # ------------------------------------------------------------------ numbers

    @cached_property
    def summary(self) -> dict:
        baseline = None
        if self.baseline is not None:
            baseline = "alexnet" if "accuracy" not in self.baseline else {
                "grid": self.baseline["accuracy"], "clean_accuracy": self.baseline.get("clean_accuracy")}
        return summarize(self.accuracy, self.clean_accuracy, baseline)

    @property
    def mean_corrupted_accuracy(self) -> float | None:
        return self.summary["mean_corrupted_accuracy"]

    @property
    def corruption_errors(self) -> dict[str, float]:
        return self.summary.get("corruption_errors", {})

    @property
    def mce(self) -> float | None:
        """mCE; ``None`` when undefined (no baseline, or a baseline that never errs on a corruption)."""
        return _defined(self.summary.get("mce"))

    @property
    def relative_mce(self) -> float | None:
        """Relative mCE; ``None`` when undefined (a baseline that loses no accuracy to a corruption)."""
        return _defined(self.summary.get("relative_mce"))

    @property
    def mce_is_complete(self) -> bool:
        """mCE over all 15 ImageNet-C corruptions."""
        return set(IMAGENET_C_CORRUPTIONS) <= set(self.corruption_errors)

    @property
    def comparable_with_published(self) -> bool:
        """Whether the mCE may stand beside published ImageNet-C figures: made by one of the published
        protocols, on ImageNet-1k's classes, over all 15 corruptions, against AlexNet's errors."""
        return (self.protocol in PUBLISHED_PROTOCOLS and self.imagenet_1k and self.mce_is_complete
                and (self.baseline or {}).get("name") == "AlexNet")

    @property
    def clean_ece(self) -> float | None:
        return self.calibration.get("clean", {}).get("ece")

    @property
    def mean_corrupted_ece(self) -> float | None:
        """ECE averaged over every corruption and severity, as the mean corrupted accuracy averages."""
        cells = [cell["ece"] for row in self.calibration.get("corrupted", {}).values() for cell in row.values()]
        return sum(cells) / len(cells) if cells else None

    @property
    def severities(self) -> list[int]:
        return sorted({s for row in self.accuracy.values() for s in row})

    def mean_accuracy(self, corruption: str) -> float:
        row = self.accuracy[corruption]
        return sum(row.values()) / len(row)

    @property
    def at_or_below_chance(self) -> bool:
        """Whether the clean accuracy is no better than always answering the most frequent class."""
        return self.chance_accuracy is not None and self.clean_accuracy <= self.chance_accuracy + 1e-9

    def as_baseline(self) -> dict:
        """This report as the ``baseline`` of another model's report."""
        return {"name": self.model_name, "clean_accuracy": self.clean_accuracy, "accuracy": self.accuracy}

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict:
        data = asdict(self)
        data["accuracy"] = {c: {str(s): a for s, a in row.items()} for c, row in self.accuracy.items()}
        if self.baseline and "accuracy" in self.baseline:
            data["baseline"]["accuracy"] = {c: {str(s): a for s, a in row.items()}
                                            for c, row in self.baseline["accuracy"].items()}
        if self.calibration.get("corrupted"):
            data["calibration"]["corrupted"] = {c: {str(s): v for s, v in row.items()}
                                                for c, row in self.calibration["corrupted"].items()}
        data["summary"] = self.summary
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RobustnessReport:
        data = {k: v for k, v in data.items() if k != "summary"}
        data["accuracy"] = _int_severities(data["accuracy"])
        data["image_size"] = tuple(data["image_size"])
        if data.get("calibration", {}).get("corrupted"):
            data["calibration"] = {**data["calibration"], "corrupted": {
                c: {int(s): v for s, v in row.items()} for c, row in data["calibration"]["corrupted"].items()}}
        if data.get("baseline") and "accuracy" in data["baseline"]:
            data["baseline"] = {**data["baseline"], "accuracy": _int_severities(data["baseline"]["accuracy"])}
        return cls(**data)

    def save(self, path: str) -> str:
        """Writes the JSON (into ``path``/robustness_report.json when ``path`` is a folder, made when
        missing)."""
        path = _file_path(path, REPORT_FILE)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    @classmethod
    def load(cls, path: str) -> RobustnessReport:
        if os.path.isdir(path):
            path = os.path.join(path, REPORT_FILE)
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def mean_accuracy_by_severity(self) -> dict[int, float]:
        """Accuracy averaged over corruptions at each severity, with the clean accuracy at 0."""
        out = {0: self.clean_accuracy}
        for s in self.severities:
            row = [grid[s] for grid in self.accuracy.values() if s in grid]
            out[s] = sum(row) / len(row)
        return out

    def plot(self, path: str | None = None, reference: RobustnessReport | None = None,
             reference_label: str = "teacher"):
        """Left: accuracy against severity, averaged over corruptions (0 is clean); right: each
        corruption's accuracy averaged over severities. With ``reference`` (the teacher's report)
        both panels show it beside this model. Saved to ``path`` (a folder gets robustness.png, and
        is made when missing) when given; returns the figure."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        models = [(_short(self.model_name), self, "tab:blue")]
        if reference is not None:
            models.append((f"{reference_label} ({_short(reference.model_name)})", reference, "tab:gray"))
        corruptions = sorted(self.accuracy)
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained",
                                          gridspec_kw={"width_ratios": [1, 1.25]})
        for label, report, color in models:
            curve = report.mean_accuracy_by_severity()
            left.plot(list(curve), [100 * v for v in curve.values()], marker="o", color=color, label=label,
                      linestyle="-" if report is self else "--")
        left.set_xticks(sorted(self.mean_accuracy_by_severity()))
        left.set_xticklabels(["clean", *map(str, self.severities)])
        left.set_xlabel("severity")
        left.set_ylabel("top-1 accuracy (%), mean over corruptions")
        left.set_ylim(0, 100)
        left.grid(alpha=0.3)
        left.legend(fontsize=8, loc="lower left")
        height = 0.8 / len(models)
        for k, (label, report, color) in enumerate(models):
            values = [100 * report.mean_accuracy(c) if c in report.accuracy else float("nan") for c in corruptions]
            right.barh([i + (k - (len(models) - 1) / 2) * height for i in range(len(corruptions))], values,
                       height=height, color=color, label=label)
        right.set_yticks(range(len(corruptions)))
        right.set_yticklabels([c.replace("_", " ") for c in corruptions], fontsize=8)
        right.invert_yaxis()
        right.set_xlim(0, 100)
        right.set_xlabel("top-1 accuracy (%), mean over severities")
        right.grid(alpha=0.3, axis="x")
        title = f"{_short(self.model_name)} on {self.dataset_name}"
        if self.mce is not None:
            title += f"  (mCE {self.mce:.1f} vs {_short(str(self.baseline['name']))})"
        fig.suptitle(title, fontsize=10)
        if path is not None:
            fig.savefig(_file_path(path, PLOT_FILE), dpi=120)
            plt.close(fig)
        return fig

    # ------------------------------------------------------------------ text

    def headline(self) -> dict[str, float]:
        """The few numbers a model card leads with, in %."""
        out = {"clean accuracy": 100 * self.clean_accuracy}
        if self.mean_corrupted_accuracy is not None:
            out["mean corrupted accuracy"] = 100 * self.mean_corrupted_accuracy
        if self.mce is not None:
            out["mCE"] = self.mce
        if self.relative_mce is not None:
            out["relative mCE"] = self.relative_mce
        out.update({f"{name} accuracy": 100 * acc for name, acc in self.natural_shifts.items()})
        if self.clean_ece is not None:
            out["clean ECE (%)"] = 100 * self.clean_ece
        if self.mean_corrupted_ece is not None:
            out["mean corrupted ECE (%)"] = 100 * self.mean_corrupted_ece
        if self.adversarial:
            out[self.adversarial_name] = 100 * self.adversarial["robust_accuracy"]
        return out

    @property
    def adversarial_name(self) -> str:
        """The robust accuracy's name: attack, budget and subset ("AutoAttack Linf 4/255 accuracy (1000 images)")."""
        a = self.adversarial or {}
        norm = "Linf" if a.get("norm") == "linf" else "L2"
        suite = "AutoAttack" if a.get("suite") == "standard" else "APGD"
        return f"{suite} {norm} {a.get('eps_text')} accuracy ({a.get('num_examples')} images)"

    def to_markdown(self, reference: RobustnessReport | None = None, reference_label: str = "teacher") -> str:
        """Accuracy per corruption and severity and its mean, in %, as a Markdown table; with
        ``reference`` (the teacher's report) also its mean and the difference; and the CE."""
        severities = self.severities
        errors = self.corruption_errors
        compare = [reference_label, "Δ"] if reference is not None else []
        header = ["corruption", *[f"s{s}" for s in severities], "mean", *compare] + (["CE"] if errors else [])
        lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]

        def compared(mine: float, theirs: float | None) -> list[str]:
            if reference is None:
                return []
            return ["", ""] if theirs is None else [f"{100 * theirs:.1f}", f"{100 * (mine - theirs):+.1f}"]

        clean = [*[""] * len(severities), f"{100 * self.clean_accuracy:.1f}",
                 *compared(self.clean_accuracy, reference.clean_accuracy if reference else None)]
        lines.append("| clean | " + " | ".join(clean + ([""] if errors else [])) + " |")
        for corruption in sorted(self.accuracy):
            row = self.accuracy[corruption]
            mean = self.mean_accuracy(corruption)
            cells = [f"{100 * row[s]:.1f}" if s in row else "" for s in severities]
            cells.append(f"{100 * mean:.1f}")
            theirs = reference.mean_accuracy(corruption) if reference and corruption in reference.accuracy else None
            cells += compared(mean, theirs)
            if errors:
                cells.append(f"{errors[corruption]:.1f}" if corruption in errors else "")
            lines.append(f"| {corruption} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _defined(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _short(name: str) -> str:
    return os.path.basename(str(name).rstrip("/"))


def _int_severities(grid: dict) -> dict[str, dict[int, float]]:
    return {c: {int(s): float(a) for s, a in row.items()} for c, row in grid.items()}


def _file_path(path: str, name: str) -> str:
    """Where a writer given ``path`` writes: ``path/name`` when ``path`` is a folder or reads as one
    (no file suffix, or a trailing slash), else ``path``; the folder is made when missing."""
    path = os.fspath(path)
    if os.path.isdir(path) or path.endswith(("/", os.sep)) or not os.path.splitext(path)[1]:
        path = os.path.join(path, name)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path
