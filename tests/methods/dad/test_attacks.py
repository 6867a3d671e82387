import pytest
import torch
import torch.nn.functional as F
from transformers import ViTForImageClassification

from hf_robust_distill import pgd_attack
from hf_robust_distill.models import PixelPreprocessor, PixelSpaceClassifier


@pytest.fixture(scope="module")
def classifier(tiny_vit):
    model = ViTForImageClassification.from_pretrained(tiny_vit, attn_implementation="eager")
    return PixelSpaceClassifier(model, PixelPreprocessor.from_pretrained(tiny_vit))


@pytest.fixture(scope="module")
def batch(digits):
    train, _ = digits
    rows = [train[i] for i in range(8)]
    return torch.stack([r["pixel_values"] for r in rows]), torch.tensor([r["labels"] for r in rows])


def distance(a, b, norm):
    d = (a - b).flatten(1)
    return d.norm(dim=1) if norm == "l2" else d.abs().amax(dim=1)


@pytest.mark.parametrize("norm,eps", [("l2", 0.5), ("linf", 4 / 255)])
def test_stays_in_the_ball_around_the_centre(classifier, batch, norm, eps):
    images, labels = batch
    center = images.flip(-1)  # a centre other than the starting point, as DAD's VQ(x)
    adv = pgd_attack(classifier, images, labels, eps=eps, step_size=eps, steps=3, norm=norm,
                     random_start_prob=1.0, project_center=center, generator=torch.Generator().manual_seed(0))
    assert (distance(adv, center, norm) <= eps * (1 + 1e-5)).all()
    assert adv.min() >= 0 and adv.max() <= 1 and adv.shape == images.shape


def same_size_noise(adv, images, norm):
    """Random noise as far from ``images`` as the attack went: the baseline an attack must beat."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    noise = noise * (distance(adv, images, norm) / distance(noise, 0 * noise, norm)).view(-1, 1, 1, 1)
    return (images + noise).clamp(0, 1)


@pytest.mark.parametrize("norm,eps", [("l2", 1.0), ("linf", 8 / 255)])
def test_raises_the_loss_more_than_random_noise_of_the_same_size(classifier, batch, norm, eps):
    images, labels = batch
    adv = pgd_attack(classifier, images, labels, eps=eps, step_size=eps / 4, steps=5, norm=norm)
    with torch.no_grad():
        before = F.cross_entropy(classifier(images), labels)
        after = F.cross_entropy(classifier(adv), labels)
        noisy = F.cross_entropy(classifier(same_size_noise(adv, images, "l2")), labels)
    assert after - before > 5 * abs(noisy - before) and after > before


def test_label_free_attack_raises_the_divergence(classifier, batch):
    images, _ = batch
    adv = pgd_attack(classifier, images, None, eps=1.0, step_size=0.25, steps=5,
                     generator=torch.Generator().manual_seed(0))

    def divergence(x):
        return F.kl_div(F.log_softmax(classifier(x), -1), F.log_softmax(classifier(images), -1),
                        log_target=True, reduction="batchmean")

    with torch.no_grad():
        assert divergence(adv) > 5 * divergence(same_size_noise(adv, images, "l2"))


def test_reproducible_and_random_start_is_random(classifier, batch):
    images, labels = batch

    def attack(seed):
        return pgd_attack(classifier, images, labels, eps=0.1, step_size=0.1, steps=1, random_start_prob=0.8,
                          generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(attack(0), attack(0), atol=0, rtol=0)
    assert not torch.equal(attack(0), attack(1))


def test_only_the_input_gets_gradients_and_the_mode_is_kept(classifier, batch):
    images, labels = batch
    classifier.train()
    modes = []
    hook = classifier.model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    try:
        pgd_attack(classifier, images, labels, eps=0.1, step_size=0.05, steps=2)
    finally:
        hook.remove()
    assert modes and not any(modes)  # attacked in eval mode
    assert classifier.training  # and given back as it came
    assert all(p.grad is None for p in classifier.parameters())
    classifier.eval()


def test_bad_arguments(classifier, batch):
    images, labels = batch
    with pytest.raises(ValueError, match="norm"):
        pgd_attack(classifier, images, labels, 0.1, 0.1, 1, norm="l1")
    with pytest.raises(ValueError, match="random_start_prob"):
        pgd_attack(classifier, images, labels, 0.1, 0.1, 1, random_start_prob=2)
