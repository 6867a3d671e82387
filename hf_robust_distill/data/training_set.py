"""``AugmentedImages``: a training split as the recipes' trainer reads it when the run augments. Row i
is decoded once, from its original image, and made by ``TrainingTransform`` with draws seeded by
(seed, epoch, i): the same rows give the same pixels with any number of workers or processes and
after a resume, and another epoch gives other draws. ``set_epoch`` reaches the workers through
shared memory (persistent workers included)."""

from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from .augmentation import TrainingTransform, draw_seed
from .columns import LABELS, PIXELS
from .images import ImageResizer, decode_rgb, to_uint8
from .pixel_levels import unit_levels


class AugmentedImages(TorchDataset):
    """``source`` (image columns undecoded) augmented by ``transform``. ``frame`` is the model's
    processor (an ``ImageResizer``): without a random crop every image is first brought to its frame,
    and so is the clean image of a pair whose draws are ``shared`` (its DAD image was made in that
    frame, so the two stay pixel-aligned). ``extra_images`` (an offline DAD image beside its clean
    one) are made alike, each with its clean image's draws when ``shared``, with draws of their own
    otherwise (the official script's two loaders). 8-bit (3, H, W) pixels, or floats in [0, 1] for
    ``pixel_dtype=torch.float32``."""

    def __init__(self, source, image_column: str, label_column: str | None, transform: TrainingTransform, *,
                 frame: ImageResizer, seed: int = 0, extra_images: dict[str, str] | None = None,
                 extra_columns: tuple[str, ...] = (), shared: bool = True, pixel_dtype: torch.dtype = torch.uint8):
        self.source, self.image_column, self.label_column = source, image_column, label_column
        self.transform, self.frame, self.seed, self.shared = transform, frame, seed, shared
        self.extra_images, self.extra_columns = dict(extra_images or {}), tuple(extra_columns)
        self.pixel_dtype = pixel_dtype
        self.levels = unit_levels(frame.processor) if pixel_dtype != torch.uint8 else None
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        rows = self.source[list(indices)]
        return [self._example(int(index), {k: v[i] for k, v in rows.items()}) for i, index in enumerate(indices)]

    def _example(self, index: int, row: dict) -> dict:
        epoch, crops = self.epoch, self.transform.settings.random_resized_crop
        clean, bad = decode_rgb(row[self.image_column])
        pairs = {PIXELS: (clean, 0, not crops or (self.shared and bool(self.extra_images)))}
        for column, name in self.extra_images.items():
            image, problem = decode_rgb(row[column])
            bad = bad or problem
            pairs[name] = (image, 0 if self.shared else 1, False)
        example = {"bad_image": bad}
        for name, (image, stream, in_frame) in pairs.items():
            example[name] = None if bad else self._pixels(image, draw_seed(self.seed, epoch, index, stream), in_frame)
        for column in self.extra_columns:
            example[column] = torch.as_tensor(row[column], dtype=torch.float32)
        if self.label_column is not None:
            example[LABELS] = row[self.label_column]
        return example

    def _pixels(self, image: Image.Image, seed: int, in_frame: bool) -> torch.Tensor:
        pixels = training_pixels(image, self.transform, self.frame, seed, in_frame)
        return pixels if self.levels is None else self.levels[pixels.long()]


def training_pixels(image: Image.Image, transform: TrainingTransform, frame: ImageResizer, seed: int,
                    in_frame: bool) -> torch.Tensor:
    """One image through ``transform`` with draw seed ``seed``: first brought to ``frame`` (the model's
    processor) when ``in_frame``, or resized to the transform's size when it crops whole and the image
    was stored at another size. 8-bit (3, H, W)."""
    size = transform.size
    if in_frame:
        image = Image.fromarray(to_uint8(frame([image])[0]).permute(1, 2, 0).numpy())
    elif not transform.settings.random_resized_crop and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BICUBIC)
    return transform(image, seed)
