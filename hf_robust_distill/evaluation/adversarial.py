"""Adversarial robustness on request, as DAD's own code reports it: top-1 accuracy under AutoAttack at an
Linf or L2 budget, on a subset of the evaluation set, through the Adversarial Robustness Toolbox (ART,
an optional extra: ``pip install 'hf-robust-distill[adversarial]'``).

Suites: ``standard`` is ART's AutoAttack (APGD with cross-entropy and with the DLR loss, DeepFool and
Square, each on the images the earlier ones left correct); ``apgd`` keeps its two APGD attacks, the
cheap screen. A budget reads as ``linf:4/255`` or ``l2:0.5``, in [0, 1] pixel units.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
import torch

NORMS = {"linf": np.inf, "l2": 2}
SUITES = {"standard": ["APGD-CE", "APGD-DLR", "DeepFool", "Square"], "apgd": ["APGD-CE", "APGD-DLR"]}
"""The attacks of each suite, in the order AutoAttack runs them."""


def _art():
    try:
        import art
        from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, DeepFool, SquareAttack
        from art.estimators.classification import PyTorchClassifier
    except ImportError as error:
        raise ImportError("--adversarial_eval runs AutoAttack through the Adversarial Robustness Toolbox: pip install "
                          "'hf-robust-distill[adversarial]' (adversarial-robustness-toolbox)") from error
    return art, AutoAttack, (AutoProjectedGradientDescent, DeepFool, SquareAttack), PyTorchClassifier


def check_installed() -> None:
    _art()


@dataclass(frozen=True)
class AttackBudget:
    """An attack's norm ("linf" or "l2"), its budget in [0, 1] pixel units as written (``"4/255"``) and
    the suite that spends it."""

    norm: str
    eps_text: str
    suite: str = "standard"

    @classmethod
    def parse(cls, spec: str, suite: str = "standard") -> AttackBudget:
        match = re.fullmatch(r"\s*(linf|l2)\s*:\s*([0-9.]+(?:/[0-9.]+)?)\s*", spec.lower())
        if not match:
            raise ValueError(f"cannot read the attack budget {spec!r}; write norm:eps in [0, 1] pixel units, e.g. "
                             "linf:4/255 or l2:0.5")
        budget = cls(match.group(1), match.group(2), suite)
        if not 0 < budget.eps <= 1:
            raise ValueError(f"the attack budget {budget.eps_text} is not in (0, 1] (pixel units; 4/255 is 0.0157)")
        if suite not in SUITES:
            raise ValueError(f"unknown attack suite {suite!r}; choose from {', '.join(SUITES)}")
        return budget

    @property
    def eps(self) -> float:
        return float(Fraction(self.eps_text)) if "/" in self.eps_text else float(self.eps_text)

    def __str__(self) -> str:
        return f"{'Linf' if self.norm == 'linf' else 'L2'} {self.eps_text}"


def adversarial_scores(classifier: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       budget: AttackBudget, num_classes: int, batch_size: int = 64, seed: int = 0) -> dict:
    """``{"correct", "robust"}``: how many of ``images`` (uint8, (N, 3, H, W)) ``classifier`` (of [0, 1]
    pixels) gets right clean, and under ``budget``'s attacks."""
    _, AutoAttack, (APGD, DeepFool, SquareAttack), PyTorchClassifier = _art()
    device = next(classifier.parameters()).device
    x = images.float().div(255).numpy()
    y = labels.numpy()
    estimator = PyTorchClassifier(model=classifier, loss=torch.nn.CrossEntropyLoss(), input_shape=x.shape[1:],
                                  nb_classes=num_classes, clip_values=(0.0, 1.0),
                                  device_type="gpu" if device.type == "cuda" else "cpu")
    norm, eps = NORMS[budget.norm], budget.eps
    restarts = 5 if budget.suite == "standard" else 1
    attacks = [APGD(estimator=estimator, norm=norm, eps=eps, eps_step=eps / 4, max_iter=100, nb_random_init=restarts,
                    batch_size=batch_size, loss_type=loss, verbose=False)
               for loss in ("cross_entropy", "difference_logits_ratio")]
    if budget.suite == "standard":  # ART's AutoAttack defaults, without their progress bars
        attacks += [DeepFool(classifier=estimator, max_iter=100, epsilon=1e-3, nb_grads=10, batch_size=batch_size,
                             verbose=False),
                    SquareAttack(estimator=estimator, norm=norm, max_iter=5000, eps=eps, p_init=0.8, nb_restarts=5,
                                 batch_size=batch_size, verbose=False)]
    torch.manual_seed(seed)
    np.random.seed(seed)
    attack = AutoAttack(estimator, norm=norm, eps=eps, eps_step=eps / 4, attacks=attacks, batch_size=batch_size)
    adversarial = attack.generate(x=x, y=y)
    correct = estimator.predict(x, batch_size=batch_size).argmax(1) == y
    robust = (estimator.predict(adversarial, batch_size=batch_size).argmax(1) == y) & correct
    return {"correct": int(correct.sum()), "robust": int(robust.sum())}


def adversarial_record(budget: AttackBudget, num_examples: int, correct: int, robust: int) -> dict:
    """What the report keeps: the budget, the subset's size, clean and robust accuracy on it, the attacks
    and the package that ran them."""
    return {**asdict(budget), "eps": budget.eps, "num_examples": num_examples,
            "clean_accuracy": correct / max(num_examples, 1), "robust_accuracy": robust / max(num_examples, 1),
            "attacks": SUITES[budget.suite], "package": f"adversarial-robustness-toolbox {_art()[0].__version__}"}
