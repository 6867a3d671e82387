"""The demo zoo's builders at another image size (what benchmarks/dad_attack_survival.py and
dad_defaults.py --image_size train): the models are built, saved and read back at that size."""

import torch
from transformers import AutoImageProcessor, ViTForImageClassification

from hf_robust_distill.cli.demo import build_demo_vit, build_demo_vq
from hf_robust_distill.data import demo_digits, prepare_dataset
from hf_robust_distill.methods.dad import VQDiscretizer


def test_demo_vit_and_vq_at_another_size(tmp_path):
    size = 48
    vit = ViTForImageClassification.from_pretrained(build_demo_vit(str(tmp_path / "vit"), epochs=2, image_size=size))
    processor = AutoImageProcessor.from_pretrained(tmp_path / "vit")
    assert (vit.config.image_size, vit.config.patch_size) == (size, size // 4)  # the 32 px model's 4 x 4 grid
    assert processor.size == {"height": size, "width": size}
    test = demo_digits()["test"].select(range(200))
    pixels = torch.stack([torch.as_tensor(processor(image.convert("RGB"))["pixel_values"][0]) for image in test["image"]])
    with torch.no_grad():
        accuracy = (vit(pixel_values=pixels).logits.argmax(-1) == torch.tensor(test["label"])).float().mean()
    assert accuracy > 0.2, accuracy  # two epochs at 48 px (0.31 here): chance is 0.1

    vq = VQDiscretizer.from_pretrained(build_demo_vq(str(tmp_path / "vq"), epochs=1, image_size=size))
    assert vq.vq.config.sample_size == size
    images = torch.stack([torch.as_tensor(r["pixel_values"]) for r in prepare_dataset(test.select(range(16)),
                                                                                      (size, size))])
    with torch.no_grad():
        reconstructed = vq(images)
    assert reconstructed.shape == images.shape
    assert (reconstructed - images).abs().mean() < (images - images.mean()).abs().mean()  # it reconstructs
