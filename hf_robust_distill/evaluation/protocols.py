"""How a report's corrupted images are made, by the protocol's name, and the two steps of ImageNet-C's
own pipeline that the model-resolution protocol leaves out: truncation to 8 bits and JPEG at quality 85.

* ``imagenet-c``: ``make_imagenet_c.py``'s pipeline. Each validation image is resized to 256 and
  centre-cropped to 224 (``data.images.ImageNetCCrop``), corrupted at 224 x 224, truncated to uint8
  (``np.uint8``), saved as JPEG at quality 85 with ``optimize=True``; the model reads that JPEG through
  its own image processor. Stored as those JPEGs (about 10 kB an image).
* ``released``: the released ImageNet-C images themselves, read through the model's processor.
* ``model-resolution``: each image decoded at the model's own input size by its processor, corrupted
  there and kept as rounded 8-bit pixels (3 x H x W bytes an image): any dataset, any size, but not
  the images published figures were measured on.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

MODEL_RESOLUTION, IMAGENET_C, RELEASED = "model-resolution", "imagenet-c", "released"
PROTOCOLS = {
    IMAGENET_C: "ImageNet-C's own pipeline: 256 px resize, 224 px centre crop, corruption at 224 px, 8-bit "
                "truncation, JPEG at quality 85, then the model's image processor",
    RELEASED: "the released ImageNet-C images, read through the model's image processor",
    MODEL_RESOLUTION: "each image decoded at the model's own input size, corrupted there and kept as 8-bit "
                      "pixels, without ImageNet-C's 224 px crop and JPEG step: comparable between models "
                      "evaluated alike, not with published ImageNet-C figures",
}
"""How corrupted images are made, by the protocol's name; the report and the card name theirs."""
PUBLISHED_PROTOCOLS = (IMAGENET_C, RELEASED)
"""ImageNet-C's own pipeline and its released images: the protocols published figures use."""
CHOICES = ("auto", *PROTOCOLS)
JPEG_QUALITY = 85


def resolve_protocol(protocol: str, imagenet_1k: bool, released: bool = False) -> str:
    """The protocol a run uses: ``released`` with released images, ``auto`` is ``imagenet-c`` on
    ImageNet-1k's classes and ``model-resolution`` elsewhere."""
    if protocol not in CHOICES:
        raise ValueError(f"unknown corruption protocol {protocol!r}; choose from {', '.join(CHOICES)}")
    if released:
        if protocol not in ("auto", RELEASED):
            raise ValueError(f"--imagenet_c gives released images, which the {protocol} protocol does not read; "
                             "drop --corruption_protocol or set it to released")
        return RELEASED
    if protocol == RELEASED:
        raise ValueError("the released protocol reads the released ImageNet-C images: give their folder or Hub "
                         "dataset with --imagenet_c")
    if protocol == "auto":
        return IMAGENET_C if imagenet_1k else MODEL_RESOLUTION
    return protocol


def truncate_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels as the release's ``np.uint8(x * 255)`` makes them: truncated, not rounded. The
    small margin keeps float32's last bit from turning an exact grey level into the one below it."""
    return pixels.mul(255).add_(1e-4).floor_().clamp_(0, 255).to(torch.uint8)


def jpeg_bytes(image: torch.Tensor, quality: int = JPEG_QUALITY) -> bytes:
    """A (3, H, W) uint8 image as the release saves it: PIL's JPEG at ``quality`` with ``optimize=True``."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(
        buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
