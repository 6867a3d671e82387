"""Mixup and CutMix with soft targets and label smoothing, on the device, after the collator.

timm's ``Mixup`` in its ``batch`` mode, which the official DAD run uses (mixup 0.8, cutmix 1.0,
label smoothing 0.1): with probability ``prob`` a batch is mixed with itself reversed, by CutMix
with probability ``switch_prob`` when both are on, else by Mixup; the mixing weight ``lam`` comes
from Beta(alpha, alpha), and CutMix corrects it to the area its box leaves. The targets mix the
same way. Every image tensor handed in (the clean batch and its DAD images) is mixed with the same
pairs, weight and box, so a DAD image stays the DAD image of its clean one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .corruptions.filters import host_seed


@dataclass(frozen=True)
class MixingSettings:
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0

    @property
    def mixes(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @property
    def active(self) -> bool:
        return self.mixes or self.label_smoothing > 0


def smoothed_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B, C) targets: ``1 - smoothing + smoothing / C`` on the label, ``smoothing / C`` elsewhere;
    a row of zeros for a sample without a label (-100), which the loss leaves out."""
    known = labels != -100
    targets = torch.full((len(labels), num_classes), smoothing / num_classes, device=labels.device)
    targets.scatter_(1, labels.clamp(min=0).unsqueeze(1), 1 - smoothing + smoothing / num_classes)
    return targets * known.unsqueeze(1)


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """timm's box: sides ``sqrt(1 - lam)`` of the image's, centred anywhere, cut at the border."""
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return (int(np.clip(cy - cut_h // 2, 0, h)), int(np.clip(cy + cut_h // 2, 0, h)),
            int(np.clip(cx - cut_w // 2, 0, w)), int(np.clip(cx + cut_w // 2, 0, w)))


def mix_batch(images: list[torch.Tensor], labels: torch.Tensor, num_classes: int, settings: MixingSettings,
              generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``images`` (each (B, 3, H, W)) mixed as one, and the (B, C) soft targets of ``labels``.

    The batch's few scalar draws (whether, which, ``lam``, the box) come from a NumPy generator
    seeded on the host from ``generator`` (``filters.host_generator``: no device sync), so a batch
    mixes the same way whenever its generator is the same. Images mix in float32, whatever their dtype.
    """
    targets = smoothed_targets(labels, num_classes, settings.label_smoothing)
    if not settings.mixes:
        return images, targets
    dtypes = [x.dtype for x in images]
    images = [x.float() for x in images]  # mixed in float32 whatever the batch's dtype
    rng = np.random.default_rng(host_seed(generator))
    if rng.random() >= settings.prob:
        return images, targets
    cutmix = settings.cutmix_alpha > 0 and (settings.mixup_alpha == 0 or rng.random() < settings.switch_prob)
    alpha = settings.cutmix_alpha if cutmix else settings.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if cutmix:
        h, w = images[0].shape[-2:]
        top, bottom, left, right = cutmix_box(h, w, lam, rng)
        mixed = []
        for x in images:
            x = x.clone()
            x[..., top:bottom, left:right] = x.flip(0)[..., top:bottom, left:right]
            mixed.append(x)
        lam = 1 - (bottom - top) * (right - left) / (h * w)
    else:
        mixed = [x * lam + x.flip(0) * (1 - lam) for x in images]
    return [x.to(dtype) for x, dtype in zip(mixed, dtypes)], targets * lam + targets.flip(0) * (1 - lam)


def check_mixing_flags(args, problems) -> None:
    """Mixup's and CutMix's fields of a ``DistillationConfig``."""
    if min(args.mixup_alpha, args.cutmix_alpha) < 0 or not (0 <= args.mixup_prob <= 1
                                                           and 0 <= args.mixup_switch_prob <= 1):
        problems.add("--mixup_alpha / --cutmix_alpha / --mixup_prob / --mixup_switch_prob",
                     "mixup_alpha and cutmix_alpha are >= 0 (0: off); mixup_prob and mixup_switch_prob lie in [0, 1]")
