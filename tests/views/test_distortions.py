import numpy as np
import pytest
import torch
from imagecorruptions import corruptions as reference
from PIL import Image

from hf_robust_distill import CORRUPTIONS, Distorter, corrupt
from hf_robust_distill.views import additive_noise, blur, parse_distortions, patch_mask, pixel_mask
from hf_robust_distill.views.corruptions import digital, motion_blur

DETERMINISTIC = ["gaussian_blur", "defocus_blur", "zoom_blur", "brightness", "contrast",
                 "saturate", "pixelate", "jpeg_compression"]


def _reference(name, image, severity):
    out = getattr(reference, name)(image, severity)
    return np.asarray(out, dtype=np.float64)


def _ours(name, tensor, severity, **kwargs):
    fn = motion_blur if name == "motion_blur" else None
    out = fn(tensor, severity, **kwargs) if fn else corrupt(tensor, name, severity)
    return out[0].permute(1, 2, 0).double().numpy() * 255


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_match_reference(photo, name, severity):
    image, tensor = photo
    mad = np.abs(_ours(name, tensor, severity) - _reference(name, image, severity)).mean()
    assert mad <= 2.0, f"{name} severity {severity}: mean abs difference {mad:.3f} grey levels"


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", ["pixelate", "jpeg_compression"])
def test_the_accelerator_simulations_of_pils_corruptions_match_reference(photo, name, severity):
    """On a CPU these two run through PIL itself (the reference's pixels); the tensor simulations an
    accelerator runs are checked here, on the CPU."""
    image, tensor = photo
    simulated = getattr(digital, f"simulated_{name}")(tensor, severity)
    mad = np.abs(simulated[0].permute(1, 2, 0).double().numpy() * 255 - _reference(name, image, severity)).mean()
    assert mad <= 2.0, f"simulated {name} severity {severity}: {mad:.3f} grey levels"
    assert torch.equal(corrupt(tensor, name, severity).mul(255).round(),
                       torch.from_numpy(_reference(name, image, severity)).permute(2, 0, 1)[None].float())


@pytest.mark.parametrize("name", ["pixelate", "jpeg_compression"])
def test_pils_corruptions_give_the_reference_pixels_on_a_batch_of_any_size(name):
    """``corrupt_uint8`` on a CPU batch (PIL's save, libjpeg-turbo's decode, PIL's resampling; pixelate
    in strips of 8 on two threads where its heights allow) against ``imagecorruptions.corrupt`` image
    by image, at sizes that leave partial JPEG blocks and uneven boxes, and whose small heights have
    odd and even reduced denominators (37 px: 22/37 at severity 1, 11/37 at 4; 225 px: 135/225 -> 3/5
    at 1, 90/225 -> 2/5 at 3)."""
    from imagecorruptions import corrupt as reference_corrupt
    from skimage import data

    from hf_robust_distill.views.corruptions import corrupt_uint8

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for height, width in [(37, 53), (225, 150), (64, 64)]:
            photos = [np.asarray(Image.fromarray(getattr(data, n)()).resize((width, height), Image.BILINEAR))
                      for n in ("astronaut", "coffee", "chelsea")]
            photos = [np.ascontiguousarray(flip(photo)) for photo in photos
                      for flip in (lambda a: a, np.fliplr, np.flipud, lambda a: a[::-1, ::-1])][:11]
            batch = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2)
            for severity in range(1, 6):
                ours = corrupt_uint8(batch, name, severity).permute(0, 2, 3, 1).numpy()
                for photo, image in zip(photos, ours):
                    expected = np.uint8(reference_corrupt(photo, corruption_name=name, severity=severity))
                    assert np.array_equal(image, expected), (name, height, width, severity)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_motion_blur_matches_reference_at_the_same_angle(photo, severity):
    image, tensor = photo
    np.random.seed(severity)
    angle = np.random.uniform(-45, 45)
    np.random.seed(severity)
    expected = _reference("motion_blur", image, severity)
    mad = np.abs(_ours("motion_blur", tensor, severity, angle=angle) - expected).mean()
    assert mad <= 2.0, f"motion_blur severity {severity}: {mad:.3f} grey levels"


