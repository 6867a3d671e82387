"""ImageNet-C's digital corruptions: brightness, contrast, elastic transform, pixelate, JPEG, and
the held-out saturate."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...data.images import to_uint8
from .filters import gaussian_filter_axes, rand
from .pil import decode_jpeg, pil_strips, pil_uint8

# ---- colour: the reference goes through skimage's HSV; with hue fixed these are closed forms -----


def brightness(images, severity, generator=None):
    """HSV value raised by c, hue and saturation kept: each pixel scaled by new / old value
    (black becomes grey of the new value)."""
    c = [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]
    value = images.amax(1, keepdim=True)
    raised = (value + c).clamp_(max=1)
    scale = raised / value.clamp(min=1e-12)
    return torch.where(value > 0, images * scale, raised).clamp_(0, 1)


def contrast(images, severity, generator=None):
    c = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    means = images.mean(dim=(2, 3), keepdim=True)
    return (images - means).mul_(c).add_(means).clamp_(0, 1)


def saturate(images, severity, generator=None):
    """HSV saturation s -> clip(s * scale + shift), hue and value kept: each channel's distance
    below the value scaled by new / old saturation (greys take skimage's hue 0, red)."""
    scale, shift = [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)][severity - 1]
    value = images.amax(1, keepdim=True)
    spread = value - images.amin(1, keepdim=True)
    saturation = torch.where(value > 0, spread / value.clamp(min=1e-12), 0.0)
    new = (saturation * scale + shift).clamp_(0, 1)
    grey = torch.tensor([0.0, 1.0, 1.0], dtype=images.dtype, device=images.device).reshape(1, 3, 1, 1)
    below = torch.where(spread > 0, (value - images) / spread.clamp(min=1e-12), grey)
    return (value - value * new * below).clamp_(0, 1)


# ---- pixelate: PIL's BOX down, NEAREST up ---------------------------------------------------------


@lru_cache(maxsize=32)
def _box_matrix(size: int, small: int) -> torch.Tensor:
    """PIL's BOX resampling to ``small`` as a (small, size) matrix: equal weights on the pixels
    whose centres fall in each output pixel's footprint."""
    scale = size / small
    centers = (torch.arange(small, dtype=torch.float64) + 0.5) * scale
    lo = (centers - scale / 2 + 0.5).floor().clamp(min=0)
    hi = (centers + scale / 2 + 0.5).floor().clamp(max=size)
    pix = torch.arange(size, dtype=torch.float64)
    u = (pix.unsqueeze(0) - centers.unsqueeze(1) + 0.5) / scale
    box = ((u > -0.5) & (u <= 0.5) & (pix >= lo.unsqueeze(1)) & (pix < hi.unsqueeze(1))).double()
    return (box / box.sum(1, keepdim=True)).float()


def pixelate(images, severity, generator=None):
    """PIL's BOX down to ``c`` of the size, then NEAREST back: PIL itself on a CPU, simulated on an
    accelerator."""
    return _pil_on_cpu(images, severity, pixelate_uint8, simulated_pixelate)


def _pil_on_cpu(images, severity: int, in_pil: Callable[[torch.Tensor, int], torch.Tensor], simulated
                ) -> torch.Tensor:
    """A corruption the reference makes with PIL: ``in_pil`` on the batch rounded to 8 bits on a CPU,
    ``simulated`` elsewhere."""
    if images.device.type == "cpu":
        return in_pil(to_uint8(images), severity).to(images.dtype).div_(255)
    return simulated(images, severity)


_PIXELATE = [0.6, 0.5, 0.4, 0.3, 0.25]


