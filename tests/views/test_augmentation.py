"""The training augmentation: crop, flip, RandAugment, colour jitter and erasing on the device."""

import pytest
import torch

from tests.training.test_trainer import make_config, make_trainer
from hf_robust_distill import DistillationConfig
from hf_robust_distill.views import AugmentationSettings, Augmenter, erasing_masks, parse_rand_augment

IMAGES = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
OFFICIAL = AugmentationSettings(random_resized_crop=True, hflip=0.5, rand_augment="rand-m9-mstd0.5-inc1",
                                color_jitter=0.4, random_erasing=0.25)
EACH = [AugmentationSettings(random_resized_crop=True), AugmentationSettings(hflip=0.5),
        AugmentationSettings(rand_augment="rand-m9-mstd0.5-inc1"), AugmentationSettings(color_jitter=0.4),
        AugmentationSettings(random_erasing=1.0), OFFICIAL]


@pytest.mark.parametrize("settings", EACH)
def test_augmented_batches_keep_shape_and_range_and_repeat(settings):
    augment = Augmenter(settings, (32, 32))
    a, twin = augment([IMAGES, IMAGES.clone()], torch.Generator().manual_seed(3))
    b, _ = augment([IMAGES, IMAGES.clone()], torch.Generator().manual_seed(3))
    c, _ = augment([IMAGES, IMAGES.clone()], torch.Generator().manual_seed(4))
    assert a.shape == IMAGES.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, IMAGES)
    assert torch.equal(a, twin)  # a DAD image gets its clean image's crop, flip, operations and box


def test_a_flip_and_a_crop_are_shared_exactly():
    augment = Augmenter(AugmentationSettings(random_resized_crop=True, hflip=0.5), (32, 32))
    clean, dad = augment([IMAGES, IMAGES * 0.5], torch.Generator().manual_seed(0))
    torch.testing.assert_close(dad, clean * 0.5)
    flipped, = Augmenter(AugmentationSettings(hflip=1.0), (32, 32))([IMAGES], torch.Generator().manual_seed(0))
    torch.testing.assert_close(flipped, IMAGES.flip(-1))


def test_erasing_boxes_follow_timm():
    masks = erasing_masks(4000, 32, 32, 0.25, torch.Generator().manual_seed(0), "cpu")
    share = masks.float().mean(dim=(1, 2, 3))
    erased = share > 0
    assert erased.float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert share[erased].min() >= 0.015 and share[erased].max() <= 0.36  # 2-33 %, sides rounded as timm does


def test_the_teacher_sees_the_students_pixels(tiny_vit, digits, tmp_path):
    """Teacher = student and no distortion: with every augmentation on, the KD and [CLS] terms are
    0 only if both saw the same crop of the same image."""
    train, _ = digits
    args = make_config(tmp_path, max_steps=1, learning_rate=0.0, distortions="clean", kd_weight=1.0,
                       random_resized_crop=True, hflip=0.5, rand_augment="rand-m9-mstd0.5-inc1",
                       random_erasing=1.0)
    trainer = make_trainer(tiny_vit, args, train)
    trainer.train()
    assert trainer.loss_parts.last["loss_kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert trainer.loss_parts.last["loss_cls"].item() == pytest.approx(0.0, abs=1e-6)


def test_specs_and_settings_are_checked():
    assert parse_rand_augment("rand-m9-mstd0.5-inc1") == (2, 9.0, 0.5)
    assert parse_rand_augment("rand-n3-m7") == (3, 7.0, 0.0)
    for bad in ("randaugment", "rand-n2", "rand-m12"):
        with pytest.raises(ValueError, match="RandAugment"):
            parse_rand_augment(bad)
    with pytest.raises(ValueError, match="rand-m9"):
        DistillationConfig(output_dir="x", rand_augment="m9")
    with pytest.raises(ValueError, match="cache_teacher"):
        DistillationConfig(output_dir="x", random_resized_crop=True, cache_teacher=True)
