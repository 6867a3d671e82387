"""ImageNet-C's noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper), speckle."""

from __future__ import annotations

from functools import lru_cache

import torch

from .filters import rand, randn


def gaussian_noise(images, severity, generator=None):
    c = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    return randn(images.shape, images, generator).mul_(c).add_(images).clamp_(0, 1)


LEVELS = 256
_GUIDE = 1024


@lru_cache(maxsize=None)
def _poisson_tables(scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """For the rate ``scale * level / 255`` of each 8-bit level, the Poisson CDF (levels, n), and
    for the cell [m, m + 1) / _GUIDE of each level the smallest count whose CDF exceeds m / _GUIDE
    (a guide table, int16) and that count's CDF (both flattened, level-major)."""
    rate = torch.arange(LEVELS, dtype=torch.float64).unsqueeze(1) * scale / (LEVELS - 1)
    n = int(scale + 12 * scale**0.5 + 20)
    k = torch.arange(n, dtype=torch.float64)
    log_pmf = k * rate.clamp(min=1e-300).log() - rate - torch.lgamma(k + 1)
    pmf = torch.where(rate == 0, (k == 0).double(), log_pmf.exp())
    cdf = pmf.cumsum(1)
    cdf[:, -1] = 1.0
    cells = (torch.arange(_GUIDE, dtype=torch.float64) / _GUIDE).expand(LEVELS, -1).contiguous()
    guide = torch.searchsorted(cdf, cells, right=True)
    return cdf.float().flatten(), guide.short().flatten(), cdf.gather(1, guide).float().flatten(), n


def poisson_counts(images: torch.Tensor, scale: float, generator=None) -> torch.Tensor:
    """Poisson counts of rate ``scale * images`` as float, the rate read at 8-bit precision (exact
    for the 8-bit images of an evaluation set): inverse-CDF sampling from per-level tables. The
    guide table answers almost every value in one lookup; the few whose cell straddles a step of
    the CDF walk on from there. (``torch.poisson`` is serial on a CPU.)"""
    cdf, guide, guide_cdf, n = (t.to(images.device) if torch.is_tensor(t) else t for t in _poisson_tables(float(scale)))
    level = images.float().mul(LEVELS - 1).round_().clamp_(0, LEVELS - 1)
    u = rand(images.shape, images, generator).float()
    cell = torch.add(u.mul(_GUIDE).floor_(), level, alpha=_GUIDE).long()
    count = guide.take(cell).float()
    short = (guide_cdf.take(cell) <= u).nonzero(as_tuple=True)
    if short[0].numel():
        base = level[short].long() * n
        walked, target = count[short].long(), u[short]
        while True:
            behind = cdf.take(base + walked) <= target
            if not behind.any():
                break
            walked += behind
        count[short] = walked.float()
    return count


def shot_noise(images, severity, generator=None):
    c = [60, 25, 12, 5, 3][severity - 1]
    return poisson_counts(images, c, generator).div_(c).clamp_(0, 1).to(images.dtype)


def impulse_noise(images, severity, generator=None):
    """Salt and pepper on each channel value independently, as ``skimage.util.random_noise``: a
    value is flipped with probability ``amount``, to salt or pepper with even odds."""
    amount = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    u = rand(images.shape, images, generator)
    out = torch.where(u < amount / 2, 1.0, images)
    return out.masked_fill_((u >= amount / 2) & (u < amount), 0.0)


def speckle_noise(images, severity, generator=None):
    c = [0.15, 0.2, 0.35, 0.45, 0.6][severity - 1]
    return randn(images.shape, images, generator).mul_(c).add_(1).mul_(images).clamp_(0, 1)
