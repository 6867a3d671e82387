"""The three protocols that make corrupted images, and the one that reads the released ones.

``imagenet-c`` must make the images ImageNet-C's own pipeline makes (``make_imagenet_c.py``: torchvision's
Resize(256) and CenterCrop(224) on PIL images, the reference corruption, ``np.uint8``, PIL's JPEG at quality
85 with ``optimize=True``), written here from that script, independently of the package. Only a published
protocol on ImageNet-1k's classes over all 15 corruptions against AlexNet may stand beside published figures.
"""

import io
import os

import numpy as np
import pytest
import skimage.data
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image as ImageFeature, Value
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification

from hf_robust_distill.data import ImageNetCCrop, imagenet_classes, prepare_dataset
from hf_robust_distill.evaluation import CorruptedSetCache, RobustnessReport, decode_evaluation_set, evaluate_robustness
from hf_robust_distill.evaluation.protocols import resolve_protocol
from hf_robust_distill.metrics.corruption_robustness.corruption_robustness import IMAGENET_C_CORRUPTIONS
from hf_robust_distill.views.corruptions import CORRUPTIONS

WNIDS = [wnid for wnid, _, _ in imagenet_classes()]
PHOTOS = {"astronaut": 0, "chelsea": 281, "coffee": 967, "rocket": 812}  # a photo of each and an ImageNet class
DETERMINISTIC = ["defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"]
"""The ImageNet-C corruptions that draw no random numbers: the torch ports make them from the same pixels."""


def test_only_a_published_protocol_on_imagenet_1k_over_all_15_corruptions_against_alexnet_is_comparable():
    grid = {c: {s: 0.5 for s in range(1, 6)} for c in IMAGENET_C_CORRUPTIONS}
    report = RobustnessReport("m", "imagenet-1k", 10, (224, 224), 0.8, grid, {c: "torch" for c in grid},
                              baseline={"name": "AlexNet"}, imagenet_1k=True)
    assert report.mce_is_complete and report.protocol == "model-resolution"
    assert not report.comparable_with_published  # made at the model's resolution, without the JPEG step
    for protocol in ("imagenet-c", "released"):
        published = RobustnessReport.from_dict({**report.to_dict(), "protocol": protocol})
        assert published.comparable_with_published
        assert not RobustnessReport.from_dict({**published.to_dict(), "imagenet_1k": False}).comparable_with_published
        assert not RobustnessReport.from_dict({**published.to_dict(), "baseline": None}).comparable_with_published


def test_protocol_choice():
    assert resolve_protocol("auto", imagenet_1k=True) == "imagenet-c"
    assert resolve_protocol("auto", imagenet_1k=False) == "model-resolution"
    assert resolve_protocol("auto", imagenet_1k=False, released=True) == "released"
    with pytest.raises(ValueError, match="--imagenet_c"):
        resolve_protocol("released", imagenet_1k=True)
    with pytest.raises(ValueError, match="drop --corruption_protocol"):
        resolve_protocol("model-resolution", imagenet_1k=True, released=True)


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory) -> Dataset:
    """Four photos of different sizes and aspect ratios, as JPEG files, labelled by ImageNet-1k's WordNet ids."""
    root = tmp_path_factory.mktemp("photo-set")
    paths = []
    for name in PHOTOS:
        paths.append(str(root / f"{name}.jpg"))
        Image.fromarray(getattr(skimage.data, name)()).save(paths[-1], quality=95)
    return Dataset.from_dict({"image": paths, "label": list(PHOTOS.values())},
                             features=Features({"image": ImageFeature(), "label": ClassLabel(names=WNIDS)}))


def reference_pipeline(path: str, corruption: str, severity: int, seed: int) -> np.ndarray:
    """``make_imagenet_c.py`` on one file: Resize(256) and CenterCrop(224) as torchvision applies them to a
    PIL image, the reference corruption under NumPy's seeded generator, ``np.uint8``, JPEG q85 optimized."""
    from imagecorruptions import corrupt

    image = Image.open(path).convert("RGB")
    w, h = image.size
    if w <= h:
        image = image.resize((256, int(256 * h / w)), Image.BILINEAR)
    else:
        image = image.resize((int(256 * w / h), 256), Image.BILINEAR)
    w, h = image.size
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    crop = np.asarray(image.crop((left, top, left + 224, top + 224)))
    np.random.seed(seed)
    takes_seed = corruption in ("glass_blur", "impulse_noise")  # they draw from a generator seeded by this argument
    corrupted = corrupt(crop, severity=severity, corruption_name=corruption, **({"seed": seed} if takes_seed else {}))
    buffer = io.BytesIO()
    Image.fromarray(np.uint8(corrupted)).save(buffer, format="JPEG", quality=85, optimize=True)
    return np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float64)


