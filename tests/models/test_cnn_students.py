"""Students without tokens (ResNet, ConvNext) for the logit terms: DAD and KD train them end to end, and a
feature term asked of them is refused before training with the fix."""

import pytest
import torch
from transformers import (AutoModelForImageClassification, ConvNextConfig, ConvNextForImageClassification, ResNetConfig,
                          ResNetForImageClassification)

from tests.conftest import DIGIT_NAMES, load_recipe, recipe_argv
from hf_robust_distill.cli import demo_image_processor
from hf_robust_distill.utils import PreflightError

LABELS = dict(num_labels=10, id2label=dict(enumerate(DIGIT_NAMES)), label2id={n: i for i, n in enumerate(DIGIT_NAMES)})


def save_cnn(path, kind: str) -> str:
    torch.manual_seed(0)
    if kind == "resnet":
        model = ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                                          layer_type="basic", **LABELS))
    else:
        model = ConvNextForImageClassification(ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], **LABELS))
    model.save_pretrained(path)
    demo_image_processor().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory) -> str:
    return save_cnn(tmp_path_factory.mktemp("tiny-resnet"), "resnet")


def test_a_resnet_student_trains_with_online_dad_from_a_clip_teacher(tiny_clip, tiny_vq, tiny_resnet, tmp_path):
    out = tmp_path / "out"
    results = load_recipe("dad").main(recipe_argv(
        tiny_clip, out, tmp_path / "cache", "--prompt_templates", "short", "--vq_name_or_path", tiny_vq,
        "--student_name_or_path", tiny_resnet, "--dad_mode", "online", "--max_train_samples", "16",
        "--max_eval_samples", "16", "--max_steps", "2", "--eval_distortions", "gaussian_noise:3"))
    trainer = results["trainer"]
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all(entry["loss_kd_dad"] > 0 and entry["loss_ce"] > 0 for entry in logs)
    student = AutoModelForImageClassification.from_pretrained(out)
    assert type(student).__name__ == "ResNetForImageClassification"
    assert (out / "README.md").exists() and "DAD student" in results["table"]


@pytest.mark.parametrize("kind", ["resnet", "convnext"])
def test_a_cnn_student_takes_kd_and_refuses_feature_terms_before_training(tiny_vit, tmp_path, kind):
    student = save_cnn(tmp_path / kind, kind)
    common = ["--student_name_or_path", student, "--max_train_samples", "16", "--max_eval_samples", "16"]
    with pytest.raises(PreflightError, match="set cls_weight, patch_weight and attn_weight to 0"):
        load_recipe("multilevel").main(recipe_argv(tiny_vit, tmp_path / "refused", tmp_path / "cache", *common))
    assert not (tmp_path / "refused").exists()
    results = load_recipe("multilevel").main(recipe_argv(
        tiny_vit, tmp_path / "kd", tmp_path / "cache", *common, "--cls_weight", "0", "--patch_weight", "0",
        "--attn_weight", "0", "--kd_weight", "1"))
    logs = [entry for entry in results["trainer"].state.log_history if "loss" in entry]
    assert logs and all(entry["loss_kd"] > 0 for entry in logs)
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path / "kd")).__name__.startswith(
        "ResNet" if kind == "resnet" else "ConvNext")
