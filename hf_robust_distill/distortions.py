"""Batched image distortions on (B, 3, H, W) float tensors in [0, 1], on the tensor's own device.

Two families:

* the paper's distortions, with a continuous level per sample: ``noise`` (Gaussian std),
  ``blur`` (Gaussian sigma), ``pixel_mask`` and ``patch_mask`` (fraction hidden);
* ImageNet-C corruptions with severities 1-5, ported from the reference implementation
  (``imagecorruptions``; its parameter tables, border modes and colour maths), so that a model
  evaluated here and on ImageNet-C sees the same thing. ``corrupt(images, name, severity)``.

Randomness always comes from an optional ``torch.Generator`` so that a view can be reproduced.
Random numbers are drawn on the generator's device and moved to the images' device, so a CPU
generator also reproduces a GPU run.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# Random numbers and small helpers
# --------------------------------------------------------------------------------------------


def _rand(shape, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else images.device
    return torch.rand(shape, generator=generator, device=device).to(images.device, images.dtype)


def _randn(shape, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else images.device
    return torch.randn(shape, generator=generator, device=device).to(images.device, images.dtype)


def _per_sample(level, images: torch.Tensor) -> torch.Tensor:
    """A scalar or a (B,) level as a (B, 1, 1, 1) tensor on the images' device."""
    level = torch.as_tensor(level, dtype=images.dtype, device=images.device)
    return level.reshape(-1, 1, 1, 1).expand(images.shape[0], 1, 1, 1)


def _pad_index(size: int, pad: int, mode: str, device) -> torch.Tensor:
    """Source indices of a 1-D signal padded by ``pad`` on both sides.

    ``replicate`` (scipy 'nearest'), ``reflect101`` (OpenCV's default border, d c b | a b c d)
    and ``symmetric`` (scipy 'reflect', c b a | a b c d); works for any ``pad``.
    """
    idx = torch.arange(-pad, size + pad, device=device)
    if mode == "replicate":
        return idx.clamp(0, size - 1)
    if mode == "reflect101":
        if size == 1:
            return torch.zeros_like(idx)
        period = 2 * (size - 1)
        idx = idx.remainder(period)
        return torch.where(idx >= size, period - idx, idx)
    if mode == "symmetric":
        period = 2 * size
        idx = idx.remainder(period)
        return torch.where(idx >= size, period - 1 - idx, idx)
    raise ValueError(f"unknown padding mode {mode!r}")


def _pad(images: torch.Tensor, pad_h: int, pad_w: int, mode: str) -> torch.Tensor:
    h, w = images.shape[-2:]
    if pad_h:
        images = images.index_select(-2, _pad_index(h, pad_h, mode, images.device))
    if pad_w:
        images = images.index_select(-1, _pad_index(w, pad_w, mode, images.device))
    return images


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, 2*radius+1) normalised Gaussian kernels, one per sigma.

    Each kernel is cut at its own radius ``int(4 * sigma + 0.5)`` as scipy's ``gaussian_filter``
    does, so one padded convolution serves a batch of different sigmas exactly.
    """
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    sigma = sigma.reshape(-1, 1)
    own_radius = (4.0 * sigma + 0.5).floor()
    kernel = torch.exp(-0.5 * (x / sigma) ** 2) * (x.abs() <= own_radius)
    return kernel / kernel.sum(dim=1, keepdim=True)


def _separable_filter(images: torch.Tensor, kernels: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel with a 1-D kernel along H then W; one kernel, or one per sample."""
    b, c, h, w = images.shape
    k = kernels.shape[-1]
    r = k // 2
    padded = _pad(images, r, r, mode)
    if kernels.shape[0] == 1:
        x = padded.reshape(b * c, 1, h + 2 * r, w + 2 * r)
        weight = kernels.reshape(1, 1, k)
        x = F.conv2d(x, weight.reshape(1, 1, k, 1))
        x = F.conv2d(x, weight.reshape(1, 1, 1, k))
        return x.reshape(b, c, h, w)
    x = padded.reshape(1, b * c, h + 2 * r, w + 2 * r)
    weight = kernels.repeat_interleave(c, dim=0)
    x = F.conv2d(x, weight.reshape(b * c, 1, k, 1), groups=b * c)
    x = F.conv2d(x, weight.reshape(b * c, 1, 1, k), groups=b * c)
    return x.reshape(b, c, h, w)