def protocol_images(photo_set, tmp_path, corruption, severity, backend, seed=0) -> list[np.ndarray]:
    """The package's imagenet-c images of the photo set, decoded from the JPEGs it stores."""
    cache = CorruptedSetCache(str(tmp_path))
    crops, _ = decode_evaluation_set(photo_set, ImageNetCCrop(), cache, "image", "label", batch_size=2)
    from hf_robust_distill.evaluation.corrupted_sets import source_key

    stored = cache.stored(crops, source_key(photo_set, "image", "label", ImageNetCCrop()), corruption, severity,
                          backend, seed=seed, size=(224, 224), batch_size=2, num_workers=0,
                          device=torch.device("cpu"), protocol="imagenet-c")
    cells = stored.cast_column("image", ImageFeature(decode=False))["image"]
    assert all(Image.open(io.BytesIO(cell["bytes"])).format == "JPEG" for cell in cells)
    return [np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"), dtype=np.float64) for cell in cells]


def draw_seed(seed: int, corruption: str, severity: int, row: int) -> int:
    """The reference backend's documented seed of one image: (seed, corruption, severity, row)."""
    return int(np.random.SeedSequence([seed, CORRUPTIONS.index(corruption), severity, row]).generate_state(1)[0])


@pytest.mark.parametrize("corruption", IMAGENET_C_CORRUPTIONS)
def test_imagenet_c_protocol_images_are_the_reference_pipelines_given_the_same_draws(photo_set, tmp_path, corruption):
    severities = range(1, 6)
    for severity in severities:
        ours = protocol_images(photo_set, tmp_path, corruption, severity, "reference")
        for row, path in enumerate(photo_set.cast_column("image", ImageFeature(decode=False))["image"]):
            theirs = reference_pipeline(path["path"], corruption, severity, draw_seed(0, corruption, severity, row))
            assert ours[row].shape == (224, 224, 3)
            assert np.abs(ours[row] - theirs).mean() <= 2.0, (corruption, severity, row)


@pytest.mark.parametrize("corruption", DETERMINISTIC)
def test_the_torch_ports_under_the_imagenet_c_protocol_make_the_reference_pipelines_images(photo_set, tmp_path,
                                                                                           corruption):
    paths = [cell["path"] for cell in photo_set.cast_column("image", ImageFeature(decode=False))["image"]]
    for severity in range(1, 6):
        ours = protocol_images(photo_set, tmp_path, corruption, severity, "torch")
        for row, path in enumerate(paths):
            theirs = reference_pipeline(path, corruption, severity, 0)
            assert np.abs(ours[row] - theirs).mean() <= 2.0, (corruption, severity, row)


def tiny_imagenet_vit(num_labels: int = 1000) -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=num_labels)
    return ViTForImageClassification(config).eval()


@pytest.fixture(scope="module")
def processor():
    from hf_robust_distill.cli.demo import demo_image_processor

    return demo_image_processor()


def hand_scored(model, processor, files: list, labels: list[int]) -> float:
    """Accuracy the long way: each file read through the processor (normalisation included), one at a time."""
    correct = 0
    with torch.no_grad():
        for file, label in zip(files, labels):
            pixels = processor(images=[Image.open(file).convert("RGB")], return_tensors="pt")["pixel_values"]
            correct += int(model(pixel_values=pixels).logits[0].argmax() == label)
    return correct / len(labels)


def test_imagenet_c_is_the_default_on_imagenet_1k_and_stores_a_tenth_of_the_pixels(photo_set, processor, tmp_path):
    model = tiny_imagenet_vit()
    report = evaluate_robustness(model, photo_set, ["gaussian_noise", "contrast"], severities=(3,),
                                 image_processor=processor, cache_dir=str(tmp_path / "c"), batch_size=2,
                                 progress=False, seed=1)
    assert report.protocol == "imagenet-c" and report.imagenet_1k
    files = {f.split("-")[0]: os.path.getsize(tmp_path / "c" / f) for f in os.listdir(tmp_path / "c")
             if f.startswith(("gaussian_noise", "contrast"))}
    assert files["contrast"] < 4 * 224 * 224 * 3 / 10 and files["gaussian_noise"] < 4 * 224 * 224 * 3 / 3
    # What the model scored is each stored JPEG read through its processor.
    stored = Dataset.from_file(str(tmp_path / "c" / next(f for f in os.listdir(tmp_path / "c")
                                                         if f.startswith("contrast") and f.endswith(".arrow"))))
    jpegs = [io.BytesIO(cell["bytes"]) for cell in stored.cast_column("image", ImageFeature(decode=False))["image"]]
    assert report.accuracy["contrast"][3] == pytest.approx(hand_scored(model, processor, jpegs, stored["label"]))
    model_resolution = evaluate_robustness(model, photo_set, ["contrast"], severities=(3,), image_processor=processor,
                                           cache_dir=str(tmp_path / "c"), batch_size=2, progress=False,
                                           protocol="model-resolution")
    assert model_resolution.protocol == "model-resolution" and not model_resolution.comparable_with_published


