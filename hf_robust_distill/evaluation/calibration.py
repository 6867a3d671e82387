"""Calibration under shift: the expected calibration error over 15 equal-width confidence bins (Guo et
al. 2017, as torchmetrics' ``MulticlassCalibrationError(n_bins=15, norm="l1")`` computes it) and the
negative log-likelihood, kept as per-bin sums that add up across batches (and processes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

BINS = 15


def _zeros() -> torch.Tensor:
    return torch.zeros(BINS, dtype=torch.float64)


@dataclass
class Scores:
    """What a classifier scored on a set, as sums: per confidence bin the images, the correct answers
    and the confidence, and over all images the correct answers and the negative log-likelihood."""

    count: torch.Tensor = field(default_factory=_zeros)
    correct: torch.Tensor = field(default_factory=_zeros)
    confidence: torch.Tensor = field(default_factory=_zeros)
    nll: float = 0.0

    def add(self, logits: torch.Tensor, targets: torch.Tensor, hits: torch.Tensor) -> None:
        """One batch: ``logits`` over the scored classes (on any device; only a value per image comes
        back), ``targets`` the true class's position among them (-1: none of them), ``hits`` whether
        each answer is right (as accuracy counts it)."""
        log_probs = F.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)
        targets = targets.to(log_probs.device)
        known = targets >= 0
        nll = -log_probs[known].gather(1, targets[known, None]).sum()
        confidence = log_probs.max(-1).values.exp().double().cpu()
        bins = (confidence * BINS).ceil().long().sub_(1).clamp_(0, BINS - 1)  # (k/15, (k+1)/15]
        for total, values in ((self.count, torch.ones_like(confidence)), (self.correct, hits.to(torch.float64)),
                              (self.confidence, confidence)):
            total.index_add_(0, bins, values.cpu())
        self.nll += float(nll)

    def summed(self, total: Callable[[torch.Tensor], torch.Tensor]) -> Scores:
        """These sums added up by ``total`` (``Shard.sum``: over the processes that scored a share)."""
        nll = torch.tensor([self.nll], dtype=torch.float64)
        packed = total(torch.cat([self.count, self.correct, self.confidence, nll]))
        count, correct, confidence = packed[:-1].split(BINS)
        return Scores(count, correct, confidence, float(packed[-1]))

    @property
    def total(self) -> int:
        return int(self.count.sum())

    @property
    def accuracy(self) -> float:
        return float(self.correct.sum()) / max(self.total, 1)

    @property
    def ece(self) -> float:
        """Sum over bins of |accuracy - confidence| weighted by the bin's share of the images."""
        return float((self.correct - self.confidence).abs().sum()) / max(self.total, 1)

    @property
    def mean_nll(self) -> float:
        return self.nll / max(self.total, 1)

    def calibration(self) -> dict[str, float]:
        """``{"ece", "nll"}`` as the report stores them."""
        return {"ece": self.ece, "nll": self.mean_nll}


def finite_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits, unless a diverged model made NaN or Inf ones: their argmax would score as a class."""
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError("the model outputs NaN or Inf logits: its weights diverged; retrain it from a good "
                                 "checkpoint rather than evaluating it")
    return logits