@pytest.mark.parametrize("severity", [1, 3, 5])
@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise",
                                  "speckle_noise", "elastic_transform"])
def test_random_corruptions_match_reference_statistics(photo, name, severity):
    """Same size of change (mean |corrupted - clean|) and same fraction of changed values."""
    image, tensor = photo
    clean = np.asarray(image, dtype=np.float64)
    np.random.seed(0)
    ref = _reference(name, image, severity)
    ours = _ours(name, tensor, severity)
    ref_change, our_change = np.abs(ref - clean).mean(), np.abs(ours - clean).mean()
    assert our_change == pytest.approx(ref_change, rel=0.1, abs=0.3), (our_change, ref_change)
    ref_changed = (np.abs(ref - clean) > 0.5).mean()
    our_changed = (np.abs(ours - clean) > 0.5).mean()
    assert our_changed == pytest.approx(ref_changed, abs=0.03)


def test_gaussian_noise_has_the_reference_standard_deviation():
    """On mid-grey, the spread of clip(0.5 + N(0, c)) for the reference's c per severity."""
    grey = torch.full((4, 3, 64, 64), 0.5)
    rng = np.random.default_rng(0)
    for severity, c in zip(range(1, 6), [0.08, 0.12, 0.18, 0.26, 0.38]):
        expected = np.clip(0.5 + rng.normal(scale=c, size=200_000), 0, 1).std()
        noisy = corrupt(grey, "gaussian_noise", severity, torch.Generator().manual_seed(0))
        assert noisy.std().item() == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_contract(name):
    """Same shape and dtype, in [0, 1], reproducible from a generator, changes the image."""
    images = torch.rand(3, 3, 32, 40, generator=torch.Generator().manual_seed(1))
    a = corrupt(images, name, 3, torch.Generator().manual_seed(7))
    b = corrupt(images, name, 3, torch.Generator().manual_seed(7))
    assert a.shape == images.shape and a.dtype == images.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, images)


def test_corrupt_rejects_bad_input():
    images = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(images, "fog_of_war", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(images, "contrast", 6)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        corrupt(torch.rand(2, 1, 16, 16), "contrast", 1)


def test_paper_distortions():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=g)
    masked = pixel_mask(images, 0.75, torch.Generator().manual_seed(0))
    hidden = (masked == 0).all(1).float().mean().item()
    assert hidden == pytest.approx(0.75, abs=0.05)

    masked = patch_mask(images, torch.tensor([0.5, 0.25, 0.0, 1.0]), torch.Generator().manual_seed(0),
                        patch_size=8)
    fractions = (masked == 0).all(1).float().mean(dim=(1, 2))
    assert fractions.tolist() == pytest.approx([0.5, 0.25, 0.0, 1.0])
    patches = (masked[0] == 0).all(0).reshape(4, 8, 4, 8).permute(0, 2, 1, 3).reshape(16, 64)
    assert ((patches.sum(1) == 0) | (patches.sum(1) == 64)).all(), "masks whole patches"

    grey = torch.full((2, 3, 64, 64), 0.5)
    noisy = additive_noise(grey, torch.tensor([0.05, 0.1]), torch.Generator().manual_seed(0))
    assert (noisy - 0.5).std(dim=(1, 2, 3)).tolist() == pytest.approx([0.05, 0.1], rel=0.05)

    # Per-sample sigma equals the same blur applied one sample at a time.
    sigmas = torch.tensor([0.5, 1.0, 2.0, 3.0])
    together = blur(images, sigmas)
    alone = torch.cat([blur(images[i : i + 1], sigmas[i]) for i in range(4)])
    torch.testing.assert_close(together, alone)


