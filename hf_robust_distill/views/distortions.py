"""Batched image distortions on (B, 3, H, W) float tensors in [0, 1], on the tensor's own device,
and the train-time sampler that draws them.

Two families:

* the paper's distortions, with a continuous level per sample: ``noise`` (Gaussian std),
  ``blur`` (Gaussian sigma), ``pixel_mask`` and ``patch_mask`` (fraction hidden);
* the 19 ImageNet-C corruptions with severities 1-5 (``hf_robust_distill.views.corruptions``).

Randomness always comes from an optional ``torch.Generator`` so that a view can be reproduced.
Views compute in float32 whatever the batch's dtype (a launcher may hand bf16 pixels over) and
return the batch's dtype. A ``Distorter`` draws each sample's distortion and level on the host
(``filters.host_generator``) and its pixel noise on the images' device, so a step never waits
for the device to answer.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .corruptions import CORRUPTIONS, IMAGENET_C, check_images, corrupt
from .corruptions.filters import gaussian_filter, host_generator, per_sample, rand, randn, to_device

# --------------------------------------------------------------------------------------------
# The paper's distortions (continuous level, scalar or one per sample)
# --------------------------------------------------------------------------------------------


def additive_noise(images, std, generator=None):
    """Gaussian noise of standard deviation ``std`` (in [0,1] pixel units), clipped."""
    noise = randn(images.shape, images, generator)
    return (images + noise * per_sample(std, images)).clamp(0, 1)


def blur(images, sigma, generator=None, max_sigma: float | None = None):
    """Gaussian blur of standard deviation ``sigma`` pixels (a scalar or one per sample), kernel cut
    at 4 sigma, built on the images' device; ``max_sigma`` bounds a per-sample sigma (a spec's
    highest level), which spares reading it back to size the kernels."""
    return gaussian_filter(images, torch.as_tensor(sigma, dtype=torch.float64), mode="replicate",
                           max_sigma=max_sigma).clamp_(0, 1)


def pixel_mask(images, ratio, generator=None):
    """Sets a random ``ratio`` of the pixels (all three channels) to black."""
    b, _, h, w = images.shape
    keep = rand((b, 1, h, w), images, generator) >= per_sample(ratio, images)
    return images * keep


def patch_mask(images, ratio, generator=None, patch_size: int = 16):
    """Sets ``round(ratio * num_patches)`` random patches of ``patch_size`` pixels to black."""
    b, _, h, w = images.shape
    gh, gw = math.ceil(h / patch_size), math.ceil(w / patch_size)
    n = gh * gw
    scores = rand((b, n), images, generator)
    ranks = scores.argsort(1).argsort(1)
    hidden = ranks < (per_sample(ratio, images).reshape(b, 1) * n).round()
    keep = (~hidden).to(images.dtype).reshape(b, 1, gh, gw)
    keep = keep.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)[..., :h, :w]
    return images * keep


# --------------------------------------------------------------------------------------------
# The train-time sampler
# --------------------------------------------------------------------------------------------

_CONTINUOUS: dict[str, tuple[Callable[..., torch.Tensor], float, float]] = {
    # name: (function, smallest level, largest level)
    "noise": (additive_noise, 0.0, 10.0),
    "blur": (blur, 0.0, 64.0),
    "pixel_mask": (pixel_mask, 0.0, 1.0),
    "patch_mask": (patch_mask, 0.0, 1.0),
}

DISTORTIONS: tuple[str, ...] = tuple(_CONTINUOUS) + CORRUPTIONS + ("clean",)
"""Every name a ``Distorter`` spec accepts."""

_NUMBER = r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"
_LEVEL = re.compile(rf"^({_NUMBER})(?:-({_NUMBER}))?$")


@dataclass(frozen=True)
class DistortionSpec:
    """One entry of a spec string: a distortion and the range its level is drawn from."""

    name: str
    low: float
    high: float

    @property
    def is_severity(self) -> bool:
        return self.name in IMAGENET_C

    def __str__(self) -> str:
        if self.name == "clean":
            return "clean"
        fmt = (lambda v: str(int(v))) if self.is_severity else (lambda v: f"{v:g}")
        level = fmt(self.low) if self.low == self.high else f"{fmt(self.low)}-{fmt(self.high)}"
        return f"{self.name}:{level}"


def parse_distortions(spec: str) -> list[DistortionSpec]:
    """Parses ``"gaussian_noise:1-5,gaussian_blur:3,pixel_mask:0.5-0.9"``.

    ImageNet-C names take integer severities (a bare name means 1-5); the paper's distortions
    take a level: ``noise`` std, ``blur`` sigma in pixels, ``pixel_mask``/``patch_mask`` ratio.
    """
    entries = [part.strip() for part in spec.split(",") if part.strip()]
    if not entries:
        raise ValueError("the distortion spec is empty; e.g. 'noise:0.1-0.5,blur:1-3,pixel_mask:0.5-0.9'")
    parsed = []
    for entry in entries:
        name, _, level = (s.strip() for s in entry.partition(":"))
        if name not in DISTORTIONS:
            close = difflib.get_close_matches(name, DISTORTIONS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown distortion {name!r} in {spec!r}; {hint}choose from {', '.join(DISTORTIONS)}")
        if name == "clean":
            if level:
                raise ValueError("'clean' takes no level")
            parsed.append(DistortionSpec(name, 0.0, 0.0))
            continue
        if not level:
            if name in IMAGENET_C:
                parsed.append(DistortionSpec(name, 1.0, 5.0))
                continue
            raise ValueError(f"distortion {name!r} needs a level, e.g. '{name}:0.5' or '{name}:0.1-0.5'")
        match = _LEVEL.match(level)
        if not match:
            raise ValueError(f"cannot read the level {level!r} of {name!r}; write 'a' or 'a-b'")
        low = float(match.group(1))
        high = float(match.group(2)) if match.group(2) else low
        if low > high:
            raise ValueError(f"the range of {name!r} runs backwards: {level!r}")
        if name in IMAGENET_C:
            if low != int(low) or high != int(high) or not 1 <= low <= high <= 5:
                raise ValueError(f"{name!r} takes integer severities from 1 to 5, got {level!r}")
        else:
            _, smallest, largest = _CONTINUOUS[name]
            if not smallest <= low <= high <= largest:
                raise ValueError(f"the level of {name!r} must lie in [{smallest}, {largest}], got {level!r}")
        parsed.append(DistortionSpec(name, low, high))
    return parsed


class Distorter:
    """Draws one distortion and one level per sample and applies them, batched by distortion.

    >>> distorter = Distorter("gaussian_noise:1-5,gaussian_blur:3,pixel_mask:0.5-0.9")
    >>> distorted = distorter(images, generator=torch.Generator().manual_seed(0))
    """

    def __init__(self, spec: str, patch_size: int = 16):
        self.spec = spec
        self.entries = parse_distortions(spec)
        self.patch_size = patch_size

    def __repr__(self) -> str:
        return f"Distorter({','.join(map(str, self.entries))!r})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_images(images)
        b = images.shape[0]
        host = host_generator(generator)
        # Which distortion and level each sample gets: drawn and grouped on the host (NumPy), so
        # nothing is read back from the device.
        choice = torch.randint(len(self.entries), (b,), generator=host).numpy()
        u = torch.rand((b,), generator=host, dtype=torch.float64).numpy()
        pixels = images.float()
        out = pixels.clone()
        for k, entry in enumerate(self.entries):
            idx = np.flatnonzero(choice == k)
            if idx.size == 0 or entry.name == "clean":
                continue
            if entry.is_severity:
                # Integer severities uniformly in [low, high] (rounding would halve the ends).
                span = entry.high - entry.low + 1
                severity = (entry.low + np.minimum(np.floor(u[idx] * span), span - 1)).astype(np.int64)
                for s in np.unique(severity):
                    sub = to_device(idx[severity == s], pixels)
                    out[sub] = IMAGENET_C[entry.name](pixels[sub], int(s), generator)
            else:
                level = to_device(entry.low + u[idx] * (entry.high - entry.low), pixels, torch.float32)
                kwargs = {"patch_size": self.patch_size} if entry.name == "patch_mask" else {}
                if entry.name == "blur":
                    kwargs["max_sigma"] = entry.high
                sub = to_device(idx, pixels)
                out[sub] = _CONTINUOUS[entry.name][0](pixels[sub], level, generator, **kwargs)
        return out.to(images.dtype)


__all__ = ["CORRUPTIONS", "DISTORTIONS", "Distorter", "DistortionSpec", "additive_noise", "blur", "corrupt",
           "parse_distortions", "patch_mask", "pixel_mask"]


def check_distortions(spec: str | None) -> None:
    if spec is not None:
        parse_distortions(spec)


def check_distortion_flags(args, problems) -> None:
    """The student's view of a ``DistillationConfig``."""
    problems.check("--distortions", parse_distortions, args.distortions)
