"""The training images the field trains on: timm's ImageNet training transform, image by image.

``TrainingTransform`` is ``timm.data.create_transform``'s training pipeline with the run's settings
(RandomResizedCrop of the original image with its scale and ratio, ``bicubic``/``bilinear``/``random``
interpolation, flip, RandAugment or colour jitter), then random erasing, 8-bit (3, H, W) pixels out.
It runs in the data loader's workers, and each image's draws are seeded by (seed, epoch, index,
stream), so the pixels do not depend on the workers, the processes or a resume.

Two ports, each tested equal to timm given the same draws:

- erasing: timm erases after normalisation, with N(0, 1) noise in the model's normalised space; pixels
  here stay in [0, 1] until the model's door, so timm's own ``RandomErasing`` draws the box and the
  noise, which is mapped back through the model's mean and std (clipped to [0, 1], then 8-bit);
- posterize: with Pillow 13, timm's ``PosterizeIncreasing`` asks for 0 bits at the top of its
  magnitude noise and Pillow raises; 0 bits is what older Pillows made of it, a black image.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .images import normalisation

INTERPOLATIONS = ("bicubic", "bilinear", "random")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
"""timm's defaults, for a model without a processor (RandAugment's fill, erasing's noise)."""
CROP_RATIO = (3 / 4, 4 / 3)
_RAND_AUGMENT = re.compile(r"^rand(-(m\d+(\.\d+)?|n\d+|mstd\d+(\.\d+)?|inc[01]|w\d+|mmax\d+))*$")


def parse_rand_augment(spec: str) -> tuple[int, float, float]:
    """(n, m, mstd) of a timm RandAugment spec such as ``rand-m9-mstd0.5-inc1`` (n defaults to 2)."""
    if not _RAND_AUGMENT.match(spec) or "-m" not in spec:
        raise ValueError(f"cannot read the RandAugment spec {spec!r}; write timm's form, e.g. 'rand-m9-mstd0.5-inc1' "
                         "(m: magnitude 0-10, n: operations, mstd: magnitude noise)")
    n, m, mstd = 2, 0.0, 0.0
    for part in spec.split("-")[1:]:
        if part.startswith("mstd"):
            mstd = float(part[4:])
        elif part.startswith("mmax") or part.startswith("inc") or part.startswith("w"):
            continue
        elif part.startswith("m"):
            m = float(part[1:])
        elif part.startswith("n"):
            n = int(part[1:])
    if not 0 < m < 10 or not 1 <= n <= 15:
        raise ValueError(f"RandAugment's magnitude lies in (0, 10) and its count in [1, 15]; got m={m}, n={n}")
    return n, m, mstd


@dataclass(frozen=True)
class AugmentationSettings:
    """The run's training augmentation, in timm's terms (``--random_resized_crop``, ``--crop_scale_min``,
    ``--hflip``, ``--rand_augment``, ``--color_jitter`` (only without RandAugment, as timm), ``--random_erasing``,
    ``--train_interpolation``)."""

    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.0
    rand_augment: str | None = None
    color_jitter: float = 0.0
    random_erasing: float = 0.0
    interpolation: str = "bicubic"

    @property
    def active(self) -> bool:
        return (self.random_resized_crop or self.hflip > 0 or bool(self.rand_augment) or self.color_jitter > 0
                or self.random_erasing > 0)


def draw_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """The seed of one image's draws: a function of the run's seed, the epoch, the row and the stream
    (0: the image, 1: its DAD image when the two are drawn apart)."""
    return int(np.random.SeedSequence([seed, epoch, index, stream]).generate_state(1, dtype=np.uint32)[0])


