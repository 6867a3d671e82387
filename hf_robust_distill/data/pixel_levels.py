"""8-bit pixels across the bus, floats on the device: the float each of the 256 levels becomes, as the
model's own image processor rescales it (PIL's processors compute u / 255 in float64, torchvision's
multiply in float32: they differ in the last bit at 126 levels), so a batch that crossed as uint8
holds on the device exactly the floats the processor would have made."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

_UNIT = torch.arange(256, dtype=torch.float32) / 255


def unit_levels(processor=None) -> torch.Tensor:
    """(256,) float32: level u in [0, 1] as ``processor`` rescales it (u / 255 without one)."""
    if processor is None or not hasattr(processor, "rescale_factor"):
        return _UNIT.clone()
    ramp = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16)[..., None], 3, axis=2))
    off = {k: False for k in ("do_resize", "do_center_crop", "do_normalize", "do_pad") if hasattr(processor, k)}
    levels = processor(images=ramp, return_tensors="pt", **off)["pixel_values"][0, 0].flatten().float()
    if levels.shape != (256,) or not torch.allclose(levels, _UNIT, atol=1e-6):
        return _UNIT.clone()  # a processor that does more than rescale: the plain levels
    return levels


def to_unit_range(pixels: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as float32 in [0, 1] by ``levels`` (on the pixels' device); other dtypes as they are."""
    if pixels.dtype != torch.uint8:
        return pixels
    return levels.to(pixels.device)[pixels.long()]
