"""Models in bf16 (a teacher under mixed precision, a 16-bit ZeRO-3 student) are evaluated by every
evaluation path: each model casts the [0, 1] float32 pixels to its own dtype at its door, which
ViT-family embeddings did for themselves and convolutional stems (ResNet, ConvNeXt, Swin, BEiT)
did not."""

import pytest
import torch
from transformers import (BeitConfig, BeitForImageClassification, ConvNextConfig, ConvNextForImageClassification,
                          ResNetConfig, ResNetForImageClassification, SwinConfig, SwinForImageClassification)

from tests.conftest import DIGIT_NAMES, TINY_BLOCKS, save_tiny_classifier
from hf_robust_distill import evaluate_robustness
from hf_robust_distill.cli import demo_image_processor
from hf_robust_distill.evaluation import accuracy, cls_features
from hf_robust_distill.models import PixelPreprocessor, PixelSpaceClassifier, load_vision_model

LABELS = dict(num_labels=10, id2label=dict(enumerate(DIGIT_NAMES)), label2id={n: i for i, n in enumerate(DIGIT_NAMES)})
CONVOLUTIONAL = {
    "resnet": lambda: ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32],
                                                                depths=[1, 1], layer_type="basic", **LABELS)),
    "convnext": lambda: ConvNextForImageClassification(ConvNextConfig(num_stages=2, hidden_sizes=[16, 32],
                                                                      depths=[1, 1], **LABELS)),
    "swin": lambda: SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                          num_heads=[1, 2], window_size=4, **LABELS)),
    "beit": lambda: BeitForImageClassification(BeitConfig(**TINY_BLOCKS, **LABELS)),
}
FAMILIES = ["vit", "deit", "dinov2", "clip", *CONVOLUTIONAL]
WITH_CLS = {"vit", "deit", "dinov2", "clip", "beit"}  # the linear probe's [CLS] features


def saved(path, family: str) -> str:
    if family in CONVOLUTIONAL:
        torch.manual_seed(0)
        CONVOLUTIONAL[family]().save_pretrained(path)
        demo_image_processor().save_pretrained(path)
        return str(path)
    return save_tiny_classifier(path, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_evaluation_path_scores_a_bf16_model(family, digits, tmp_path):
    from hf_robust_distill.data import demo_digits

    path = saved(tmp_path / family, family)
    model = load_vision_model(path).eval()
    pixels = PixelPreprocessor.from_pretrained(path)
    _, eval_set = digits
    in_fp32 = accuracy(model, pixels, eval_set)
    model.to(torch.bfloat16)
    in_bf16 = accuracy(model, pixels, eval_set)
    assert abs(in_bf16 - in_fp32) <= 2 / len(eval_set)  # the same predictions, but for bf16 rounding
    accuracy(model, pixels, eval_set, view="gaussian_noise:3")
    if family in WITH_CLS:
        features, _ = cls_features(model, pixels, eval_set)
        assert features.shape[0] == len(eval_set) and features.dtype.kind == "f"
    raw = demo_digits()["test"].select(range(16))
    report = evaluate_robustness(PixelSpaceClassifier(model, pixels), raw, ["contrast"], [2], image_size=32,
                                 cache_dir=str(tmp_path / "cache"), progress=False)
    assert 0 <= report.clean_accuracy <= 1
