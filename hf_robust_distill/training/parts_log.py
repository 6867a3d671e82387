"""The loss parts the trainer logs beside the total: summed on the device every micro-batch and
averaged over micro-batches and processes only when logged, training and evaluation apart."""

from __future__ import annotations

import torch


class LossPartsLog:
    """Running sums of the named loss parts; ``last`` holds the latest micro-batch's parts (what a
    divergence report names)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.last: dict[str, torch.Tensor] = {}
        self._sums = {True: {}, False: {}}  # training?, name -> summed tensor
        self._counts = {True: 0, False: 0}

    def add(self, parts: dict[str, torch.Tensor], *, training: bool) -> None:
        sums = self._sums[training]
        for name, value in parts.items():
            value = value.detach()
            sums[name] = sums[name] + value if name in sums else value
        self._counts[training] += 1
        self.last = parts

    def restart(self, *, training: bool) -> None:
        self._sums[training], self._counts[training] = {}, 0

    def means(self, *, training: bool) -> dict[str, float]:
        """Means since the last call, averaged over processes; the sums start again."""
        sums, count = self._sums[training], self._counts[training]
        self.restart(training=training)
        if not sums:
            return {}
        names = list(sums)
        means = torch.stack([sums[n] for n in names]) / count
        means = self.accelerator.reduce(means, reduction="mean")
        return {n: round(v, 6) for n, v in zip(names, means.tolist())}
