"""Images from a dataset cell to a model's input, as ``pipeline("image-classification")`` gets
them, and the files that fail to decode.

A cell decodes to upright RGB exactly as ``transformers.image_utils.load_image`` does it (EXIF
orientation applied, then ``convert("RGB")``), so the accuracy a card reports is the one a user of
``pipeline("image-classification")`` gets. Greyscale of more than 8 bits, or float greyscale, that
this conversion would clip or truncate (16-bit values above 255 turn white) does not decode: a
model trained on it could not be used through the pipeline, and the cell names the fix (convert
the images to 8-bit). ``ImageResizer`` then applies the model's own image
processor without its normalisation, so the [0, 1] pixels a model is trained and evaluated on
are the ones its saved processor makes; normalisation happens later, at the model's door.

A cell that fails to decode becomes a ``BadImage`` naming its file; ``BadImageLog`` logs each
once, counts them, and stops the run when they pass a share of the split.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What PIL raises for truncated, corrupt, unknown or oversized files (UnidentifiedImageError is an OSError)."""

_WIDE_GREYSCALE = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")
"""Greyscale modes whose values ``convert("RGB")`` clips to 0-255 (and truncates, for floats)."""


@dataclass(frozen=True)
class BadImage:
    """A dataset cell that could not be decoded: where it came from and why."""

    source: str
    error: str

    def __str__(self) -> str:
        return f"{self.source} ({self.error})"


def to_rgb(image) -> Image.Image:
    """A decoded image (PIL or array) as 8-bit upright RGB, exactly as ``load_image`` makes it.

    Raises ``ValueError`` for greyscale that conversion would change (16-bit or 32-bit values
    outside 0-255, float values that are not whole numbers in 0-255)."""
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"cannot read an image array of shape {array.shape} as RGB; "
                             "expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
        image = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a decoded image, got {type(image).__name__}")
    image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_GREYSCALE:
        check_pipeline_keeps(image)
    return image.convert("RGB")


def check_pipeline_keeps(image: Image.Image) -> None:
    """Fails when ``convert("RGB")`` (the pipeline's decoding) would clip or truncate this greyscale."""
    values = np.asarray(image)
    if not values.size:
        return
    low, high = float(values.min()), float(values.max())
    whole = image.mode != "F" or bool(np.all(values == np.floor(values)))
    if low >= 0 and high <= 255 and whole:
        return
    what = "float" if image.mode == "F" else "16-bit" if image.mode.startswith("I;16") else "32-bit"
    raise ValueError(f"{what} greyscale with values from {low:g} to {high:g}, which transformers' pipeline "
                     "(load_image, convert('RGB')) clips to 0-255" + (" and truncates" if not whole else "")
                     + ": a model trained on them could not be used through it. Convert the images to 8-bit first, "
                     "e.g. Image.fromarray((np.asarray(image) / 257).astype(np.uint8)) for 16-bit")


def image_source(cell) -> str:
    """A name for a dataset cell's image: its file path, else a digest of its bytes."""
    if isinstance(cell, dict):
        if cell.get("path"):
            return str(cell["path"])
        if cell.get("bytes"):
            digest = hashlib.sha1(cell["bytes"]).hexdigest()[:12]
            return f"an embedded image ({len(cell['bytes'])} bytes, sha1 {digest})"
    if isinstance(cell, str):
        return cell
    filename = getattr(cell, "filename", None)
    return filename or f"an in-memory {type(cell).__name__}"


def open_image(cell) -> Image.Image:
    """The fully decoded PIL image of a cell: an undecoded ``datasets.Image`` value
    (``{"bytes", "path"}``), a path, a PIL image or an array."""
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
        if data is not None:
            image = Image.open(io.BytesIO(data))
        elif path:
            image = Image.open(path)
        else:
            raise ValueError("the cell holds neither bytes nor a path")
    elif isinstance(cell, str):
        image = Image.open(cell)
    else:
        return cell if isinstance(cell, Image.Image) else to_rgb(cell)
    image.load()  # decoding happens here: truncated and corrupt files fail now, not later
    return image