def write_release(root, sets: dict, photos: dict) -> str:
    """A folder in the release's exact layout: <corruption>/<severity>/<wnid>/<name>.JPEG."""
    for (corruption, severity), wnids in sets.items():
        for wnid in wnids:
            folder = os.path.join(root, corruption, str(severity), wnid)
            os.makedirs(folder, exist_ok=True)
            for k, (name, photo) in enumerate(photos.items()):
                crop = Image.fromarray(photo).resize((224, 224), Image.BILINEAR)
                crop.save(os.path.join(folder, f"ILSVRC2012_val_0000{k}{name}.JPEG"), quality=85, optimize=True)
    return str(root)


def test_released_images_in_the_release_layout_or_as_a_dataset_are_scored_by_class_name(processor, tmp_path):
    photos = {name: getattr(skimage.data, name)() for name in ("astronaut", "coffee")}
    tench, goldfish, shark = WNIDS[0], WNIDS[1], WNIDS[2]
    sets = {("fog", 2): [tench, goldfish, shark], ("pixelate", 5): [goldfish], ("fog", 1): [tench]}
    root = write_release(tmp_path / "ImageNet-C", sets, photos)
    # A model of two classes, named as ImageNet names them; the shark is not one of them.
    clean = Dataset.from_dict({"image": [os.path.join(root, "fog", "1", tench, f) for f in
                                         sorted(os.listdir(os.path.join(root, "fog", "1", tench)))], "label": [1, 0]},
                              features=Features({"image": ImageFeature(),
                                                 "label": ClassLabel(names=["goldfish", "tench"])}))
    model = tiny_imagenet_vit(num_labels=2)
    report = evaluate_robustness(model, clean, image_processor=processor, cache_dir=str(tmp_path / "cache"),
                                 imagenet_c=root, progress=False, batch_size=3)
    assert report.protocol == "released" and report.released_source == root and not report.imagenet_1k
    assert set(report.backends.values()) == {"released"}
    assert {(c, s) for c, row in report.accuracy.items() for s in row} == set(sets)  # every set found
    for (corruption, severity), wnids in sets.items():
        known = [w for w in wnids if w in (tench, goldfish)]  # the shark's images are left out
        files = [os.path.join(root, corruption, str(severity), w, f) for w in known
                 for f in sorted(os.listdir(os.path.join(root, corruption, str(severity), w)))]
        labels = [{tench: 1, goldfish: 0}[w] for w in known for _ in photos]
        assert report.accuracy[corruption][severity] == pytest.approx(hand_scored(model, processor, files, labels))

    # The same files as a saved dataset with corruption, severity, image and label columns (a Hub copy's columns).
    rows = [(c, s, os.path.join(root, c, str(s), w, f), WNIDS.index(w)) for (c, s), wnids in sets.items()
            for w in wnids for f in sorted(os.listdir(os.path.join(root, c, str(s), w)))]
    features = Features({"corruption": Value("string"), "severity": Value("int32"), "image": ImageFeature(),
                         "label": ClassLabel(names=WNIDS)})
    DatasetDict({"test": Dataset.from_dict(dict(zip(features, zip(*rows))), features=features)}).save_to_disk(
        str(tmp_path / "copy"))
    again = evaluate_robustness(model, clean, image_processor=processor, cache_dir=str(tmp_path / "cache"),
                                imagenet_c=str(tmp_path / "copy"), progress=False, batch_size=3)
    assert again.accuracy == report.accuracy
    assert again.calibration["corrupted"] == report.calibration["corrupted"]


def test_a_released_folder_that_is_not_the_release_layout_is_refused(processor, tmp_path):
    bad = tmp_path / "not-imagenet-c" / "fog" / "1" / "cats"
    bad.mkdir(parents=True)
    Image.fromarray(skimage.data.astronaut()).save(bad / "0.JPEG")
    clean = Dataset.from_dict({"image": [str(bad / "0.JPEG")], "label": [0]},
                              features=Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])}))
    with pytest.raises(ValueError, match="<corruption>/<severity>/<wnid>/<name>.JPEG"):
        evaluate_robustness(tiny_imagenet_vit(2), clean, image_processor=processor, cache_dir=str(tmp_path / "c"),
                            imagenet_c=str(tmp_path / "not-imagenet-c"), progress=False)


def test_imagenet_c_crop_is_torchvisions_resize_256_and_centre_crop_224(photo_set):
    prepared = prepare_dataset(photo_set, ImageNetCCrop())
    for row, cell in enumerate(photo_set.cast_column("image", ImageFeature(decode=False))["image"]):
        image = Image.open(cell["path"]).convert("RGB")
        w, h = image.size
        size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
        image = image.resize(size, Image.BILINEAR)
        top, left = int(round((size[1] - 224) / 2.0)), int(round((size[0] - 224) / 2.0))
        expected = torch.from_numpy(np.array(image.crop((left, top, left + 224, top + 224)))).permute(2, 0, 1)
        assert torch.equal((prepared[row]["pixel_values"] * 255).round().to(torch.uint8), expected)
