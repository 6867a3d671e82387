"""Mixup, CutMix and label smoothing: soft targets, shared with the DAD images, in training."""

import pytest
import torch
import torch.nn.functional as F

from tests.training.test_trainer import make_config, make_trainer
from hf_robust_distill import DistillationConfig
from hf_robust_distill.methods import ce_loss, kd_loss
from hf_robust_distill.views import MixingSettings, mix_batch, smoothed_targets

IMAGES = torch.rand(8, 3, 16, 20, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 1, 2, 3, 4, 5, 6, -100])


def test_targets_are_smoothed_one_hot_and_sum_to_one():
    targets = smoothed_targets(LABELS, 10, 0.1)
    assert targets[:7].sum(1).tolist() == pytest.approx([1.0] * 7)
    assert targets[0, 0] == pytest.approx(0.91) and targets[0, 1] == pytest.approx(0.01)
    assert targets[7].abs().sum() == 0  # no label, no target


@pytest.mark.parametrize("settings", [MixingSettings(mixup_alpha=0.8), MixingSettings(cutmix_alpha=1.0),
                                      MixingSettings(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)])
def test_mixed_batches_are_deterministic_in_range_and_shared_with_the_dad_images(settings):
    dad = IMAGES * 0.5  # stands for each clean image's DAD image
    labels = torch.arange(8)
    for seed in range(6):
        (clean, mixed_dad), targets = mix_batch([IMAGES, dad], labels, 10, settings, torch.Generator().manual_seed(seed))
        (again, _), same_targets = mix_batch([IMAGES, dad], labels, 10, settings, torch.Generator().manual_seed(seed))
        assert torch.equal(clean, again) and torch.equal(targets, same_targets)
        assert clean.min() >= 0 and clean.max() <= 1 and clean.shape == IMAGES.shape
        torch.testing.assert_close(mixed_dad, clean * 0.5)  # the same pairs, weight and box
        assert targets.sum(1).tolist() == pytest.approx([1.0] * 8)
        # The image is lam of itself and 1 - lam of its partner (the reversed batch), as its target is.
        own = smoothed_targets(labels, 10, settings.label_smoothing)
        difference = own[0] - own[-1]  # labels[0] != labels[-1]
        lam = float(((targets[0] - own[-1]) * difference).sum() / (difference * difference).sum())
        if settings.cutmix_alpha and not settings.mixup_alpha:
            from_partner = (clean[0] != IMAGES[0]).any(0).float().mean()
            assert float(from_partner) == pytest.approx(1 - lam, abs=1e-6)
        elif not settings.cutmix_alpha:
            torch.testing.assert_close(clean[0], lam * IMAGES[0] + (1 - lam) * IMAGES[-1])


def test_soft_cross_entropy_and_kd_equal_a_hand_computation():
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(1))
    targets = smoothed_targets(LABELS, 10, 0.1)
    hand = -(targets[:7] * F.log_softmax(logits[:7], -1)).sum(-1).mean()
    torch.testing.assert_close(ce_loss(logits, targets), hand)
    torch.testing.assert_close(ce_loss(logits[:7], targets[:7]),
                               F.cross_entropy(logits[:7], LABELS[:7], label_smoothing=0.1))
    mixed = 0.3 * targets[:7] + 0.7 * targets[:7].flip(0)
    torch.testing.assert_close(ce_loss(logits[:7], mixed), -(mixed * F.log_softmax(logits[:7], -1)).sum(-1).mean())
    teacher = torch.randn(8, 10, generator=torch.Generator().manual_seed(2))
    t, s = F.softmax(teacher / 4, -1), F.log_softmax(logits / 4, -1)
    torch.testing.assert_close(kd_loss(logits, teacher), (t * (t.log() - s)).sum(-1).mean() * 16)


def test_a_run_with_mixup_cutmix_and_smoothing_trains_and_repeats(tiny_vit, digits, tmp_path):
    train, _ = digits
    overrides = dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing_factor=0.1, kd_weight=1.0, ce_weight=0.5)
    runs = []
    for name in ("a", "b"):
        trainer = make_trainer(tiny_vit, make_config(tmp_path / name, **overrides), train)
        trainer.train()
        runs.append(trainer.model.state_dict())
        assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    for key, value in runs[0].items():
        torch.testing.assert_close(runs[1][key], value)
    plain = make_trainer(tiny_vit, make_config(tmp_path / "plain", kd_weight=1.0, ce_weight=0.5), train)
    plain.train()
    assert any(not torch.allclose(plain.model.state_dict()[k], v) for k, v in runs[0].items())  # it did mix


def test_mixing_settings_are_checked():
    with pytest.raises(ValueError, match=">= 0"):
        DistillationConfig(output_dir="x", mixup_alpha=-1)
    with pytest.raises(ValueError, match="cache_teacher"):
        DistillationConfig(output_dir="x", mixup_alpha=0.8, cache_teacher=True)
