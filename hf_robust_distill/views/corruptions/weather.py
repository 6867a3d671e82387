"""ImageNet-C's weather corruptions: snow, frost, fog, and the held-out spatter.

Each takes its randomness as optional arguments (fog's random field, frost's photo and crop,
snow's noise and angle, spatter's noise) and otherwise draws it from the generator, so tests can
hand in the reference's own random numbers.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from .filters import clipped_zoom, gaussian_filter, motion_blur_by_angle, pad, rand, randn

# ---- fog: the diamond-square plasma fractal -----------------------------------------------------


def plasma_fractal(b: int, mapsize: int, decay: float, uniform, device) -> torch.Tensor:
    """(B, mapsize, mapsize) diamond-square height maps in [0, 1], as the reference makes them
    (float32 map, float64 means).

    ``uniform(shape)`` returns (B, *shape) numbers in [0, 1), one call per fill, in the
    reference's order (squares, then the two diamond sets, at each scale).
    """
    grid = torch.zeros(b, mapsize, mapsize, device=device)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        u = uniform(tuple(total.shape[1:])).to(device, torch.float64)
        return (total.double() / 4 + wibble * (2 * wibble * u - wibble)).float()

    while step >= 2:
        half = step // 2
        corners = grid[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, 1)
        grid[:, half::step, half::step] = wibbled_mean(squares + squares.roll(-1, 2))
        centres, corners = grid[:, half::step, half::step], grid[:, 0::step, 0::step]
        grid[:, 0::step, half::step] = wibbled_mean(centres + centres.roll(1, 1) + (corners + corners.roll(-1, 2)))
        grid[:, half::step, 0::step] = wibbled_mean(centres + centres.roll(1, 2) + (corners + corners.roll(-1, 1)))
        step //= 2
        wibble /= decay
    grid -= grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True)


_FOG = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)]


def fog(images, severity, generator=None, uniform=None):
    """A plasma fractal added to the image, brightness rescaled by the image's maximum.
    ``uniform`` replaces the generator's numbers (see ``plasma_fractal``)."""
    thickness, decay = _FOG[severity - 1]
    b, _, h, w = images.shape
    mapsize = 1 << (max(h, w, 3) - 1).bit_length()
    if uniform is None:
        def uniform(shape):
            return rand((b, *shape), images, generator)
    plasma = plasma_fractal(b, mapsize, decay, uniform, images.device)[:, :h, :w].unsqueeze(1).to(images.dtype)
    peak = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images + thickness * plasma).mul_(peak / (peak + thickness)).clamp_(0, 1)


# ---- frost: photos of frost on glass, shipped with the package ------------------------------------

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
_FROST = [(1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)]


