"""Random numbers, borders and filters on (B, C, H, W) tensors, as the reference code filters.

Large kernels never go through a one-channel ``conv2d`` (slow on a CPU): a separable filter is
two matrix products with banded matrices that carry the border mode, and a 2-D kernel is a
product of Fourier transforms of the padded image. Both are exact correlations, so borders and
weights are those of scipy, scikit-image and OpenCV.

Randomness comes from an optional ``torch.Generator``; numbers are drawn on the generator's
device and moved to the images' device, so a CPU generator also reproduces a GPU run.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F


def host_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """The CPU generator of a view's per-batch and per-sample decisions (which distortion, its
    level, a mixing weight): drawn on the host, they group samples and size kernels without
    reading anything back from the device, and only the small tensors carrying them travel there,
    asynchronously. A CPU generator (or ``None``, torch's global one) serves as it is; a device
    generator lends a seed from its own stream (its seed and offset live on the host) and moves
    past it, so successive calls draw differently and generators seeded alike draw alike."""
    if generator is None or generator.device.type == "cpu":
        return generator
    try:
        offset = generator.get_offset()
        generator.set_offset(offset + 4)
    except RuntimeError:  # a device generator without a Philox offset: its seed alone
        offset = 0
    seed = np.random.SeedSequence([generator.initial_seed(), offset]).generate_state(1, dtype=np.uint64)[0] >> 1
    return torch.Generator().manual_seed(int(seed))


def host_seed(generator: torch.Generator | None) -> int:
    """A seed for a view's NumPy generator, drawn from ``host_generator(generator)`` on the host."""
    return int(torch.randint(2**62, (1,), generator=host_generator(generator)).numpy()[0])


def to_device(values, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Small host values (a NumPy array or a CPU tensor) on ``like``'s device, without making the
    host wait for the copy."""
    tensor = torch.from_numpy(values) if isinstance(values, np.ndarray) else values
    return tensor.to(like.device, dtype=dtype, non_blocking=True)


def rand(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device, like.dtype)


def randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(like.device, like.dtype)


def per_sample(level, images: torch.Tensor) -> torch.Tensor:
    """A scalar or a (B,) level as a (B, 1, 1, 1) tensor on the images' device."""
    level = torch.as_tensor(level, dtype=images.dtype, device=images.device)
    return level.reshape(-1, 1, 1, 1).expand(images.shape[0], 1, 1, 1)


def pad_index(size: int, before: int, mode: str, device="cpu", after: int | None = None) -> torch.Tensor:
    """Source indices of a 1-D signal padded by ``before`` and ``after`` (default ``before``).

    ``replicate`` (scipy 'nearest'), ``reflect101`` (OpenCV's default border, d c b | a b c d)
    and ``symmetric`` (scipy 'reflect', c b a | a b c d); works for any padding.
    """
    idx = torch.arange(-before, size + (before if after is None else after), device=device)
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


def pad(images: torch.Tensor, pad_h: int, pad_w: int, mode: str, after_h: int | None = None,
        after_w: int | None = None) -> torch.Tensor:
    """``images`` padded by ``mode``: ``pad_h`` rows above and ``after_h`` (default ``pad_h``)
    below, the same for columns; through ``F.pad`` where it has the mode."""
    after_h = pad_h if after_h is None else after_h
    after_w = pad_w if after_w is None else after_w
    h, w = images.shape[-2:]
    native = {"replicate": "replicate", "reflect101": "reflect"}.get(mode)
    if native and (mode == "replicate" or max(pad_h, after_h) < h and max(pad_w, after_w) < w):
        out = F.pad(images.reshape(-1, 1, h, w), (pad_w, after_w, pad_h, after_h), mode=native)
        return out.reshape(*images.shape[:-2], *out.shape[-2:])
    if pad_h or after_h:
        images = images.index_select(-2, pad_index(h, pad_h, mode, images.device, after_h))
    if pad_w or after_w:
        images = images.index_select(-1, pad_index(w, pad_w, mode, images.device, after_w))
    return images


def gaussian_kernels(sigma: torch.Tensor, truncate: float = 4.0, max_sigma: float | None = None) -> torch.Tensor:
    """(N, 2*radius+1) normalised float64 Gaussian kernels, one per sigma, on sigma's device.

    Each kernel is cut at its own radius ``int(truncate * sigma + 0.5)`` as scipy's
    ``gaussian_filter`` does, so one filter serves a batch of different sigmas exactly; the width
    is that of ``max_sigma`` (a bound on the sigmas, which spares reading them back from a device)
    or of the largest sigma.
    """
    sigma = sigma.detach().to(torch.float64).reshape(-1, 1)
    radius = int(truncate * (float(sigma.max()) if max_sigma is None else max_sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=sigma.device)
    kernel = torch.exp(-0.5 * (x / sigma.clamp(min=1e-12)) ** 2) * (x.abs() <= (truncate * sigma + 0.5).floor())
    return kernel / kernel.sum(dim=1, keepdim=True)


def band_matrices(size: int, kernels: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, size, size) matrices ``M`` with ``M @ x`` the correlation of each column of ``x``,
    padded by ``mode``, with each of the N 1-D kernels (N, k) (k odd)."""
    n, k = kernels.shape
    device = kernels.device
    src = pad_index(size, k // 2, mode, device)
    cols = src[torch.arange(size, device=device).unsqueeze(1) + torch.arange(k, device=device)]
    matrices = torch.zeros(n, size, size, dtype=kernels.dtype, device=device)
    matrices.scatter_add_(2, cols.expand(n, size, k), kernels.unsqueeze(1).expand(n, size, k).contiguous())
    return matrices


@lru_cache(maxsize=128)
def _gaussian_band(size: int, sigma: float, mode: str, truncate: float, device: torch.device) -> torch.Tensor:
    """A scalar sigma's band matrix, built once per device (no copy from the host at every call)."""
    return band_matrices(size, gaussian_kernels(torch.tensor([sigma], device=device), truncate, sigma), mode)[0]


def separable_filter(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``rows @ images @ cols.T``: (H, H) and (W, W) band matrices, or (B, H, H) and (B, W, W) ones."""
    rows, cols = rows.to(images.device, images.dtype), cols.to(images.device, images.dtype)
    if rows.ndim == 3:
        rows, cols = rows.unsqueeze(1), cols.unsqueeze(1)
    return torch.matmul(torch.matmul(rows, images), cols.transpose(-1, -2))


def gaussian_filter(images: torch.Tensor, sigma, mode: str = "replicate", truncate: float = 4.0,
                    max_sigma: float | None = None) -> torch.Tensor:
    """scipy/skimage ``gaussian`` with a scalar sigma or one per sample, cut at ``truncate`` sigma;
    per-sample kernels are built on the images' device, ``max_sigma`` bounding their width."""
    h, w = images.shape[-2:]
    if isinstance(sigma, (int, float)):
        return separable_filter(images, _gaussian_band(h, float(sigma), mode, truncate, images.device),
                                _gaussian_band(w, float(sigma), mode, truncate, images.device))
    sigma = to_device(torch.as_tensor(sigma, dtype=torch.float64).reshape(-1), images)
    kernels = gaussian_kernels(sigma, truncate, max_sigma)
    return separable_filter(images, band_matrices(h, kernels, mode), band_matrices(w, kernels, mode))


def gaussian_filter_axes(images: torch.Tensor, sigma_h: float, sigma_w: float, mode: str,
                         truncate: float = 4.0) -> torch.Tensor:
    """A Gaussian with its own sigma along H and along W (scipy's per-axis sigma)."""
    h, w = images.shape[-2:]
    return separable_filter(images, _gaussian_band(h, sigma_h, mode, truncate, images.device),
                            _gaussian_band(w, sigma_w, mode, truncate, images.device))


def _fast_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c at least ``n``: a size the FFT handles fast."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def correlate2d(images: torch.Tensor, kernels: torch.Tensor, mode: str) -> torch.Tensor:
    """``out[i, j] = sum_ab K[a, b] * padded[i + a, j + b]`` (OpenCV ``filter2D``): (kh, kw) or one
    (B, kh, kw) kernel per sample, odd sizes, the image padded by ``mode``, through the FFT.

    The image is padded by ``mode`` straight to a fast FFT size: the circular correlation reads
    only the first ``kh - 1`` padded rows past the image for the outputs kept, so what lies
    beyond them does not matter.
    """
    h, w = images.shape[-2:]
    kh, kw = kernels.shape[-2:]
    size = (_fast_length(h + kh - 1), _fast_length(w + kw - 1))
    compute = torch.float64 if images.dtype == torch.float64 else torch.float32
    padded = pad(images.to(compute), kh // 2, kw // 2, mode, size[0] - h - kh // 2, size[1] - w - kw // 2)
    kernels = kernels.to(images.device, compute).flip(-1, -2)
    if kernels.ndim == 3:
        kernels = kernels.unsqueeze(1)
    spectrum = torch.fft.rfft2(padded).mul_(torch.fft.rfft2(kernels, s=size))
    out = torch.fft.irfft2(spectrum, s=size)
    return out[..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w].to(images.dtype)


def motion_kernels(angle: torch.Tensor, radius: int, sigma: float, h: int, w: int) -> torch.Tensor:
    """(B, k, k) kernels of the reference's motion blur at each angle (degrees): the image shifted
    by whole pixels along the line, edges replicated, weighted by a half-Gaussian, for
    ``correlate2d(..., mode="replicate")``. Shifts are rounded as the reference rounds them, and the
    line stops where a shift would leave an (h, w) image, as the reference stops."""
    width = 2 * radius + 1
    weights = torch.exp(-torch.arange(width, dtype=torch.float64) ** 2 / (2 * sigma**2))
    weights = weights / weights.sum()
    rad = torch.deg2rad(angle.to("cpu", torch.float64)).reshape(-1, 1)
    steps = torch.arange(width, dtype=torch.float64)
    # The reference's ``point / hypot`` is (sin, cos) of the angle.
    dy = -torch.ceil(steps * torch.sin(rad) - 0.5).long()
    dx = -torch.ceil(steps * torch.cos(rad) - 0.5).long()
    alive = ((dy.abs() < h) & (dx.abs() < w)).long().cumprod(1).bool()
    reach = int(torch.cat([dy.abs(), dx.abs()]).max())
    k = 2 * reach + 1
    b = angle.numel()
    kernels = torch.zeros(b, k * k, dtype=torch.float64)
    index = (reach - dy) * k + (reach - dx)
    kernels.scatter_add_(1, index, weights.expand(b, width) * alive)
    return kernels.reshape(b, k, k)


def motion_blur_by_angle(images: torch.Tensor, angle: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    h, w = images.shape[-2:]
    return correlate2d(images, motion_kernels(angle, radius, sigma, h, w), mode="replicate")


def clipped_zoom(images: torch.Tensor, factor: float, crop: bool = True) -> torch.Tensor:
    """Centre crop of ``ceil(size / factor)`` zoomed back by ``factor`` (scipy ``zoom``, order 1),
    cut to the input's size unless ``crop`` is False."""
    h, w = images.shape[-2:]
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    part = images[..., top : top + ch, left : left + cw]
    # scipy's zoom maps output corners onto input corners, which is align_corners=True.
    size = (round(ch * factor), round(cw * factor))
    out = F.interpolate(part, size=size, mode="bilinear", align_corners=True)
    return out[..., :h, :w] if crop else out
