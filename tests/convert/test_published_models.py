"""The field's published models through the package: the paper started from the official code's own
ViT (converted, then the shipped DAD recipe), and a model this package did not train evaluated,
carded as such with its conversion record, and pushed."""

import os

import torch
from huggingface_hub import ModelCard, snapshot_download
from transformers import AutoModelForImageClassification

from tests.conftest import load_recipe, save_tiny_timm
from tests.convert.test_checkpoint import MEAN, STD, save_layout, tiny_timm_vit
from hf_robust_distill.convert.checkpoint import main as convert_main
from hf_robust_distill.data import demo_digits

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
DIGITS = ",".join(str(i) for i in range(10))


def digits_on_disk(path, splits=("train", "validation")) -> str:
    data = demo_digits()
    from datasets import DatasetDict

    DatasetDict({splits[0]: data["train"].select(range(32)), splits[1]: data["test"].select(range(16))}).save_to_disk(path)
    return str(path)


def convert_official_base_vit(tmp_path) -> str:
    """The DAD code's "Base ViT-B-16/224" is a raw timm state dict: converted with ImageNet's mean and
    std and the code's evaluation crop (0.9, bicubic), as docs/dad.md says."""
    checkpoint = save_layout(tiny_timm_vit(), tmp_path / "official", "raw")
    out = tmp_path / "vit-base-converted"
    convert_main([checkpoint, str(out), "--architecture", "vit", "--num_heads", "2", "--mean", *map(str, MEAN),
                  "--std", *map(str, STD), "--crop_pct", "0.9", "--interpolation", "bicubic", "--class_names", DIGITS])
    return str(out)


def test_the_paper_starts_from_the_official_codes_own_vit(tmp_path, tiny_clip, tiny_vq):
    """docs/dad.md's two commands: convert, then recipes/dad.py --config dad_vit_base.yaml
    --model_name_or_path <converted> (here with tiny models, on the CPU, for two steps)."""
    converted = convert_official_base_vit(tmp_path)
    results = load_recipe("dad").main([
        "--config", os.path.join(REPO, "recipes", "configs", "dad_vit_base.yaml"), "--model_name_or_path", converted,
        "--teacher_name_or_path", tiny_clip, "--prompt_templates", "short", "--vq_name_or_path", tiny_vq,
        "--dataset_name", digits_on_disk(tmp_path / "digits"), "--output_dir", str(tmp_path / "out"), "--bf16", "false",
        "--use_cpu", "--max_steps", "2", "--per_device_train_batch_size", "8", "--dataloader_num_workers", "0",
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1",
        "--robustness_corruptions", "gaussian_noise", "--robustness_severities", "1",
        "--corruption_cache_dir", str(tmp_path / "cache"), "--warmup_steps", "0"])
    trainer = results["trainer"]
    assert trainer.state.global_step == 2 and trainer.args.ema_decay > 0 and trainer.args.dad_objective == "official"
    student = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert type(student).__name__ == "ViTForImageClassification"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "vit-base-converted" in card  # the initialisation the card names
    from transformers import AutoImageProcessor

    assert AutoImageProcessor.from_pretrained(tmp_path / "out").data_config["crop_pct"] == 0.9


def evaluate(model, data, out, cache):
    return load_recipe("evaluate_robustness").main([
        "--model_name_or_path", model, "--dataset_name", data, "--eval_split", "validation", "--output_dir", str(out),
        "--robustness_corruptions", "gaussian_noise", "--robustness_severities", "2", "--robustness_baseline", "none",
        "--corruption_cache_dir", str(cache), "--device", "cpu"])


def test_a_converted_model_is_evaluated_carded_and_pushed(tmp_path, local_hub):
    from hf_robust_distill.hub.push import main as push_main

    converted = convert_official_base_vit(tmp_path)
    data = digits_on_disk(tmp_path / "digits")
    report = evaluate(converted, data, tmp_path / "report", tmp_path / "cache")
    out = tmp_path / "report"
    assert {"README.md", "robustness_report.json", "robustness.png", "config.json", "model.safetensors",
            "preprocessor_config.json", "conversion.json"} <= set(os.listdir(out))
    card = ModelCard.load(str(out / "README.md"))
    assert "This package did not train it" in card.text and "## Source" in card.text
    assert "converted from `model.pth`" in card.text and "sha256" in card.text
    assert "fill it in (--card_license)" in card.text and "Install timm first" in card.text
    assert "distilled from" not in card.text and "## Training" not in card.text
    assert "knowledge-distillation" not in card.data.tags
    clean = [r.metric_value for r in card.data.eval_results if r.metric_name == "Top-1 accuracy (clean)"]
    assert clean == [round(100 * report.clean_accuracy, 2)]
    push_main([str(out), "tester/published-vit", "--force"])  # random weights: at chance
    downloaded = snapshot_download("tester/published-vit", cache_dir=str(tmp_path / "hub-cache"))
    assert {"conversion.json", "preprocessor_config.json", "model.safetensors", "README.md"} <= set(os.listdir(downloaded))
    original = AutoModelForImageClassification.from_pretrained(converted).eval()
    pushed = AutoModelForImageClassification.from_pretrained(downloaded).eval()
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(original(pixel_values=pixels).logits, pushed(pixel_values=pixels).logits)


def test_a_timm_model_is_evaluated_and_carded(tmp_path):
    folder = save_tiny_timm(tmp_path / "timm-model")
    evaluate(folder, digits_on_disk(tmp_path / "digits"), tmp_path / "report", tmp_path / "cache")
    card = ModelCard.load(str(tmp_path / "report" / "README.md"))
    assert "timm's `vit_tiny_patch16_224`" in card.text and "the model is a timm model" in card.text.replace("\n", " ")
    assert "conversion" not in card.text.lower().split("## source")[1].split("##")[0]
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "report")
    assert type(reloaded).__name__ == "TimmWrapperForImageClassification"
