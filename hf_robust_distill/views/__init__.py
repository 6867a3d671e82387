"""What the student sees: distortions, the ImageNet-C corruption families and mixing, all batched on
the device and seeded by a generator (the training augmentation is timm's, per image: ``data``)."""

from .distortions import (CORRUPTIONS, Distorter, additive_noise, blur, check_distortions, corrupt, parse_distortions,
                          patch_mask, pixel_mask)
from .mixing import MixingSettings, mix_batch, smoothed_targets

__all__ = ["additive_noise", "blur", "check_distortions", "corrupt", "CORRUPTIONS", "Distorter", "mix_batch",
           "MixingSettings", "parse_distortions", "patch_mask", "pixel_mask", "smoothed_targets"]
