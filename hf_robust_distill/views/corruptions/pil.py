"""Corruptions the reference makes with PIL (libjpeg's save and load, PIL's resampling), run through
the same C code on a CPU, where it gives the reference's pixels exactly and the tensor simulations an
accelerator runs are slower. What the reference spends around that C code is cut: images go in as
8-bit planes PIL merges in C and come out band by band through PIL's raw packer, JPEG is decoded by
libjpeg-turbo straight into an array, and a resampling that allows it runs on strips of images, a few
long C calls each, on several threads."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import simplejpeg
import torch
from PIL import Image

Transform = Callable[[Image.Image], Image.Image | np.ndarray]
"""An RGB PIL image to the corrupted image: a PIL image, or an (H, W, 3) uint8 array."""


def pil_uint8(images: torch.Tensor, transform: Transform) -> torch.Tensor:
    """``transform`` applied to each image of a (B, 3, H, W) uint8 CPU batch as an RGB PIL image;
    uint8 out. One image at a time: at 224 px PIL spends much of a call in Python, under the GIL,
    and two threads measured no faster than one."""
    planes = images.contiguous().numpy()
    out = np.empty_like(planes)
    for i, image in enumerate(planes):
        result = transform(_rgb_image(image))
        if isinstance(result, np.ndarray):
            out[i] = result.transpose(2, 0, 1)
            continue
        for c, band in enumerate(_bands(result)):
            out[i, c] = band.reshape(out.shape[2:])
    return torch.from_numpy(out)


def pil_strips(images: torch.Tensor, transform: Transform, strip: int = 8, workers: int | None = None
               ) -> torch.Tensor:
    """``transform`` (a tall RGB image to one of the same size) applied to runs of ``strip`` images of a
    (B, 3, H, W) uint8 CPU batch, each run stacked into one tall image; uint8 out. Only for transforms
    that treat each image of a strip as if it were alone, which the caller proves. A strip takes a few
    long C calls that let go of the GIL, so ``workers`` threads (default: torch's intra-op thread
    count) run strips side by side, where image-by-image calls spend their time handing the GIL over."""
    planes = images.contiguous().numpy()
    out = np.empty_like(planes)
    b, _, h, w = planes.shape

    def corrupt_strip(start: int) -> None:
        run = planes[start:start + strip]
        for c, band in enumerate(_bands(transform(_rgb_image(run.transpose(1, 0, 2, 3).reshape(3, -1, w))))):
            out[start:start + strip, c] = band.reshape(-1, h, w)

    starts = range(0, b, strip)
    workers = max(1, min(workers or torch.get_num_threads(), len(starts)))
    if workers == 1:
        for start in starts:
            corrupt_strip(start)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for done in [pool.submit(corrupt_strip, start) for start in starts]:
                done.result()
    return torch.from_numpy(out)


def _rgb_image(planes: np.ndarray) -> Image.Image:
    """(3, H, W) uint8 planes, each C-contiguous, as one RGB image, merged by PIL in C."""
    return Image.merge("RGB", [Image.fromarray(plane) for plane in planes])


def _bands(image: Image.Image) -> list[np.ndarray]:
    """An image's R, G and B as flat uint8 arrays, each packed by PIL's C raw encoder: half the cost of
    ``split()`` and an array per band."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    return [np.frombuffer(image.tobytes("raw", band), np.uint8) for band in "RGB"]


def decode_jpeg(data: bytes | memoryview) -> np.ndarray:
    """JPEG bytes to (H, W, 3) uint8 through libjpeg-turbo with the settings PIL decodes with (the
    accurate integer IDCT, 'fancy' chroma upsampling): PIL's pixels exactly, in half PIL's time, as
    PIL unpacks the decoder's lines into its own 4-byte layout and packs them again for numpy."""
    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)