def gaussian_filter(images: torch.Tensor, sigma, mode: str = "replicate") -> torch.Tensor:
    """scipy/skimage ``gaussian`` (truncate 4) with a scalar or per-sample sigma."""
    sigma = torch.as_tensor(sigma, dtype=images.dtype, device=images.device).reshape(-1)
    radius = int(4.0 * float(sigma.max()) + 0.5)
    return _separable_filter(images, _gaussian_kernels(sigma, radius), mode)


# --------------------------------------------------------------------------------------------
# Colour space (skimage's rgb2hsv / hsv2rgb, channel dim 1)
# --------------------------------------------------------------------------------------------


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(1)
    v = images.amax(1)
    delta = v - images.amin(1)
    flat = delta == 0
    safe = torch.where(flat, torch.ones_like(delta), delta)
    s = torch.where(flat, torch.zeros_like(v), delta / torch.where(v == 0, torch.ones_like(v), v))
    h = torch.where(b == v, 4.0 + (r - g) / safe,
                    torch.where(g == v, 2.0 + (b - r) / safe, (g - b) / safe))
    h = torch.where(flat, torch.zeros_like(h), (h / 6.0).remainder(1.0))
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(1)
    h6 = h * 6.0
    sector = h6.floor()
    f = h6 - sector
    sector = sector.long().remainder(6)
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    table = torch.stack([
        torch.stack([v, t, p], 1), torch.stack([q, v, p], 1), torch.stack([p, v, t], 1),
        torch.stack([p, q, v], 1), torch.stack([t, p, v], 1), torch.stack([v, p, q], 1),
    ], 0)
    index = sector.unsqueeze(0).unsqueeze(2).expand(1, -1, 3, -1, -1)
    return table.gather(0, index).squeeze(0)


# --------------------------------------------------------------------------------------------
# The paper's distortions (continuous level, scalar or one per sample)
# --------------------------------------------------------------------------------------------


def additive_noise(images, std, generator=None):
    """Gaussian noise of standard deviation ``std`` (in [0,1] pixel units), clipped."""
    noise = _randn(images.shape, images, generator)
    return (images + noise * _per_sample(std, images)).clamp(0, 1)


def blur(images, sigma, generator=None):
    """Gaussian blur of standard deviation ``sigma`` pixels, kernel cut at 4 sigma."""
    return gaussian_filter(images, sigma, mode="replicate").clamp(0, 1)


def pixel_mask(images, ratio, generator=None):
    """Sets a random ``ratio`` of the pixels (all three channels) to black."""
    b, _, h, w = images.shape
    keep = _rand((b, 1, h, w), images, generator) >= _per_sample(ratio, images)
    return images * keep


def patch_mask(images, ratio, generator=None, patch_size: int = 16):
    """Sets ``round(ratio * num_patches)`` random patches of ``patch_size`` pixels to black."""
    b, _, h, w = images.shape
    gh, gw = math.ceil(h / patch_size), math.ceil(w / patch_size)
    n = gh * gw
    scores = _rand((b, n), images, generator)
    ranks = scores.argsort(1).argsort(1)
    hidden = ranks < (_per_sample(ratio, images).reshape(b, 1) * n).round()
    keep = (~hidden).to(images.dtype).reshape(b, 1, gh, gw)
    keep = keep.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)[..., :h, :w]
    return images * keep


# --------------------------------------------------------------------------------------------
# ImageNet-C corruptions (severity 1-5), parameters of the reference implementation
# --------------------------------------------------------------------------------------------


def gaussian_noise(images, severity, generator=None):
    c = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    return (images + _randn(images.shape, images, generator) * c).clamp(0, 1)


def shot_noise(images, severity, generator=None):
    c = [60, 25, 12, 5, 3][severity - 1]
    rates = (images * c).to(torch.float32)
    device = generator.device if generator is not None else images.device
    counts = torch.poisson(rates.to(device), generator=generator).to(images.device)
    return (counts / c).to(images.dtype).clamp(0, 1)


def impulse_noise(images, severity, generator=None):
    """Salt and pepper on each channel value independently, as ``skimage.util.random_noise``."""
    amount = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    flipped = _rand(images.shape, images, generator) <= amount
    salted = _rand(images.shape, images, generator) <= 0.5
    out = torch.where(flipped & salted, torch.ones_like(images), images)
    return torch.where(flipped & ~salted, torch.zeros_like(images), out)


def speckle_noise(images, severity, generator=None):
    c = [0.15, 0.2, 0.35, 0.45, 0.6][severity - 1]
    return (images + images * _randn(images.shape, images, generator) * c).clamp(0, 1)


def gaussian_blur(images, severity, generator=None):
    c = [1, 2, 3, 4, 6][severity - 1]
    return gaussian_filter(images, c, mode="replicate").clamp(0, 1)


