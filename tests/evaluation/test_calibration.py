"""Calibration under shift: ECE over 15 bins and NLL, checked against values computed by hand, kept
in the report (clean, every corruption and severity) and shown on the card beside accuracy."""

import math

import pytest
import torch

from hf_robust_distill.evaluation import RobustnessReport
from hf_robust_distill.evaluation.calibration import Scores


def logits_of(*probabilities):
    return torch.log(torch.tensor(probabilities, dtype=torch.float64))


def test_ece_and_nll_equal_the_values_computed_by_hand():
    scores = Scores()
    logits = logits_of((0.9, 0.1), (0.25, 0.75), (0.62, 0.38), (0.65, 0.35))
    labels = torch.tensor([0, 0, 0, 0])
    scores.add(logits[:2], labels[:2], logits[:2].argmax(-1) == labels[:2])  # two batches add up
    scores.add(logits[2:], labels[2:], logits[2:].argmax(-1) == labels[2:])
    # bins (k/15, (k+1)/15]: 0.9 -> bin 13, right; 0.75 -> bin 11, wrong; 0.62 and 0.65 -> bin 9, both right
    expected_ece = (abs(1 - 0.9) + abs(0 - 0.75) + abs(2 - (0.62 + 0.65))) / 4
    assert scores.ece == pytest.approx(expected_ece, abs=1e-12)
    assert scores.mean_nll == pytest.approx(-(math.log(0.9) + math.log(0.25) + math.log(0.62) + math.log(0.65)) / 4)
    assert scores.accuracy == 0.75 and scores.total == 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_sums_gathered_batch_by_batch_give_torchmetrics_ece_and_nll(seed):
    """The maintained implementations on the whole set at once: torchmetrics' ``MulticlassCalibrationError``
    (15 bins, L1) and torch's cross-entropy."""
    from torchmetrics.classification import MulticlassCalibrationError

    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(997, 10, generator=generator, dtype=torch.float64) * (1 + seed)
    labels = torch.randint(0, 10, (997,), generator=generator)
    scores = Scores()
    for part_logits, part_labels in zip(logits.split(64), labels.split(64)):
        scores.add(part_logits, part_labels, part_logits.argmax(-1) == part_labels)
    reference = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")
    reference.update(logits.softmax(-1), labels)
    assert scores.ece == pytest.approx(float(reference.compute()), abs=1e-6)
    assert scores.mean_nll == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-12)


def test_labels_outside_the_scored_classes_count_as_wrong_and_carry_no_likelihood():
    scores = Scores()
    logits = logits_of((0.7, 0.3))
    scores.add(logits, torch.tensor([-1]), torch.tensor([False]))
    assert scores.accuracy == 0 and scores.ece == pytest.approx(0.7) and scores.nll == 0


def test_the_report_keeps_calibration_and_the_card_shows_it(tmp_path):
    calibration = {"clean": {"ece": 0.05, "nll": 0.4},
                   "corrupted": {"gaussian_noise": {1: {"ece": 0.1, "nll": 0.9}, 2: {"ece": 0.3, "nll": 1.5}}},
                   "natural_shifts": {}}
    report = RobustnessReport("m", "d", 10, (32, 32), 0.9, {"gaussian_noise": {1: 0.8, 2: 0.6}},
                              {"gaussian_noise": "torch"}, calibration=calibration)
    assert report.clean_ece == 0.05 and report.mean_corrupted_ece == pytest.approx(0.2)
    assert RobustnessReport.load(report.save(str(tmp_path))) == report  # severities read back as ints
    headline = report.headline()
    assert headline["clean ECE (%)"] == pytest.approx(5.0) and headline["mean corrupted ECE (%)"] == pytest.approx(20.0)
    old = {k: v for k, v in report.to_dict().items() if k != "calibration"}  # a report written before calibration
    assert RobustnessReport.from_dict(old).clean_ece is None and "clean ECE (%)" not in RobustnessReport.from_dict(
        old).headline()