def test_parse_distortions():
    entries = parse_distortions("gaussian_noise:1-5, gaussian_blur:3,pixel_mask:0.5-0.9,noise:.1,contrast")
    assert [str(e) for e in entries] == [
        "gaussian_noise:1-5", "gaussian_blur:3", "pixel_mask:0.5-0.9", "noise:0.1", "contrast:1-5"]
    for bad, message in [("", "empty"), ("fog_of_war:1", "unknown distortion"),
                         ("gaussian_blur:0-2", "1 to 5"), ("gaussian_blur:2.5", "1 to 5"),
                         ("pixel_mask:0.9-0.5", "backwards"), ("pixel_mask:1.5", r"\[0.0, 1.0\]"),
                         ("noise", "needs a level"), ("blur:a-b", "cannot read")]:
        with pytest.raises(ValueError, match=message):
            parse_distortions(bad)


def test_distorter_draws_per_sample_and_is_reproducible():
    images = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    distorter = Distorter("clean,gaussian_blur:1-5,pixel_mask:0.5")
    a = distorter(images, torch.Generator().manual_seed(3))
    b = distorter(images, torch.Generator().manual_seed(3))
    c = distorter(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    unchanged = (a == images).flatten(1).all(1)
    masked = ((a == 0).all(1).float().mean(dim=(1, 2)) > 0.35) & ~unchanged
    blurred = ~unchanged & ~masked
    # Each of the three entries is drawn for some samples (64 draws, 1/3 each).
    assert unchanged.sum() > 5 and masked.sum() > 5 and blurred.sum() > 5
    assert a.min() >= 0 and a.max() <= 1


def test_distorter_draws_every_severity_uniformly():
    images = torch.rand(1000, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    distorter = Distorter("contrast:2-4")
    out = distorter(images, torch.Generator().manual_seed(0))
    # contrast scales deviations from the mean by 0.3, 0.2 or 0.1 for severities 2, 3, 4.
    dev = images - images.mean(dim=(2, 3), keepdim=True)
    scale = ((out - images.mean(dim=(2, 3), keepdim=True)) * dev).sum((1, 2, 3)) / (dev**2).sum((1, 2, 3))
    counts = [((scale - c).abs() < 0.01).sum().item() for c in (0.3, 0.2, 0.1)]
    assert sum(counts) == 1000
    assert all(280 < n < 390 for n in counts), counts


def test_the_training_views_never_make_the_host_wait(tiny_clip, tiny_vq):
    """The views a step runs by default (the paper's distortions, the blur at per-sample sigmas),
    mixing and the DAD view make no operation that reads a value back from the device or sizes an
    output by the data (counted at torch's dispatcher; the host-side draws are NumPy's)."""
    from tests.conftest import DIGIT_NAMES
    from hf_robust_distill import CLIPZeroShotClassifier, VQDiscretizer
    from hf_robust_distill.methods.dad import dad_images
    from hf_robust_distill.utils import SyncCounter
    from hf_robust_distill.views import MixingSettings, mix_batch

    images, labels = torch.rand(16, 3, 32, 32), torch.randint(10, (16,))
    teacher = CLIPZeroShotClassifier.from_clip(tiny_clip, DIGIT_NAMES, templates="plain")
    discretizer = VQDiscretizer.from_pretrained(tiny_vq)
    views = {spec: Distorter(spec, patch_size=8) for spec in (
        "clean,pixel_mask:0.5-0.9,noise:0.1-0.5,blur:1-4", "blur:1-9", "patch_mask:0.3-0.7", "gaussian_blur:1-5",
        "contrast:1-5,brightness:1-5,gaussian_noise:1-5")}
    views["mixing"] = lambda x, g: mix_batch([x], labels, 10, MixingSettings(0.8, 1.0, label_smoothing=0.1), g)[0][0]
    views["dad"] = lambda x, g: dad_images(teacher, discretizer, x, labels, generator=g)
    for name, view in views.items():
        with SyncCounter() as counter:
            view(images, torch.Generator().manual_seed(0))
        assert counter.total == 0, (name, dict(counter.counts))
    with SyncCounter() as counter:  # the counter sees what would wait
        bool((images > 0.5).any()), images[images > 0.5]
    assert counter.total == 2
