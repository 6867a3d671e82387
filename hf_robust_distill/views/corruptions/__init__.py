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

from ...data.images import to_uint8
from .blur import defocus_blur, gaussian_blur, glass_blur, motion_blur, zoom_blur
from .digital import (brightness, contrast, elastic_transform, jpeg_compression, jpeg_uint8, pixelate, pixelate_uint8,
                      saturate)
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

IN_PIL = {"pixelate": pixelate_uint8, "jpeg_compression": jpeg_uint8}
"""The corruptions the reference makes with PIL, which a CPU runs through the reference's own C code
(``pil``), uint8 batch and severity in, uint8 batch out."""

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
    _check_corruption(name, severity)
    check_images(images)
    return IMAGENET_C[name](images.float(), int(severity), generator).to(images.dtype)


def _check_corruption(name: str, severity: int) -> None:
    if name not in IMAGENET_C:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")


CPU_PIECE = 8
"""On a CPU ``corrupt_uint8`` corrupts a batch 8 images at a time, drawing from the generator in
turn, so that every intermediate tensor of a piece stays in cache (1.5-3x faster than whole batches
for most corruptions); on an accelerator it corrupts whole batches."""


def corrupt_uint8(images: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None,
                  quantize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``corrupt`` on a (B, 3, H, W) uint8 batch, uint8 out: the [0, 1] result brought to 8 bits by
    ``quantize`` (default: rounding). On a CPU the corruptions PIL makes take no detour through floats."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got dtype {images.dtype}")
    if images.device.type != "cpu" or name not in IN_PIL:
        quantize = quantize or to_uint8
        pieces = images.split(CPU_PIECE) if images.device.type == "cpu" else (images,)
        return torch.cat([quantize(corrupt(piece.float().div_(255), name, severity, generator)) for piece in pieces])
    _check_corruption(name, severity)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    return IN_PIL[name](images, int(severity))


__all__ = ["CORRUPTIONS", "IMAGENET_C", "IN_PIL", "check_images", "corrupt", "corrupt_uint8", *IMAGENET_C]
