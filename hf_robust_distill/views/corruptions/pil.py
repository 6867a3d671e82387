"""Corruptions the reference makes with PIL (libjpeg's save and load, PIL's resampling), run through
PIL itself on a CPU: there its C code gives the reference's pixels exactly, at the reference's speed,
where the tensor simulations an accelerator runs are slower. Images go in and out as 8-bit planes,
which PIL merges and splits in C (a channels-last copy in torch costs as much as the resampling)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from ...data.images import to_uint8

Transform = Callable[[Image.Image], Image.Image]


def pil_uint8(images: torch.Tensor, transform: Transform) -> torch.Tensor:
    """``transform`` applied to each image of a (B, 3, H, W) uint8 CPU batch as an RGB PIL image;
    uint8 out. One image at a time: at 224 px PIL spends most of a call in Python, under the GIL,
    so threads would not run them side by side."""
    planes = images.contiguous().numpy()
    out = np.empty_like(planes)
    for i, image in enumerate(planes):
        result = transform(Image.merge("RGB", [Image.fromarray(plane) for plane in image]))
        for c, band in enumerate((result if result.mode == "RGB" else result.convert("RGB")).split()):
            out[i, c] = np.asarray(band)
    return torch.from_numpy(out)


def through_pil(images: torch.Tensor, transform: Transform) -> torch.Tensor:
    """``pil_uint8`` on a [0, 1] float batch (rounded to 8 bits first), [0, 1] floats of its dtype out."""
    return pil_uint8(to_uint8(images), transform).to(images.dtype).div_(255)
