"""The source's evaluation transform, saved as transformers' ``TimmWrapperImageProcessor``.

The published robust models are evaluated with torchvision's PIL transforms: timm's
``transforms_imagenet_eval`` (the DAD code at ``crop_pct`` 0.9 or 0.95, bicubic) or torchvision's
``Resize(256)`` + ``CenterCrop(224)`` (RobustBench, Madry: ``crop_pct`` 0.875, bilinear). No
native transformers processor reproduces them (its centre crop rounds the corner otherwise, its
torchvision backend resizes tensors, not PIL images), so the converted folder carries
``TimmWrapperImageProcessor``, which runs timm's own transform from the settings saved here, and
which ``AutoImageProcessor`` and ``pipeline("image-classification")`` load (timm installed).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class EvaluationTransform:
    """Resize the shorter side to ``floor(image_size / crop_pct)``, centre-crop ``image_size``, then
    normalise by ``mean`` and ``std``."""

    image_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"--interpolation {self.interpolation!r}: one of {', '.join(INTERPOLATIONS)}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"--crop_pct {self.crop_pct}: the crop's share of the resized image, in (0, 1]")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3:
                raise ValueError(f"--{name} takes three values (R G B), got {len(values)}")
        if min(self.std) <= 0:
            raise ValueError(f"--std {' '.join(map(str, self.std))}: every value must be positive")

    def pretrained_cfg(self) -> dict:
        """timm's data config of this transform (what ``TimmWrapperImageProcessor`` reads)."""
        return dict(input_size=[3, self.image_size, self.image_size], interpolation=self.interpolation,
                    crop_pct=self.crop_pct, crop_mode="center", mean=list(self.mean), std=list(self.std))

    def as_dict(self) -> dict:
        return asdict(self)

    def save_processor(self, folder: str) -> str:
        """Writes ``preprocessor_config.json`` for ``AutoImageProcessor``."""
        path = os.path.join(folder, "preprocessor_config.json")
        with open(path, "w") as f:
            json.dump({"image_processor_type": "TimmWrapperImageProcessor", "pretrained_cfg": self.pretrained_cfg()},
                      f, indent=2)
        return path
