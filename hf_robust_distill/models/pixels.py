"""Pixels at the model's door: ``PixelPreprocessor`` turns a [0, 1] batch into one model's input
(its image processor's size, mean and std) in torch on the device, and ``PixelSpaceClassifier``
wraps a model as a classifier of [0, 1] pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor

from ..data.images import input_size, normalisation


class PixelPreprocessor:
    """Resizes (when needed) and normalises a (B, 3, H, W) batch in [0, 1] for one model."""

    def __init__(self, mean, std, size: tuple[int, int]):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.size = (int(size[0]), int(size[1]))
        self._stats: dict = {}

    def __repr__(self) -> str:
        return f"PixelPreprocessor(mean={self.mean}, std={self.std}, size={self.size})"

    @classmethod
    def from_image_processor(cls, processor) -> PixelPreprocessor:
        mean, std = normalisation(processor)
        return cls(mean if mean is not None else (0.0,) * 3, std if std is not None else (1.0,) * 3,
                   input_size(processor))

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> PixelPreprocessor:
        return cls.from_image_processor(AutoImageProcessor.from_pretrained(name_or_path, **kwargs))

    def __call__(self, pixels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The model's input: resized and normalised in float32, then in ``dtype`` (the model's,
        ``model_dtype``) when given."""
        pixels = pixels.float()
        if tuple(pixels.shape[-2:]) != self.size:
            pixels = F.interpolate(pixels, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        if pixels.device not in self._stats:
            with torch.inference_mode(False):  # made under an evaluation's inference mode, they serve autograd too
                self._stats[pixels.device] = (
                    torch.tensor(self.mean, device=pixels.device).reshape(1, 3, 1, 1),
                    torch.tensor(self.std, device=pixels.device).reshape(1, 3, 1, 1),
                )
        mean, std = self._stats[pixels.device]
        normalised = (pixels - mean) / std
        return normalised if dtype is None else normalised.to(dtype)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a model's input is cast to at its door: that of its first floating parameter (a
    DeepSpeed engine's bf16; FSDP2 keeps float32 parameters and casts inputs by its own policy;
    under autocast float32 inputs are what the model expects)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


class PixelSpaceClassifier(torch.nn.Module):
    """An image classifier that takes [0, 1] pixels: its preprocessor at the door, logits out.

    What attacks and the DAD pipeline call; ``CLIPZeroShotClassifier`` already is one.
    """

    def __init__(self, model: torch.nn.Module, preprocessor: PixelPreprocessor):
        super().__init__()
        self.model = model
        self.preprocessor = preprocessor

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.preprocessor(pixel_values, model_dtype(self.model))).logits


def as_pixel_classifier(model: torch.nn.Module, image_processor=None) -> torch.nn.Module:
    """``model`` as a module from [0, 1] pixels to logits: as it is when it already is one (it
    carries a ``preprocessor``), else wrapped with ``image_processor``'s normalisation (read from
    the model's checkpoint when omitted)."""
    if isinstance(getattr(model, "preprocessor", None), PixelPreprocessor):
        return model
    if image_processor is None:
        source = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
        if not source:
            raise ValueError("pass the model's image_processor: it cannot be read from the model's checkpoint")
        image_processor = AutoImageProcessor.from_pretrained(source)
    preprocessor = (image_processor if isinstance(image_processor, PixelPreprocessor)
                    else PixelPreprocessor.from_image_processor(image_processor))
    return PixelSpaceClassifier(model, preprocessor)


def as_preprocessor(processor) -> PixelPreprocessor:
    """``processor`` as a ``PixelPreprocessor`` (an image processor's size and normalisation)."""
    if isinstance(processor, PixelPreprocessor):
        return processor
    return PixelPreprocessor.from_image_processor(processor)
