"""Corruptions the reference makes with PIL (libjpeg's save and load, PIL's resampling), run through
PIL itself on a CPU: image by image on torch's threads (PIL lets go of the GIL while it encodes and
resamples). There, C code beats any tensor simulation of it and gives the reference's pixels
exactly; on an accelerator the torch simulations run instead, without a trip through the host."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

Transform = Callable[[Image.Image], Image.Image]


@lru_cache(maxsize=None)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="pil-corruption")


def pil_uint8(images: torch.Tensor, transform: Transform) -> torch.Tensor:
    """``transform`` applied to each image of a (B, 3, H, W) uint8 CPU batch as an RGB PIL image;
    uint8 out. Channels go in and out as planes (PIL merges and splits them in C; a strided
    channels-last copy in torch costs as much as the JPEG itself)."""
    planes = images.contiguous().numpy()
    out = np.empty_like(planes)

    def one(i: int) -> None:
        image = transform(Image.merge("RGB", [Image.fromarray(plane) for plane in planes[i]]))
        for c, band in enumerate((image if image.mode == "RGB" else image.convert("RGB")).split()):
            out[i, c] = np.asarray(band)

    threads = max(1, min(torch.get_num_threads(), len(planes)))
    if threads > 1:
        list(_pool(threads).map(one, range(len(planes))))
    else:
        for i in range(len(planes)):
            one(i)
    return torch.from_numpy(out)


def through_pil(images: torch.Tensor, transform: Transform) -> torch.Tensor:
    """``pil_uint8`` on a [0, 1] float batch (rounded to 8 bits first), [0, 1] floats of its dtype out."""
    pixels = images.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return pil_uint8(pixels, transform).to(images.dtype).div_(255)
