"""Accuracy under AutoAttack on request, on a classifier whose robustness is known by hand: it answers
by the mean of each colour channel, so no Linf budget below half the gap between a channel's mean and
the others' can turn its answer, and one above it turns every answer."""

import sys

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image

from hf_robust_distill.cli.arguments import RobustnessArguments
from hf_robust_distill.cli.finish import _print_report
from hf_robust_distill.evaluation import RobustnessReport, evaluate_robustness
from hf_robust_distill.evaluation.adversarial import AttackBudget
from hf_robust_distill.hub.card import eval_results
from hf_robust_distill.models.pixels import PixelPreprocessor
from hf_robust_distill.utils.problems import PreflightError, Problems

COLOURS = [(220, 20, 20), (20, 220, 20), (20, 20, 220)]  # channel means 0.86 against 0.08: a gap of 0.78


class ColourClassifier(torch.nn.Module):
    """Three classes, red, green and blue: logits are 20 x each channel's mean, of [0, 1] pixels."""

    preprocessor = PixelPreprocessor((0, 0, 0), (1, 1, 1), (32, 32))

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, pixels):
        return self.scale * self.preprocessor(pixels).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def colours():
    images = [Image.fromarray(np.full((32, 32, 3), colour, dtype=np.uint8)) for colour in COLOURS for _ in range(3)]
    return Dataset.from_dict({"image": images, "label": [k for k in range(3) for _ in range(3)]},
                             features=Features({"image": ImageFeature(), "label": ClassLabel(names=["r", "g", "b"])}))


def evaluate(colours, tmp_path, spec, suite, examples=6) -> RobustnessReport:
    return evaluate_robustness(ColourClassifier(), colours, ["contrast"], severities=(1,), image_size=32,
                               cache_dir=str(tmp_path), progress=False, protocol="model-resolution",
                               adversarial=AttackBudget.parse(spec, suite), adversarial_examples=examples)


def test_a_budget_below_the_margin_leaves_every_answer_and_one_above_turns_them_all(colours, tmp_path, capsys):
    safe = evaluate(colours, tmp_path, "linf:8/255", "apgd")
    assert safe.adversarial["num_examples"] == 6 and safe.adversarial["clean_accuracy"] == 1.0
    assert safe.adversarial["robust_accuracy"] == 1.0 and safe.adversarial["attacks"] == ["APGD-CE", "APGD-DLR"]
    assert safe.adversarial["eps"] == pytest.approx(8 / 255) and safe.adversarial["norm"] == "linf"
    broken = evaluate(colours, tmp_path, "linf:0.45", "standard", examples=100)  # more than the set: all 9
    assert broken.adversarial["num_examples"] == 9 and broken.adversarial["robust_accuracy"] == 0.0
    assert broken.adversarial["attacks"] == ["APGD-CE", "APGD-DLR", "DeepFool", "Square"]
    assert broken.adversarial["package"].startswith("adversarial-robustness-toolbox ")
    # The report, its headline (the card's table) and the card's model-index carry budget and subset.
    again = RobustnessReport.from_dict(broken.to_dict())
    assert again.headline()["AutoAttack Linf 0.45 accuracy (9 images)"] == 0.0
    results = {r.metric_name: r.metric_value for r in eval_results(again, "colours")}
    assert results["AutoAttack Linf 0.45 top-1 accuracy (9 images)"] == 0.0
    _print_report("student", again, {"card": "c", "plot": "p", "report": "r"})  # and the recipes' console summary
    assert "AutoAttack Linf 0.45 accuracy (9 images) 0.0%" in capsys.readouterr().out


def test_budgets_are_read_and_bad_ones_named():
    assert AttackBudget.parse("linf:4/255").eps == pytest.approx(4 / 255)
    assert str(AttackBudget.parse("L2:0.5")) == "L2 0.5"
    for spec in ("4/255", "linf:2", "l1:0.1"):
        with pytest.raises(ValueError, match="linf:4/255|not in"):
            AttackBudget.parse(spec)


def test_without_the_attack_package_the_flag_is_refused_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "art", None)  # ``import art`` now fails
    problems = Problems(work="evaluation")
    RobustnessArguments(adversarial_eval="linf:4/255").check(problems)
    with pytest.raises(PreflightError, match=r"--adversarial_eval.*pip install .hf-robust-distill\[adversarial\]"):
        problems.raise_if_any()
