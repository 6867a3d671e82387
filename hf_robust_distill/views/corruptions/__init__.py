"""The ImageNet-C corruptions as batched torch ops on (B, 3, H, W) float tensors in [0, 1], on the
tensor's own device: all 19 of the reference implementation (``imagecorruptions``), the 15 of
ImageNet-C and the 4 held out, with its parameter tables, border modes and colour maths, so a
model evaluated here and on ImageNet-C sees the same thing.

``corrupt(images, name, severity, generator=None)``; randomness comes only from ``generator``.
Grouped as ImageNet-C groups them: ``noise``, ``blur``, ``weather``, ``digital``; the filtering
they share is in ``filters``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .blur import defocus_blur, gaussian_blur, glass_blur, motion_blur, zoom_blur
from .digital import brightness, contrast, elastic_transform, jpeg_compression, pixelate, saturate
from .noise import gaussian_noise, impulse_noise, shot_noise, speckle_noise
from .weather import fog, frost, snow, spatter

CorruptionFn = Callable[..., torch.Tensor]

IMAGENET_C: dict[str, CorruptionFn] = {
    fn.__name__: fn for fn in (
        gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog,
        brightness, contrast, elastic_transform, pixelate, jpeg_compression,
        speckle_noise, gaussian_blur, spatter, saturate,
    )
}

CORRUPTIONS: tuple[str, ...] = tuple(IMAGENET_C)
"""Every corruption ``corrupt`` applies, in the reference's order: the 15 of ImageNet-C, then the 4
held-out ones (speckle_noise, gaussian_blur, spatter, saturate)."""


def check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")


def corrupt(images: torch.Tensor, name: str, severity: int,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Applies ImageNet-C corruption ``name`` at ``severity`` (1-5) to a (B, 3, H, W) batch in [0,1],
    computed in float32 whatever the batch's dtype (returned in it)."""
    if name not in IMAGENET_C:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    check_images(images)
    return IMAGENET_C[name](images.float(), int(severity), generator).to(images.dtype)


__all__ = ["CORRUPTIONS", "IMAGENET_C", "check_images", "corrupt", *IMAGENET_C]