def decode_rgb(cell) -> tuple[Image.Image | None, BadImage | None]:
    """``(RGB image, None)``, or ``(None, BadImage)`` when the cell does not decode."""
    try:
        return to_rgb(open_image(cell)), None
    except DECODE_ERRORS as error:
        return None, BadImage(image_source(cell), f"{type(error).__name__}: {error}")


def timm_data_config(processor) -> dict | None:
    """The timm data config (input size, interpolation, crop, mean, std) of transformers'
    ``TimmWrapperImageProcessor``, which runs timm's own evaluation transform; ``None`` for others."""
    config = getattr(processor, "data_config", None)
    return config if isinstance(config, dict) and hasattr(processor, "val_transforms") else None


def normalisation(processor) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The (mean, std) a processor normalises with; ``(None, None)`` where it does not."""
    timm_config = timm_data_config(processor)
    if timm_config is not None:
        return tuple(timm_config["mean"]), tuple(timm_config["std"])
    if not getattr(processor, "do_normalize", True):
        return None, None
    return getattr(processor, "image_mean", None), getattr(processor, "image_std", None)


def _timm_pixel_stages(processor):
    """timm's evaluation transform of ``processor`` without its final normalisation."""
    from torchvision.transforms import Compose, Normalize

    return Compose([t for t in processor.val_transforms.transforms if not isinstance(t, Normalize)])


def input_size(processor) -> tuple[int, int]:
    """(height, width) a model is fed, read from its image processor (crop size when it crops)."""
    timm_config = timm_data_config(processor)
    if timm_config is not None:
        return int(timm_config["input_size"][-2]), int(timm_config["input_size"][-1])
    def read(size):
        if size is None:
            return None
        get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
        if get("height") and get("width"):
            return int(get("height")), int(get("width"))
        if get("shortest_edge"):
            return int(get("shortest_edge")), int(get("shortest_edge"))
        return None

    if getattr(processor, "do_center_crop", False):
        crop = read(getattr(processor, "crop_size", None))
        if crop:
            return crop
    size = read(getattr(processor, "size", None))
    if size is None:
        raise ValueError(f"cannot read an input size from {type(processor).__name__}: it has no "
                         "size with height/width or shortest_edge")
    return size


