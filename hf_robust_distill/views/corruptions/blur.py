"""ImageNet-C's blur corruptions: defocus, glass, motion and zoom, and the held-out gaussian blur."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .filters import clipped_zoom, correlate2d, gaussian_filter, motion_blur_by_angle, pad_index, rand


def gaussian_blur(images, severity, generator=None):
    c = [1, 2, 3, 4, 6][severity - 1]
    return gaussian_filter(images, c, mode="replicate").clamp_(0, 1)


@lru_cache(maxsize=None)
def defocus_kernel(radius: int, alias_blur: float) -> torch.Tensor:
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
    idx = pad_index(n, r, "reflect101").numpy()
    padded = disk[np.ix_(idx, idx)]
    rows = sum(g[i] * padded[i : i + n, :] for i in range(ksize))
    return torch.from_numpy(sum(g[j] * rows[:, j : j + n] for j in range(ksize)).astype(np.float32))


def defocus_blur(images, severity, generator=None):
    radius, alias_blur = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    return correlate2d(images, defocus_kernel(radius, alias_blur), mode="reflect101").clamp_(0, 1)


def motion_blur(images, severity, generator=None, angle=None):
    """Blur along a line at a random angle in [-45, 45] degrees, one angle per sample.

    The reference sums edge-replicated whole-pixel shifts of the image weighted by a
    half-Gaussian: one 2-D kernel per sample, applied through the FFT. ``angle`` (degrees, scalar
    or (B,)) fixes the direction, for tests against the reference.
    """
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    b = images.shape[0]
    if angle is None:
        angle = rand((b,), images, generator).double() * 90 - 45
    angle = torch.as_tensor(angle, dtype=torch.float64).reshape(-1).expand(b)
    return motion_blur_by_angle(images, angle, radius, sigma).clamp_(0, 1)


_ZOOM_FACTORS = [
    np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
    np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03),
]


def zoom_blur(images, severity, generator=None):
    factors = _ZOOM_FACTORS[severity - 1]
    out = images.clone()
    for factor in factors:
        out += clipped_zoom(images, float(factor))
    return out.div_(len(factors) + 1).clamp_(0, 1)


# ---- glass blur: the reference's sequential pixel moves, run as a wavefront -----------------------

_GLASS = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)]  # sigma, max_delta, iterations


def glass_scan(h: int, w: int, delta: int, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's visits in its order, and the wavefront step each can run in.

    The reference visits rows ``h - delta .. delta + 1`` from the bottom, each from the right,
    ``iterations`` times, and gives the pixel the value of one at an offset in ``[-delta, delta)``.
    Two visits touch the same pixel only when both their rows and columns lie within
    ``2 delta - 1``, so step ``2 delta * row + column`` (counted from the first) keeps every such
    pair in order and no two visits of one step share a pixel; each iteration starts
    ``2 delta (2 delta - 1) + 2 delta`` steps after the one before, the least that keeps it behind.
    Returns the flat positions (iterations * rows * cols,) in the reference's order and their steps.
    """
    rows = torch.arange(h - delta, delta, -1)
    cols = torch.arange(w - delta, delta, -1)
    alpha = 2 * delta
    step = alpha * torch.arange(len(rows)).unsqueeze(1) + torch.arange(len(cols))
    lag = alpha * (2 * delta - 1) + 2 * delta
    steps = torch.cat([step.flatten() + i * lag for i in range(iterations)])
    positions = (rows.unsqueeze(1) * w + cols).flatten().repeat(iterations)
    return positions, steps


def glass_schedule(h: int, w: int, delta: int, iterations: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The visits in wavefront order: their flat positions, their index in the reference's
    order, and how many visits each step runs."""
    positions, steps = glass_scan(h, w, delta, iterations)
    order = torch.argsort(steps, stable=True)
    return positions[order], order, torch.bincount(steps[order]).tolist()


def glass_sources(h: int, w: int, delta: int, iterations: int, moves: torch.Tensor) -> torch.Tensor:
    """(B, H*W): for each pixel, the position whose value the reference's moves leave there.

    The reference's "swap" (``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on NumPy views) copies the
    neighbour's value into the pixel and leaves the neighbour as it was, so values spread and
    some vanish; this reproduces it. ``moves``: (n, B) flat offset ``dy * w + dx`` of each visit's
    neighbour, visits in wavefront order (``glass_schedule``). The visits of one step touch
    distinct pixels, so each step is one gather and one copy over the whole batch.
    """
    n, b = moves.shape
    device = moves.device
    here, _, counts = glass_schedule(h, w, delta, iterations)
    here = here.to(device)
    # The map is (H * W, B), batch innermost: a step's own pixels are whole rows of it, and their
    # neighbours lie a few image rows away, so each step works on a small, local piece.
    there = (moves + here.unsqueeze(1)).mul_(b).add_(torch.arange(b, device=device)).flatten()
    source = torch.arange(h * w, device=device, dtype=torch.int32).unsqueeze(1).repeat(1, b)
    flat = source.view(-1)
    start = 0
    for count in counts:
        values = flat.take(there[start * b : (start + count) * b])
        source.index_copy_(0, here[start : start + count], values.view(count, b))
        start += count
    return source.T.long()


def glass_moves(offsets: torch.Tensor, h: int, w: int, delta: int, iterations: int) -> torch.Tensor:
    """(n, B) moves in wavefront order from (B, n, 2) (dx, dy) offsets in the reference's order."""
    _, order, _ = glass_schedule(h, w, delta, iterations)
    offsets = torch.as_tensor(offsets).long()[:, order]
    return (offsets[..., 1] * w + offsets[..., 0]).T.contiguous()


def glass_blur(images, severity, generator=None, offsets=None):
    """Gaussian blur, the reference's local pixel moves, and a Gaussian blur again: the same
    sequence of moves (exact given the same ``offsets``, (B, n, 2) of dx, dy), not a gather of
    independently displaced pixels, so a value carried towards a pixel not yet visited travels on."""
    sigma, delta, iterations = _GLASS[severity - 1]
    b, c, h, w = images.shape
    if min(h, w) <= 2 * delta + 1:
        raise ValueError(f"glass_blur at severity {severity} needs images larger than {2 * delta + 1} px")
    n = iterations * (h - 2 * delta) * (w - 2 * delta)
    if offsets is None:
        # Each visit's (dx, dy), uniform in [-delta, delta)^2, drawn as one of the (2 delta)^2 moves.
        span = torch.arange(-delta, delta, device=images.device)
        table = (span.unsqueeze(1) * w + span).flatten()
        pick = rand((n, b), images, generator).mul_(table.numel()).long().clamp_(max=table.numel() - 1)
        moves = table.take(pick)
    else:
        moves = glass_moves(offsets, h, w, delta, iterations).to(images.device)
    # The reference stores the first blur as 8-bit (truncating) and moves those values.
    x = gaussian_filter(images, sigma, mode="replicate").mul_(255).floor_()
    source = glass_sources(h, w, delta, iterations, moves)
    x = x.flatten(2).gather(2, source.unsqueeze(1).expand(b, c, h * w)).reshape(b, c, h, w)
    return gaussian_filter(x.div_(255), sigma, mode="replicate").clamp_(0, 1)