@lru_cache(maxsize=None)
def _defocus_kernel(radius: int, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk: a binary disk smoothed by OpenCV's 3x3/5x5 Gaussian."""
    if radius <= 8:
        coords, ksize = np.arange(-8, 9), 3
    else:
        coords, ksize = np.arange(-radius, radius + 1), 5
    xx, yy = np.meshgrid(coords, coords)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    t = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(t**2) / (2 * alias_blur**2))
    g /= g.sum()
    r = ksize // 2
    n = disk.shape[0]
    idx = _pad_index(n, r, "reflect101", "cpu").numpy()
    padded = disk[np.ix_(idx, idx)]
    rows = sum(g[i] * padded[i : i + n, :] for i in range(ksize))
    return sum(g[j] * rows[:, j : j + n] for j in range(ksize)).astype(np.float32)


def defocus_blur(images, severity, generator=None):
    radius, alias_blur = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    kernel = torch.from_numpy(_defocus_kernel(radius, alias_blur)).to(images.device, images.dtype)
    k = kernel.shape[0]
    b, c, h, w = images.shape
    padded = _pad(images, k // 2, k // 2, "reflect101").reshape(b * c, 1, h + k - 1, w + k - 1)
    out = F.conv2d(padded, kernel.reshape(1, 1, k, k)).reshape(b, c, h, w)
    return out.clamp(0, 1)


def motion_blur(images, severity, generator=None, angle=None):
    """Blur along a line at a random angle in [-45, 45] degrees, one angle per sample.

    The reference sums edge-replicated integer shifts of the image weighted by a half-Gaussian;
    ``angle`` (degrees, scalar or (B,)) fixes the direction, for tests against it.
    """
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    b, c, h, w = images.shape
    if angle is None:
        angle = _rand((b,), images, generator).double() * 90 - 45
    angle = torch.as_tensor(angle, dtype=torch.float64, device=images.device).reshape(-1).expand(b)
    width = 2 * radius + 1
    weights = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    rad = torch.deg2rad(angle)
    # The reference's ``point / hypot`` is (sin, cos) of the angle; shifts rounded like it does.
    step_y, step_x = torch.sin(rad), torch.cos(rad)
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    out = torch.zeros_like(images)
    alive = torch.ones(b, dtype=torch.bool, device=images.device)
    for i in range(width):
        dy = -torch.ceil(i * step_y - 0.5).long()
        dx = -torch.ceil(i * step_x - 0.5).long()
        alive &= (dy.abs() < h) & (dx.abs() < w)
        row_idx = (rows.unsqueeze(0) - dy.unsqueeze(1)).clamp(0, h - 1)
        col_idx = (cols.unsqueeze(0) - dx.unsqueeze(1)).clamp(0, w - 1)
        shifted = images.gather(2, row_idx.reshape(b, 1, h, 1).expand(b, c, h, w))
        shifted = shifted.gather(3, col_idx.reshape(b, 1, 1, w).expand(b, c, h, w))
        out = out + (weights[i] * alive.to(images.dtype)).reshape(b, 1, 1, 1) * shifted
    return out.clamp(0, 1)


def _clipped_zoom(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Centre crop of ``ceil(size / factor)`` zoomed back by ``factor`` (scipy ``zoom``, order 1)."""
    h, w = images.shape[-2:]
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = images[..., top : top + ch, left : left + cw]
    # scipy's zoom maps output corners onto input corners, which is align_corners=True.
    size = (round(ch * factor), round(cw * factor))
    return F.interpolate(crop, size=size, mode="bilinear", align_corners=True)[..., :h, :w]


_ZOOM_FACTORS = [
    np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
    np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03),
]


def zoom_blur(images, severity, generator=None):
    factors = _ZOOM_FACTORS[severity - 1]
    out = torch.zeros_like(images)
    for factor in factors:
        out = out + _clipped_zoom(images, float(factor))
    return ((images + out) / (len(factors) + 1)).clamp(0, 1)


def brightness(images, severity, generator=None):
    c = [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]
    hsv = rgb_to_hsv(images)
    hsv = torch.stack([hsv[:, 0], hsv[:, 1], (hsv[:, 2] + c).clamp(0, 1)], 1)
    return hsv_to_rgb(hsv).clamp(0, 1)


def contrast(images, severity, generator=None):
    c = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    means = images.mean(dim=(2, 3), keepdim=True)
    return ((images - means) * c + means).clamp(0, 1)


def saturate(images, severity, generator=None):
    scale, shift = [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)][severity - 1]
    hsv = rgb_to_hsv(images)
    hsv = torch.stack([hsv[:, 0], (hsv[:, 1] * scale + shift).clamp(0, 1), hsv[:, 2]], 1)
    return hsv_to_rgb(hsv).clamp(0, 1)


def _box_downsample_matrix(size: int, out: int, device, dtype) -> torch.Tensor:
    """PIL's BOX resampling as an (out, size) matrix: equal weights on the input pixels whose
    centres fall in each output pixel's footprint."""
    scale = size / out
    centers = (torch.arange(out, dtype=torch.float64) + 0.5) * scale
    lo = (centers - scale / 2 + 0.5).floor().clamp(min=0)
    hi = (centers + scale / 2 + 0.5).floor().clamp(max=size)
    pix = torch.arange(size, dtype=torch.float64)
    # PIL: weight 1 where (pixel - center + 0.5) / scale lies in (-0.5, 0.5], within [lo, hi).
    u = (pix.unsqueeze(0) - centers.unsqueeze(1) + 0.5) / scale
    m = ((u > -0.5) & (u <= 0.5) & (pix >= lo.unsqueeze(1)) & (pix < hi.unsqueeze(1))).double()
    return (m / m.sum(1, keepdim=True)).to(device, dtype)


def pixelate(images, severity, generator=None):
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    h, w = images.shape[-2:]
    small_h, small_w = int(h * c), int(w * c)
    down_h = _box_downsample_matrix(h, small_h, images.device, images.dtype)
    down_w = _box_downsample_matrix(w, small_w, images.device, images.dtype)
    small = down_h @ images @ down_w.T
    # PIL's NEAREST takes the source pixel under each output pixel's centre.
    rows = ((torch.arange(h, device=images.device) + 0.5) * small_h / h).long().clamp(max=small_h - 1)
    cols = ((torch.arange(w, device=images.device) + 0.5) * small_w / w).long().clamp(max=small_w - 1)
    return small.index_select(-2, rows).index_select(-1, cols)


# JPEG (baseline libjpeg, 4:2:0, as PIL saves RGB): the tables of the JPEG standard, Annex K.
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


def _quant_table(base: list[int], quality: int, device, dtype) -> torch.Tensor:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = [min(max((q * scale + 50) // 100, 1), 255) for q in base]
    return torch.tensor(table, device=device, dtype=dtype).reshape(8, 8)


@lru_cache(maxsize=None)
def _dct_matrix() -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * n.unsqueeze(0) + 1) * n.unsqueeze(1) * math.pi / 16) * 0.5
    m[0] /= math.sqrt(2)
    return m


def _jpeg_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """DCT-quantise-dequantise-IDCT of a (B, H, W) plane of 0-255 samples, H and W multiples of 8."""
    b, h, w = plane.shape
    d = _dct_matrix().to(plane.device, plane.dtype)
    blocks = (plane - 128).reshape(b, h // 8, 8, w // 8, 8).transpose(2, 3)
    coef = d @ blocks @ d.T
    coef = torch.round(coef / table) * table
    blocks = d.T @ coef @ d
    return (blocks.transpose(2, 3).reshape(b, h, w) + 128).round().clamp(0, 255)


def _fancy_upsample(plane: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """libjpeg's default 'fancy' 2x chroma upsampling: a triangle filter, 3/4 near + 1/4 far."""
    up = F.interpolate(plane.unsqueeze(1), scale_factor=2, mode="bilinear", align_corners=False)
    return up.squeeze(1)[:, :h, :w]


def jpeg_compression(images, severity, generator=None):
    """A JPEG save and load at the reference's quality, simulated in torch on the device."""
    quality = [25, 18, 15, 10, 7][severity - 1]
    dtype = torch.float32 if images.dtype != torch.float64 else torch.float64
    x = (images.to(dtype) * 255).round()
    b, _, h, w = x.shape
    ph, pw = -h % 16, -w % 16
    if ph or pw:
        # libjpeg fills a partial 16x16 MCU by repeating the last row and column.
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    r, g, bl = x.unbind(1)
    y = (0.299 * r + 0.587 * g + 0.114 * bl).round()
    cb = (-0.168736 * r - 0.331264 * g + 0.5 * bl + 128).round()
    cr = (0.5 * r - 0.418688 * g - 0.081312 * bl + 128).round()
    cb = F.avg_pool2d(cb.unsqueeze(1), 2).squeeze(1)
    cr = F.avg_pool2d(cr.unsqueeze(1), 2).squeeze(1)
    luma_q = _quant_table(_LUMA_TABLE, quality, x.device, dtype)
    chroma_q = _quant_table(_CHROMA_TABLE, quality, x.device, dtype)
    y = _jpeg_plane(y, luma_q)
    cb = _fancy_upsample(_jpeg_plane(cb, chroma_q), h + ph, w + pw)
    cr = _fancy_upsample(_jpeg_plane(cr, chroma_q), h + ph, w + pw)
    rgb = torch.stack([
        y + 1.402 * (cr - 128),
        y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
        y + 1.772 * (cb - 128),
    ], 1)
    rgb = rgb.round().clamp(0, 255)[..., :h, :w]
    return (rgb / 255).to(images.dtype)


def elastic_transform(images, severity, generator=None):
    """Bilinear resampling along a smooth random displacement field (imagecorruptions-imaug)."""
    b, c, h, w = images.shape
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][severity - 1]
    max_d = h * 0.005
    field = (_rand((b, 2, h, w), images, generator) * 2 - 1) * max_d
    # skimage gaussian(sigma = 1% of each side, truncate 3, mode 'reflect'), one sigma per axis.
    sig_h, sig_w = h * 0.01, w * 0.01
    kh = _gaussian_kernels(torch.tensor([sig_h], dtype=torch.float64), int(3 * sig_h + 0.5))
    kw = _gaussian_kernels(torch.tensor([sig_w], dtype=torch.float64), int(3 * sig_w + 0.5))
    kh, kw = kh.to(images.device, images.dtype), kw.to(images.device, images.dtype)
    rh, rw = kh.shape[1] // 2, kw.shape[1] // 2
    field = _pad(field, rh, rw, "symmetric").reshape(b * 2, 1, h + 2 * rh, w + 2 * rw)
    field = F.conv2d(F.conv2d(field, kh.reshape(1, 1, -1, 1)), kw.reshape(1, 1, 1, -1))
    dy, dx = (field.reshape(b, 2, h, w) * alpha).unbind(1)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=images.device, dtype=images.dtype),
        torch.arange(w, device=images.device, dtype=images.dtype), indexing="ij")
    # Normalised coordinates with align_corners=False reflect about the image border,
    # which is scipy's 'reflect' mode of map_coordinates.
    grid = torch.stack([(2 * (xs + dx) + 1) / w - 1, (2 * (ys + dy) + 1) / h - 1], -1)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.clamp(0, 1)


CorruptionFn = Callable[..., torch.Tensor]

_IMAGENET_C: dict[str, CorruptionFn] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "brightness": brightness,
    "contrast": contrast,
    "saturate": saturate,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "elastic_transform": elastic_transform,
}

CORRUPTIONS: tuple[str, ...] = tuple(_IMAGENET_C)
"""The ImageNet-C corruptions implemented as batched torch ops, accepted by ``corrupt``."""


def corrupt(images: torch.Tensor, name: str, severity: int,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Applies ImageNet-C corruption ``name`` at ``severity`` (1-5) to a (B, 3, H, W) batch in [0,1]."""
    if name not in _IMAGENET_C:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    _check_images(images)
    return _IMAGENET_C[name](images, int(severity), generator)


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")


# --------------------------------------------------------------------------------------------
# The train-time sampler
# --------------------------------------------------------------------------------------------

_CONTINUOUS: dict[str, tuple[CorruptionFn, float, float]] = {
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
        return self.name in _IMAGENET_C

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
            if name in _IMAGENET_C:
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
        if name in _IMAGENET_C:
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
        _check_images(images)
        b = images.shape[0]
        gen_device = generator.device if generator is not None else images.device
        choice = torch.randint(len(self.entries), (b,), generator=generator, device=gen_device)
        u = torch.rand((b,), generator=generator, device=gen_device, dtype=torch.float64)
        out = images.clone()
        for k, entry in enumerate(self.entries):
            idx = (choice == k).nonzero().flatten()
            if idx.numel() == 0 or entry.name == "clean":
                continue
            level = entry.low + u[idx] * (entry.high - entry.low)
            idx = idx.to(images.device)
            if entry.is_severity:
                # Integer severities uniformly in [low, high] (rounding would halve the ends).
                span = entry.high - entry.low + 1
                severity = (entry.low + (u[idx.to(gen_device)] * span).floor().clamp(max=span - 1)).long()
                for s in severity.unique().tolist():
                    sub = idx[(severity == s).to(images.device)]
                    out[sub] = _IMAGENET_C[entry.name](images[sub], s, generator)
            else:
                fn = _CONTINUOUS[entry.name][0]
                kwargs = {"patch_size": self.patch_size} if entry.name == "patch_mask" else {}
                out[idx] = fn(images[idx], level.to(images.device, images.dtype), generator, **kwargs)
        return out