class ImageResizer:
    """Brings RGB images to a model's input size as float (3, H, W) pixels in [0, 1].

    Given an image processor, it runs that processor without its normalisation: the same
    resize (size, resample), centre crop and rescale that ``pipeline("image-classification")``
    applies with the saved processor, whatever its class or backend (a timm processor's own
    evaluation transform, up to its ``Normalize``). Given a size, it resizes
    with ``resample`` (bicubic), for data that has no processor (tests, the demo zoo's builders).
    """

    def __init__(self, size_or_processor, resample: int = Image.BICUBIC):
        if isinstance(size_or_processor, (tuple, list)):
            self.processor = None
            self.size = (int(size_or_processor[0]), int(size_or_processor[1]))
        else:
            self.processor = size_or_processor
            self.size = input_size(size_or_processor)
            check_rescales_to_unit_range(size_or_processor)
        self.resample = resample

    def __repr__(self) -> str:
        how = type(self.processor).__name__ if self.processor is not None else f"resample={self.resample}"
        return f"ImageResizer(size={self.size}, {how})"

    @property
    def key(self) -> str:
        """What decides the pixels, for cache keys: the processor's settings, or size and resample."""
        if self.processor is None:
            return f"{self.size[0]}x{self.size[1]}:resample{int(self.resample)}"
        settings = {k: v for k, v in self.processor.to_dict().items()
                    if k not in ("image_mean", "image_std", "do_normalize", "processor_class")}
        return f"{self.size[0]}x{self.size[1]}:" + hashlib.sha256(
            json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def __call__(self, images: list[Image.Image]) -> list[torch.Tensor]:
        if not images:
            return []
        if self.processor is None:
            return [_plain_resize(image, self.size, self.resample) for image in images]
        if timm_data_config(self.processor) is not None:
            stages = _timm_pixel_stages(self.processor)
            pixels = torch.stack([stages(image) for image in images])
        else:
            pixels = self.processor(images=images, do_normalize=False, return_tensors="pt")["pixel_values"]
        if tuple(pixels.shape[-2:]) != self.size:
            raise ValueError(f"{type(self.processor).__name__} made {tuple(pixels.shape[-2:])} px images, not the "
                             f"{self.size} its size and crop settings say; give it a fixed size or a centre crop")
        return list(pixels.float().clamp_(0, 1))


class ImageNetCCrop(ImageResizer):
    """The crop ImageNet-C's images are made from (``make_imagenet_c.py``: torchvision's
    ``Resize(256)`` and ``CenterCrop(224)`` on PIL images): the shorter side resized to 256 with
    PIL's bilinear filter, the longer to ``int(256 * long / short)``, then the centre 224 x 224,
    its corner rounded as torchvision rounds it."""

    def __init__(self, resize: int = 256, crop: int = 224):
        super().__init__((crop, crop), resample=Image.BILINEAR)
        self.resize = resize

    def __repr__(self) -> str:
        return f"ImageNetCCrop(resize={self.resize}, crop={self.size[0]})"

    @property
    def key(self) -> str:
        return f"imagenet-c:{self.resize}/{self.size[0]}:bilinear"

    def __call__(self, images: list[Image.Image]) -> list[torch.Tensor]:
        return [_as_pixels(self.crop(image)) for image in images]

    def crop(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        short, long = min(width, height), max(width, height)
        scaled = (self.resize, int(self.resize * long / short))
        image = image.resize(scaled if width <= height else scaled[::-1], self.resample)
        width, height = image.size
        crop = self.size[0]
        top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
        return image.crop((left, top, left + crop, top + crop))


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels as 8-bit ones, rounded (as PIL and the pipeline round)."""
    return pixels.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def _as_pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def _plain_resize(image: Image.Image, size: tuple[int, int], resample: int) -> torch.Tensor:
    return _as_pixels(image.resize((size[1], size[0]), resample))


def check_rescales_to_unit_range(processor) -> None:
    """Pixels stay in [0, 1] until a model's door: the processor must rescale 8-bit images by 1/255."""
    factor = getattr(processor, "rescale_factor", 1 / 255)
    if not getattr(processor, "do_rescale", True) or abs(float(factor) - 1 / 255) > 1e-12:
        raise ValueError(f"{type(processor).__name__} does not rescale 8-bit images to [0, 1] (do_rescale="
                         f"{getattr(processor, 'do_rescale', None)}, rescale_factor={factor}); save the model with a "
                         "processor that rescales by 1/255 and normalises with its mean and std")


class TooManyBadImages(RuntimeError):
    """More of a split failed to decode than ``max_bad_image_fraction`` allows."""


class BadImageLog:
    """The bad images of one split: each logged once with its file, counted, and the run stopped
    once more than ``max_fraction`` of the split's ``total`` images have failed."""

    def __init__(self, total: int, max_fraction: float = 0.01, split: str = "training split"):
        self.total, self.max_fraction, self.split = total, max_fraction, split
        self.images: dict[str, BadImage] = {}

    def __len__(self) -> int:
        return len(self.images)

    def record(self, bad_images) -> None:
        for bad in bad_images:
            if bad.source in self.images:
                continue
            self.images[bad.source] = bad
            logger.warning("skipping an image of the %s that does not decode: %s", self.split, bad)
        if len(self.images) > self.max_fraction * self.total:
            raise TooManyBadImages(too_many_message(list(self.images.values()), self.total, self.max_fraction,
                                                    self.split))

    def summary(self) -> str:
        if not self.images:
            return f"every image of the {self.split} decoded"
        return (f"{len(self.images)} image(s) of the {self.split} did not decode and were skipped: "
                + list_of(list(self.images.values())))

    def log_summary(self) -> None:
        """The final log line: a warning listing the skipped files, if there are any."""
        (logger.warning if self.images else logger.info)("%s", self.summary())


def list_of(bad_images: list[BadImage], limit: int = 20) -> str:
    shown = "; ".join(str(b) for b in bad_images[:limit])
    return shown + (f"; and {len(bad_images) - limit} more" if len(bad_images) > limit else "")


def too_many_message(bad_images: list[BadImage], total: int, max_fraction: float, split: str) -> str:
    return (f"{len(bad_images)} of the {total} images of the {split} do not decode, more than "
            f"--max_bad_image_fraction {max_fraction:g} allows: {list_of(bad_images)}. Remove or repair these "
            "files, or raise --max_bad_image_fraction to skip them")