class seeded_draws:
    """Python's, NumPy's and torch's global generators (timm's transforms draw from all three) seeded
    for one image, and given back as they were: a transform in the main process leaves the
    trainer's draws untouched."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        cpu = torch.random.default_generator  # the CPU's alone (torch.manual_seed queues every GPU's too)
        self.saved = random.getstate(), np.random.get_state(), cpu.get_state()
        random.seed(self.seed)
        np.random.seed(self.seed)
        cpu.manual_seed(self.seed)

    def __exit__(self, *exc):
        python, numpy, torch_state = self.saved
        random.setstate(python)
        np.random.set_state(numpy)
        torch.random.default_generator.set_state(torch_state)


class TrainingTransform:
    """timm's training transform of ``settings`` to ``size`` (H, W), then random erasing in pixel
    space; ``mean``/``std`` are the model's (RandAugment's fill, erasing's noise). Called with a PIL
    image and its draw seed, it returns uint8 (3, H, W) pixels. Without ``random_resized_crop`` the
    image must already be at ``size`` (the processor's frame) and is cropped whole."""

    def __init__(self, settings: AugmentationSettings, size: tuple[int, int], mean, std):
        self.settings, self.size = settings, (int(size[0]), int(size[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._timm = self._erasing = None  # built at the first image, in the worker that uses them

    @classmethod
    def for_resizer(cls, settings: AugmentationSettings, resizer) -> TrainingTransform:
        """The transform to ``resizer``'s size with its processor's mean and std (timm's without one)."""
        mean, std = normalisation(resizer.processor) if resizer.processor is not None else (None, None)
        return cls(settings, resizer.size, mean or IMAGENET_MEAN, std or IMAGENET_STD)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_timm": None, "_erasing": None}

    def __call__(self, image: Image.Image, seed: int) -> torch.Tensor:
        if self._timm is None:
            self._timm, self._erasing = timm_transform(self.settings, self.size, self.mean, self.std)
        with seeded_draws(seed):
            pixels = self._timm(image)
            if self._erasing is not None:
                pixels = erase_in_pixel_space(pixels, self._erasing, self.mean, self.std)
        return pixels


def timm_transform(settings: AugmentationSettings, size: tuple[int, int], mean, std):
    """(timm's training transform up to its 8-bit tensor, timm's ``RandomErasing`` or ``None``)."""
    from timm.data.transforms_factory import transforms_imagenet_train
    from timm.data.random_erasing import RandomErasing

    crop = dict(scale=settings.crop_scale, ratio=CROP_RATIO) if settings.random_resized_crop else dict(
        scale=(1.0, 1.0), ratio=(size[1] / size[0],) * 2)  # the whole image, already at size
    transform = transforms_imagenet_train(
        img_size=size, **crop, hflip=settings.hflip, vflip=0.0,
        color_jitter=settings.color_jitter if settings.color_jitter > 0 else None,
        auto_augment=settings.rand_augment or None, interpolation=settings.interpolation,
        mean=tuple(mean.flatten().tolist()), std=tuple(std.flatten().tolist()), re_prob=0.0, use_prefetcher=True)
    guard_posterize(transform)
    erasing = (RandomErasing(settings.random_erasing, mode="pixel", max_count=1, num_splits=0, device="cpu")
               if settings.random_erasing > 0 else None)
    return transform, erasing


def erase_in_pixel_space(pixels: torch.Tensor, erasing, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """timm's ``RandomErasing`` of 8-bit ``pixels`` as timm applies it to the normalised image: the same
    draws (they depend on the image's shape alone, so timm erases a stand-in that records the box), the
    noise mapped back through ``mean``/``std``, clipped to [0, 1] and rounded to 8 bits."""
    canvas = _Canvas(tuple(pixels.shape))
    erasing(canvas)
    for box, noise in canvas.written:  # pixels: a fresh tensor of timm's, written in place
        pixels[box] = (noise * std + mean).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return pixels


class _Canvas:
    """What timm's ``RandomErasing`` reads of an image (its size and dtype), and the boxes it writes."""

    dtype = torch.float32

    def __init__(self, shape: tuple[int, ...]):
        self.shape, self.written = shape, []

    def size(self) -> tuple[int, ...]:
        return self.shape

    def __setitem__(self, box, noise: torch.Tensor) -> None:
        self.written.append((box, noise))


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's ``posterize``, with 0 bits a black image (Pillow 13 raises where older Pillows gave one)."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def guard_posterize(transform) -> None:
    """A timm transform's RandAugment posterize ops made safe under Pillow 13 (``_posterize``), in place."""
    from timm.data import auto_augment

    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):
            if op.aug_fn is auto_augment.posterize:
                op.aug_fn = _posterize


def check_augmentation_flags(args, problems) -> None:
    """The training augmentation's fields of a ``DistillationConfig``, and timm, which makes it."""
    if (not 0 < args.crop_scale_min <= 1 or not 0 <= args.hflip <= 1 or not 0 <= args.random_erasing <= 1
            or args.color_jitter < 0):
        problems.add("--crop_scale_min / --hflip / --random_erasing / --color_jitter",
                     "crop_scale_min lies in (0, 1], hflip and random_erasing are probabilities, color_jitter is >= 0")
    if args.rand_augment:
        problems.check("--rand_augment", parse_rand_augment, args.rand_augment)
    if args.train_interpolation not in INTERPOLATIONS:
        problems.add("--train_interpolation", f"one of {', '.join(INTERPOLATIONS)}, got {args.train_interpolation!r}")
    if args.augmentation.active:
        problems.check("--random_resized_crop / --rand_augment / ...", check_timm_installed)


def check_timm_installed() -> None:
    try:
        import timm.data  # noqa: F401
    except ImportError as error:  # timm or torchvision missing or broken (torchvision beside another torch)
        raise ValueError(f"the training augmentation is timm's, which does not import here ({error}): pip install "
                         "timm, with the torchvision built for this torch") from None
