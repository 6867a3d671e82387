"""Training augmentation on the device, after the collator: RandomResizedCrop and flip,
RandAugment or colour jitter (``kornia``), and random erasing, as timm's ImageNet training
transform orders them (colour jitter only without RandAugment, as timm does).

Every image tensor handed in (the clean batch and its DAD images) gets the same parameters, so a
DAD image stays the DAD image of its clean one; the teacher then sees the augmented clean image
and the student its distorted view, the same crop. kornia draws from torch's global generator, so
each call forks it and seeds it from the view's generator: a batch augments the same way whenever
its generator is the same (a resumed run sees the same batches).

What differs from timm: the crop is taken from the model-size image the collator made, not from
the original; kornia's RandAugment picks its ``n`` operations per batch (timm: per image), on its
0-30 magnitude scale (timm's ``m`` x 3) with timm's ``mstd`` noise drawn per batch; erased areas
are filled with per-pixel noise in [0, 1] pixel space (timm: in normalised space).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from .corruptions.filters import host_seed

_RAND_AUGMENT = re.compile(r"^rand(-(m\d+(\.\d+)?|n\d+|mstd\d+(\.\d+)?|inc[01]|w\d+|mmax\d+))*$")


def parse_rand_augment(spec: str) -> tuple[int, float, float]:
    """(n, m, mstd) of a timm RandAugment spec such as ``rand-m9-mstd0.5-inc1`` (n defaults to 2)."""
    if not _RAND_AUGMENT.match(spec) or "-m" not in spec:
        raise ValueError(f"cannot read the RandAugment spec {spec!r}; write timm's form, e.g. 'rand-m9-mstd0.5-inc1' "
                         "(m: magnitude 0-10, n: operations, mstd: magnitude noise)")
    n, m, mstd = 2, 0.0, 0.0
    for part in spec.split("-")[1:]:
        if part.startswith("mstd"):
            mstd = float(part[4:])
        elif part.startswith("mmax") or part.startswith("inc") or part.startswith("w"):
            continue
        elif part.startswith("m"):
            m = float(part[1:])
        elif part.startswith("n"):
            n = int(part[1:])
    if not 0 < m < 10 or not 1 <= n <= 15:
        raise ValueError(f"RandAugment's magnitude lies in (0, 10) and its count in [1, 15]; got m={m}, n={n}")
    return n, m, mstd


@dataclass(frozen=True)
class AugmentationSettings:
    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.0
    rand_augment: str | None = None
    color_jitter: float = 0.0
    random_erasing: float = 0.0

    @property
    def active(self) -> bool:
        return (self.random_resized_crop or self.hflip > 0 or bool(self.rand_augment) or self.color_jitter > 0
                or self.random_erasing > 0)


def erasing_masks(b: int, h: int, w: int, prob: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """(B, 1, H, W) boolean boxes of timm's ``RandomErasing``: with probability ``prob`` a box of
    2-33% of the area and aspect ratio in [0.3, 3.3] (log-uniform), the first of 10 draws that
    fits, placed uniformly."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand((b, 10, 4), generator=generator, device=gen_device, dtype=torch.float64).to(device)
    apply = torch.rand((b,), generator=generator, device=gen_device).to(device) < prob
    area = h * w * (0.02 + u[..., 0] * (1 / 3 - 0.02))
    ratio = torch.exp(math.log(0.3) + u[..., 1] * (math.log(3.3) - math.log(0.3)))
    eh, ew = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
    fits = (eh < h) & (ew < w)
    first = fits.double().argmax(1, keepdim=True)  # the first draw that fits

    def chosen(t: torch.Tensor) -> torch.Tensor:
        return t.gather(1, first).squeeze(1)

    eh, ew = chosen(eh), chosen(ew)
    top, left = (chosen(u[..., 2]) * (h - eh + 1)).floor(), (chosen(u[..., 3]) * (w - ew + 1)).floor()
    apply &= fits.any(1)
    rows = torch.arange(h, device=device, dtype=torch.float64).view(1, h, 1)
    cols = torch.arange(w, device=device, dtype=torch.float64).view(1, 1, w)
    inside = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
              & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)))
    return (inside & apply.view(b, 1, 1)).unsqueeze(1)


class Augmenter:
    """The training augmentation of ``settings`` for (B, 3, H, W) batches in [0, 1]."""

    def __init__(self, settings: AugmentationSettings, size: tuple[int, int]):
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment

        self.settings = settings
        self.rand_augment, self.magnitude = None, (0.0, 0.0)
        ops = []
        if settings.random_resized_crop:
            ops.append(K.RandomResizedCrop(tuple(size), scale=settings.crop_scale, ratio=(3 / 4, 4 / 3),
                                           align_corners=False))
        if settings.hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=settings.hflip))
        if settings.rand_augment:
            n, m, mstd = parse_rand_augment(settings.rand_augment)
            self.rand_augment, self.magnitude = RandAugment(n=n, m=_kornia_magnitude(m)), (m, mstd)
            ops.append(self.rand_augment)
        elif settings.color_jitter > 0:
            c = settings.color_jitter
            ops.append(K.ColorJitter(brightness=c, contrast=c, saturation=c, p=1.0))
        self.pipeline = K.AugmentationSequential(*ops, data_keys=["input"]) if ops else None

    def __call__(self, images: list[torch.Tensor], generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """``images`` augmented alike, computed in float32 and returned in their own dtype."""
        dtypes = [x.dtype for x in images]
        images = [x.float() for x in images]
        device = images[0].device
        gen_device = generator.device if generator is not None else device
        seed = host_seed(generator)  # on the host: no device sync
        out = list(images)
        if self.pipeline is not None:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                m, mstd = self.magnitude
                if self.rand_augment is not None and mstd > 0:
                    noisy = float(np.random.default_rng(seed).normal(m, mstd))
                    self.rand_augment.m = _kornia_magnitude(min(max(noisy, 0.01), 9.99))
                first = self.pipeline(images[0])
                params = self.pipeline._params
                out = [first] + [self.pipeline(x, params=params) for x in images[1:]]
        if self.settings.random_erasing > 0:
            b, c, h, w = out[0].shape
            boxes = erasing_masks(b, h, w, self.settings.random_erasing, generator, device)
            noise = torch.randn((b, c, h, w), generator=generator, device=gen_device).to(device, out[0].dtype)
            noise = noise.mul_(0.25).add_(0.5).clamp_(0, 1)
            out = [torch.where(boxes, noise, x) for x in out]
        return [x.clamp(0, 1).to(dtype) for x, dtype in zip(out, dtypes)]


def _kornia_magnitude(m: float) -> float:
    """timm's 0-10 RandAugment magnitude on kornia's 0-30 scale (rotate: 3 m degrees in both)."""
    return min(max(3 * m, 0.01), 29.99)


def check_augmentation_flags(args, problems) -> None:
    """The training augmentation's fields of a ``DistillationConfig``."""
    if (not 0 < args.crop_scale_min <= 1 or not 0 <= args.hflip <= 1 or not 0 <= args.random_erasing <= 1
            or args.color_jitter < 0):
        problems.add("--crop_scale_min / --hflip / --random_erasing / --color_jitter",
                     "crop_scale_min lies in (0, 1], hflip and random_erasing are probabilities, color_jitter is >= 0")
    if args.rand_augment:
        problems.check("--rand_augment", parse_rand_augment, args.rand_augment)
