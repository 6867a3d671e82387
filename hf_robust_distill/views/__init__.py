"""What the student sees: distortions, the ImageNet-C corruption families, training augmentation
and mixing, all batched on the device and seeded by a generator."""

from .augmentation import AugmentationSettings, Augmenter, erasing_masks, parse_rand_augment
from .distortions import (CORRUPTIONS, Distorter, additive_noise, blur, check_distortions, corrupt, parse_distortions,
                          patch_mask, pixel_mask)
from .mixing import MixingSettings, mix_batch, smoothed_targets

__all__ = ["additive_noise", "AugmentationSettings", "Augmenter", "blur", "check_distortions", "corrupt", "CORRUPTIONS",
           "Distorter", "erasing_masks", "mix_batch", "MixingSettings", "parse_distortions", "parse_rand_augment",
           "patch_mask", "pixel_mask", "smoothed_targets"]
