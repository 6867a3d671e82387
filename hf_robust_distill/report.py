"""``RobustnessReport``: a model's accuracy on clean, corrupted and shifted images, its corruption
errors and mCE, saved as JSON and drawn with matplotlib."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property

from .metrics.corruption_robustness.corruption_robustness import IMAGENET_C_CORRUPTIONS, summarize

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
        return self.summary.get("mce")

    @property
    def relative_mce(self) -> float | None:
        return self.summary.get("relative_mce")

    @property
    def mce_is_complete(self) -> bool:
        """mCE over all 15 ImageNet-C corruptions (comparable with published figures when the
        baseline is AlexNet and the data is ImageNet)."""
        return set(IMAGENET_C_CORRUPTIONS) <= set(self.corruption_errors)

    @property
    def severities(self) -> list[int]:
        return sorted({s for row in self.accuracy.values() for s in row})

    def mean_accuracy(self, corruption: str) -> float:
        row = self.accuracy[corruption]
        return sum(row.values()) / len(row)

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
        data["summary"] = self.summary
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RobustnessReport:
        data = {k: v for k, v in data.items() if k != "summary"}
        data["accuracy"] = _int_severities(data["accuracy"])
        data["image_size"] = tuple(data["image_size"])
        if data.get("baseline") and "accuracy" in data["baseline"]:
            data["baseline"] = {**data["baseline"], "accuracy": _int_severities(data["baseline"]["accuracy"])}
        return cls(**data)

    def save(self, path: str) -> str:
        """Writes the JSON (into ``path``/robustness_report.json when ``path`` is a folder)."""
        if os.path.isdir(path):
            path = os.path.join(path, REPORT_FILE)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    @classmethod
    def load(cls, path: str) -> RobustnessReport:
        if os.path.isdir(path):
            path = os.path.join(path, REPORT_FILE)
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def plot(self, path: str | None = None):
        """Accuracy against severity, one line per corruption, the clean accuracy as a dashed
        line; saved to ``path`` (a folder gets robustness.png) when given. Returns the figure."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
        colors = plt.get_cmap("tab20").colors
        for i, (corruption, row) in enumerate(sorted(self.accuracy.items())):
            severities = sorted(row)
            ax.plot(severities, [100 * row[s] for s in severities], marker="o", markersize=3, linewidth=1.2,
                    color=colors[i % len(colors)], label=corruption.replace("_", " "))
        ax.axhline(100 * self.clean_accuracy, color="black", linestyle="--", linewidth=1.5,
                   label=f"clean ({100 * self.clean_accuracy:.1f})")
        ax.set_xticks(self.severities or [1, 2, 3, 4, 5])
        ax.set_xlabel("severity")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_ylim(0, 100)
        title = f"{os.path.basename(self.model_name.rstrip('/'))} on {self.dataset_name}"
        if self.mce is not None:
            title += f"  (mCE {self.mce:.1f} vs {os.path.basename(str(self.baseline['name']).rstrip('/'))})"
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        if path is not None:
            if os.path.isdir(path):
                path = os.path.join(path, PLOT_FILE)
            fig.savefig(path, dpi=120)
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
        return out

    def to_markdown(self) -> str:
        """Accuracy per corruption and severity, the mean, and the CE, in %, as a Markdown table."""
        severities = self.severities
        errors = self.corruption_errors
        header = ["corruption", *[f"s{s}" for s in severities], "mean"] + (["CE"] if errors else [])
        lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines.append("| clean | " + " | ".join([""] * len(severities)) + f" | {100 * self.clean_accuracy:.1f} |"
                     + (" |" if errors else ""))
        for corruption in sorted(self.accuracy):
            row = self.accuracy[corruption]
            cells = [f"{100 * row[s]:.1f}" if s in row else "" for s in severities]
            cells.append(f"{100 * self.mean_accuracy(corruption):.1f}")
            if errors:
                cells.append(f"{errors[corruption]:.1f}" if corruption in errors else "")
            lines.append(f"| {corruption} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _int_severities(grid: dict) -> dict[str, dict[int, float]]:
    return {c: {int(s): float(a) for s, a in row.items()} for c, row in grid.items()}