def pixelate_uint8(images: torch.Tensor, severity: int) -> torch.Tensor:
    """The reference's pixelate, exactly, on a (B, 3, H, W) uint8 CPU batch.

    Images are stacked into strips (``pil_strips``) and resampled a strip at a time, the two BOX
    passes as two resizes, horizontal first as PIL orders them for one image (it orders a tall image
    the other way). Down the strip, each output row's box and NEAREST's pick then fall where they fall
    in each image as long as no pixel centre lies on a box edge, which holds when the small height's
    reduced denominator (``small / gcd(height, small)``) is odd: a tie elsewhere would be settled by
    the float rounding of the strip's larger coordinates. With an even one, image by image."""
    c = _PIXELATE[severity - 1]
    h, w = images.shape[-2:]
    small_h, small_w = int(h * c), int(w * c)
    if (small_h // math.gcd(h, small_h)) % 2 == 0:
        return pil_uint8(images, lambda image: image.resize((small_w, small_h), Image.BOX).resize((w, h), Image.NEAREST))

    def pixelate_strip(strip: Image.Image) -> Image.Image:
        count = strip.height // h
        across = strip.resize((small_w, strip.height), Image.BOX)
        return across.resize((small_w, count * small_h), Image.BOX).resize(strip.size, Image.NEAREST)

    return pil_strips(images, pixelate_strip)


def simulated_pixelate(images, severity, generator=None):
    """PIL's BOX down to ``c`` of the size, then NEAREST back (the source pixel under each output
    centre, which is ``nearest-exact``), as tensor ops."""
    c = _PIXELATE[severity - 1]
    h, w = images.shape[-2:]
    down_h = _box_matrix(h, int(h * c)).to(images.device, images.dtype)
    down_w = _box_matrix(w, int(w * c)).to(images.device, images.dtype)
    return F.interpolate(down_h @ images @ down_w.T, size=(h, w), mode="nearest-exact")


# ---- JPEG: a baseline libjpeg save (4:2:0, as PIL saves RGB) and load -----------------------------

# The tables of the JPEG standard, Annex K.
_LUMA_TABLE = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69,
    56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104,
    113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]
_CHROMA_TABLE = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99,
    99, 47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
]