@lru_cache(maxsize=None)
def frost_image(index: int) -> torch.Tensor:
    """(3, H, W) uint8 RGB frost photo ``index`` (0-5), the copy shipped with this package (the
    reference's files, unchanged; see ``frost/NOTICE``)."""
    from PIL import Image

    with resources.as_file(resources.files(__package__) / "frost" / FROST_FILES[index]) as path:
        pixels = np.asarray(Image.open(path).convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def rescaled_size(index: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of frost photo ``index`` resized for (h, w) images: the reference fits the image's
    larger relative side, then adds 10%."""
    fh, fw = frost_image(index).shape[1:]
    scale = 1.1 * max(1.0, image_hw[0] / fh, image_hw[1] / fw)
    return int(np.ceil(fh * scale)), int(np.ceil(fw * scale))


@lru_cache(maxsize=12)
def rescaled_frost(index: int, image_hw: tuple[int, int], device: str) -> torch.Tensor:
    """Frost photo ``index`` resized as the reference does (OpenCV's cubic resize, a=-0.75,
    half-pixel centres; 8-bit result), as float 0-255 on ``device``."""
    size = rescaled_size(index, image_hw)
    out = F.interpolate(frost_image(index)[None].double(), size=size, mode="bicubic", align_corners=False)[0]
    return out.round_().clamp_(0, 255).float().to(device)


def frost_draws(b: int, image_hw: tuple[int, int], like: torch.Tensor, generator=None) -> torch.Tensor:
    """(B, 3) long: the frost photo and the top-left corner of its crop, per sample."""
    u = rand((b, 3), like, generator).double().cpu()
    index = (u[:, 0] * len(FROST_FILES)).long().clamp_(max=len(FROST_FILES) - 1)
    room = torch.tensor([[size - side for size, side in zip(rescaled_size(i, image_hw), image_hw)]
                         for i in range(len(FROST_FILES))])
    top_left = (u[:, 1:] * room[index]).long()
    return torch.cat([index.unsqueeze(1), top_left], 1)


def frost(images, severity, generator=None, crops=None):
    """A crop of one of six frost photos blended over the image. ``crops``: (B, 3) long of photo
    index, top and left (as ``frost_draws`` makes them), to reproduce the reference's choice."""
    image_weight, frost_weight = _FROST[severity - 1]
    b, _, h, w = images.shape
    if crops is None:
        crops = frost_draws(b, (h, w), images, generator)
    crops = torch.as_tensor(crops).cpu()
    layer = torch.empty_like(images)
    rows, cols = torch.arange(h), torch.arange(w)
    for index in crops[:, 0].unique().tolist():
        chosen = (crops[:, 0] == index).nonzero().flatten()
        photo = rescaled_frost(index, (h, w), str(images.device))
        r = (crops[chosen, 1:2] + rows).to(images.device)
        c = (crops[chosen, 2:3] + cols).to(images.device)
        layer[chosen.to(images.device)] = photo[:, r.unsqueeze(2), c.unsqueeze(1)].transpose(0, 1).to(images.dtype)
    return layer.mul_(frost_weight / 255).add_(images, alpha=image_weight).clamp_(0, 1)


# ---- snow -------------------------------------------------------------------------------------------

_SNOW = [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
         (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)]


def snow(images, severity, generator=None, layer=None, angle=None):
    """Flakes (thresholded, zoomed noise, motion-blurred at an angle in [-135, -45] degrees,
    added with its 180-degree rotation) over an image whitened towards 1.5 x its grey.
    ``layer`` ((B, H, W) noise of mean and std of the severity) and ``angle`` ((B,) degrees)
    replace the generator's draws."""
    mean, std, zoom, threshold, radius, sigma, keep = _SNOW[severity - 1]
    b, _, h, w = images.shape
    if layer is None:
        layer = randn((b, h, w), images, generator).mul_(std).add_(mean)
    if angle is None:
        angle = rand((b,), images, generator).double() * 90 - 135
    flakes = clipped_zoom(torch.as_tensor(layer, dtype=images.dtype, device=images.device).unsqueeze(1),
                          zoom, crop=False)
    flakes = flakes.masked_fill_(flakes < threshold, 0).clamp_(0, 1)
    angle = torch.as_tensor(angle, dtype=torch.float64).reshape(-1).expand(b)
    flakes = motion_blur_by_angle(flakes, angle, radius, sigma)
    flakes = flakes.mul_(255).round_().clamp_(0, 255).div_(255)[..., :h, :w]
    grey = (0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]).mul_(1.5).add_(0.5)
    out = torch.maximum(images, grey).mul_(1 - keep).add_(images, alpha=keep)
    return out.add_(flakes).add_(flakes.flip(-1, -2)).clamp_(0, 1)


# ---- spatter: water (severities 1-3) and mud (4-5) ------------------------------------------------

_SPATTER = [(0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
            (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1)]
_WATER = (175 / 255, 238 / 255, 238 / 255)
_MUD = (63 / 255, 42 / 255, 20 / 255)


def canny(u8: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """OpenCV's ``Canny`` (3x3 Sobel, edges replicated, L1 magnitude, its non-maximum suppression
    and 8-connected hysteresis) of (B, 1, H, W) 0-255 values: a boolean edge map."""
    h, w = u8.shape[-2:]
    x = pad(u8, 1, 1, "replicate")
    across = x[..., :, 2:] - x[..., :, :-2]
    dx = across[..., :-2, :] + 2 * across[..., 1:-1, :] + across[..., 2:, :]
    down = x[..., 2:, :] - x[..., :-2, :]
    dy = down[..., :, :-2] + 2 * down[..., :, 1:-1] + down[..., :, 2:]
    ax, ay = dx.abs(), dy.abs()
    mag = ax + ay
    m = F.pad(mag, (1, 1, 1, 1))  # the magnitude outside the image is 0

    def at(oy, ox):
        return m[..., 1 + oy : 1 + oy + h, 1 + ox : 1 + ox + w]

    # OpenCV's fixed-point direction tests: tan(22.5 deg) as 13573 / 2^15.
    tg22 = ax * (13573 / 32768)
    horizontal = ay < tg22
    vertical = ay > tg22 + 2 * ax
    opposite = (dx < 0) != (dy < 0)
    diagonal = (mag > torch.where(opposite, at(-1, 1), at(-1, -1))) & (mag > torch.where(opposite, at(1, -1), at(1, 1)))
    peak = torch.where(horizontal, (mag > at(0, -1)) & (mag >= at(0, 1)),
                       torch.where(vertical, (mag > at(-1, 0)) & (mag >= at(1, 0)), diagonal))
    candidate = peak & (mag > int(low))
    edges = candidate & (mag > int(high))
    weak = candidate & ~edges
    while weak.any():
        reached = weak & dilate3(edges)
        if not reached.any():
            break
        edges |= reached
        weak &= ~reached
    return edges


def dilate3(mask: torch.Tensor) -> torch.Tensor:
    """A boolean (B, 1, H, W) mask grown by its 8 neighbours."""
    p = F.pad(mask, (1, 1, 1, 1))
    rows = p[..., :, :-2] | p[..., :, 1:-1] | p[..., :, 2:]
    return rows[..., :-2, :] | rows[..., 1:-1, :] | rows[..., 2:, :]


def distance_to_edges(edges: torch.Tensor, cap: int) -> torch.Tensor:
    """Euclidean distance of every pixel to the nearest edge pixel, capped at ``cap``: the row
    distance from running maxima, then its lower envelope over the column within ``cap``."""
    b, _, h, w = edges.shape
    cols = torch.arange(w, device=edges.device, dtype=torch.float32).expand(b, 1, h, w)
    far = float(w + cap + 1)
    left = torch.where(edges, cols, -far).cummax(-1).values
    right = -torch.where(edges, -cols, -far - w).flip(-1).cummax(-1).values.flip(-1)
    row = torch.minimum(cols - left, right - cols).clamp_(max=cap + 1).square_()
    best = row.clone()
    padded = F.pad(row, (0, 0, cap, cap), value=float((cap + 1) ** 2))
    for t in range(-cap, cap + 1):
        if t:
            torch.minimum(best, padded[..., cap + t : cap + t + h, :] + t * t, out=best)
    return best.sqrt_().clamp_(max=cap)


def box3(images: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``blur`` with a 3x3 box, border reflect-101."""
    x = pad(images, 1, 1, "reflect101")
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    return (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]).div_(9)


def equalize_histogram(u8: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``equalizeHist`` of each (B, 1, H, W) image of 0-255 integer values."""
    b = u8.shape[0]
    values = u8.reshape(b, -1).long()
    hist = torch.zeros(b, 256, device=u8.device, dtype=torch.float64).scatter_add_(
        1, values, torch.ones_like(values, dtype=torch.float64))
    first = (hist > 0).double().argmax(1, keepdim=True)
    total = values.shape[1]
    first_count = hist.gather(1, first)
    scale = 255.0 / (total - first_count).clamp(min=1)
    lut = ((hist.cumsum(1) - first_count) * scale).round().clamp_(0, 255)
    lut = torch.where(first_count == total, first.double(), lut)
    return lut.to(u8.dtype).gather(1, values).reshape(u8.shape)


def spatter_draws(b: int, h: int, w: int, severity: int, like: torch.Tensor, generator=None) -> torch.Tensor:
    mean, std = _SPATTER[severity - 1][:2]
    return randn((b, h, w), like, generator).mul_(std).add_(mean)


def spatter(images, severity, generator=None, liquid=None):
    """Water drops (severities 1-3: edges of thresholded, blurred noise turned into pale
    turquoise ripples through a distance transform, as the reference does with OpenCV) or mud
    (4-5: brown blobs). ``liquid``: the (B, H, W) noise, in place of the generator's."""
    _, _, sigma, threshold, strength, mud = _SPATTER[severity - 1]
    b, _, h, w = images.shape
    if liquid is None:
        liquid = spatter_draws(b, h, w, severity, images, generator)
    liquid = torch.as_tensor(liquid, dtype=images.dtype, device=images.device).unsqueeze(1)
    liquid = gaussian_filter(liquid, sigma, mode="replicate")
    liquid = liquid.masked_fill_(liquid < threshold, 0)
    if mud:
        m = gaussian_filter((liquid > threshold).to(images.dtype), strength, mode="replicate")
        m = m.masked_fill_(m < 0.8, 0)
        color = torch.tensor(_MUD, dtype=images.dtype, device=images.device).reshape(1, 3, 1, 1)
        return (images * (1 - m)).add_(m * color).clamp_(0, 1)
    liquid = liquid.mul_(255).floor_().float()  # the reference's 8-bit layer
    dist = distance_to_edges(canny(liquid, 50, 150), cap=20)
    dist = box3(dist).floor_()
    dist = equalize_histogram(dist)
    ripple = torch.tensor([[-2.0, -1, 0], [-1, 1, 1], [0, 1, 2]], device=images.device)
    dist = correlate_small(dist, ripple).round_().clamp_(0, 255)
    dist = box3(dist).round_()
    m = liquid * dist
    m = m / m.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12) * strength
    color = torch.tensor(_WATER, dtype=images.dtype, device=images.device).reshape(1, 3, 1, 1)
    return (m.to(images.dtype) * color).add_(images).clamp_(0, 1)


def correlate_small(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """A 3x3 correlation (OpenCV ``filter2D``), border reflect-101, tap by tap."""
    h, w = images.shape[-2:]
    x = pad(images, 1, 1, "reflect101")
    out = torch.zeros_like(images)
    for (a, b), weight in zip(torch.cartesian_prod(torch.arange(3), torch.arange(3)).tolist(), kernel.flatten().tolist()):
        if weight:
            out.add_(x[..., a : a + h, b : b + w], alpha=weight)
    return out