def _quant_table(base: list[int], quality: int) -> torch.Tensor:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return torch.tensor([min(max((q * scale + 50) // 100, 1), 255) for q in base], dtype=torch.float64)


@lru_cache(maxsize=None)
def _dct_2d() -> torch.Tensor:
    """(64, 64) orthonormal 2-D DCT-II of a row-major 8x8 block, as one matrix."""
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * n.unsqueeze(0) + 1) * n.unsqueeze(1) * math.pi / 16) * 0.5
    m[0] /= math.sqrt(2)
    return torch.kron(m, m)


def _jpeg_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """DCT-quantise-dequantise-IDCT of a (B, H, W) plane of 0-255 samples, H and W multiples of 8:
    the blocks as rows of one matrix, times the 64x64 DCT."""
    b, h, w = plane.shape
    d = _dct_2d().to(plane.device, plane.dtype)
    table = table.to(plane.device, plane.dtype)
    blocks = (plane - 128).reshape(b, h // 8, 8, w // 8, 8).transpose(2, 3).reshape(-1, 64)
    coef = torch.round(blocks @ d.T / table) * table
    blocks = (coef @ d).reshape(b, h // 8, w // 8, 8, 8).transpose(2, 3).reshape(b, h, w)
    return blocks.add_(128).round_().clamp_(0, 255)


def _fancy_upsample(planes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """libjpeg's default 'fancy' 2x chroma upsampling: a triangle filter, 3/4 near + 1/4 far."""
    return F.interpolate(planes, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]


def _mix(channels: tuple[torch.Tensor, ...], weights: tuple[float, ...], offset: float = 0.0) -> torch.Tensor:
    """``offset + sum_k weights[k] * channels[k]``, skipping zero weights."""
    out = torch.full_like(channels[0], offset)
    for channel, weight in zip(channels, weights):
        if weight:
            out.add_(channel, alpha=weight)
    return out


def jpeg_compression(images, severity, generator=None):
    """A JPEG save and load at the reference's quality: libjpeg through PIL on a CPU, simulated on an
    accelerator."""
    return _pil_on_cpu(images, severity, jpeg_uint8, simulated_jpeg_compression)


_JPEG_QUALITY = [25, 18, 15, 10, 7]


def jpeg_uint8(images: torch.Tensor, severity: int) -> torch.Tensor:
    """The reference's JPEG round trip, exactly, on a (B, 3, H, W) uint8 CPU batch: PIL's save, then
    libjpeg-turbo's decode with PIL's settings."""
    quality = _JPEG_QUALITY[severity - 1]

    def round_trip(image: Image.Image) -> np.ndarray:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return decode_jpeg(buffer.getbuffer())

    return pil_uint8(images, round_trip)


def simulated_jpeg_compression(images, severity, generator=None):
    """A JPEG save and load at the reference's quality, simulated in torch on the device: JFIF
    colour conversion, 4:2:0 chroma, quantised DCT, fancy upsampling."""
    quality = _JPEG_QUALITY[severity - 1]
    dtype = torch.float32 if images.dtype != torch.float64 else torch.float64
    x = (images.to(dtype) * 255).round_()
    b, _, h, w = x.shape
    ph, pw = -h % 16, -w % 16
    if ph or pw:
        # libjpeg fills a partial 16x16 MCU by repeating the last row and column.
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    rgb = x.unbind(1)
    y = _mix(rgb, (0.299, 0.587, 0.114)).round_()
    c = torch.stack([_mix(rgb, (-0.168736, -0.331264, 0.5), 128), _mix(rgb, (0.5, -0.418688, -0.081312), 128)], 1)
    c = c.round_()
    chroma = (c[..., 0::2, 0::2] + c[..., 1::2, 0::2]).add_(c[..., 0::2, 1::2]).add_(c[..., 1::2, 1::2]).div_(4)
    luma_q, chroma_q = _quant_table(_LUMA_TABLE, quality), _quant_table(_CHROMA_TABLE, quality)
    y = _jpeg_plane(y, luma_q)
    chroma = _jpeg_plane(chroma.reshape(2 * b, *chroma.shape[-2:]), chroma_q).reshape(b, 2, *chroma.shape[-2:])
    cb, cr = (_fancy_upsample(chroma, h + ph, w + pw) - 128).unbind(1)
    ycc = (y, cb, cr)
    rgb = torch.stack([_mix(ycc, (1.0, 0.0, 1.402)), _mix(ycc, (1.0, -0.344136, -0.714136)),
                       _mix(ycc, (1.0, 1.772, 0.0))], 1)
    return rgb[..., :h, :w].round_().clamp_(0, 255).div_(255).to(images.dtype)


# ---- elastic transform ----------------------------------------------------------------------------


def elastic_transform(images, severity, generator=None):
    """Bilinear resampling along a smooth random displacement field (imagecorruptions-imaug)."""
    b, c, h, w = images.shape
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][severity - 1]
    max_d = h * 0.005
    field = rand((b, 2, h, w), images, generator).mul_(2 * max_d).sub_(max_d)
    # skimage gaussian(sigma = 1% of each side, truncate 3, mode 'reflect'), one sigma per axis.
    field = gaussian_filter_axes(field, h * 0.01, w * 0.01, mode="symmetric", truncate=3.0).mul_(alpha)
    dy, dx = field.unbind(1)
    ys = torch.arange(h, device=images.device, dtype=images.dtype).reshape(1, h, 1)
    xs = torch.arange(w, device=images.device, dtype=images.dtype).reshape(1, 1, w)
    # Normalised coordinates with align_corners=False reflect about the image border,
    # which is scipy's 'reflect' mode of map_coordinates.
    grid = torch.stack([(2 * (xs + dx) + 1) / w - 1, (2 * (ys + dy) + 1) / h - 1], -1)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.clamp_(0, 1)
