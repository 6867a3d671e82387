"""timm models as teachers and students (``TimmWrapperForImageClassification``, the Hub's timm format):
their tokens and attention maps as the losses read them, both methods with a timm model on either
side, a ``timm/<name>`` id, and a timm student carded, pushed and reloaded with the card's accuracy."""

import json
import os

import pytest
import torch
from huggingface_hub import ModelCard, snapshot_download
from transformers import AutoImageProcessor, AutoModelForImageClassification

from tests.conftest import (load_recipe, pipeline_accuracy, recipe_argv, save_tiny_timm, save_tiny_vit,
                            write_photo_folder)
from hf_robust_distill.models import FeatureTaps, load_vision_model, read_attention_maps


def block_inputs(network, pixels):
    """The input of each block of a timm ViT, recorded by hooks."""
    inputs = []
    hooks = [block.register_forward_hook(lambda m, a, o: inputs.append(a[0])) for block in network.blocks]
    with torch.no_grad():
        network(pixels)
    for hook in hooks:
        hook.remove()
    return inputs


@pytest.mark.parametrize("rows", ["all", "cls"])
def test_a_timm_vits_taps_read_its_tokens_and_the_attention_of_its_own_q_and_k(tiny_timm_vit, rows):
    """The maps equal softmax(q k^T / sqrt(d)) computed from the block's own qkv weights on its
    normed input, and timm's unfused path; the tokens are the blocks' outputs, [CLS] after the norm."""
    model = load_vision_model(tiny_timm_vit).double().eval()
    network = model.timm_model
    taps = FeatureTaps(model, token_layers=[0, 1], attention_layers=[0, 1])
    read_attention_maps(model, taps.attention_modules, [0, 1], rows)
    assert (taps.hidden_size, taps.patch_size, taps.num_heads, taps.depth) == (32, 8, 2, 2)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        features = taps(model, pixels)
        final = network.forward_features(pixels)
    inputs = block_inputs(network, pixels)
    for i, block in enumerate(network.blocks):
        qkv = torch.nn.functional.linear(block.norm1(inputs[i]), block.attn.qkv.weight, block.attn.qkv.bias)
        q, k, _ = qkv.unflatten(-1, (3, 2, 16)).permute(2, 0, 3, 1, 4)
        expected = (q @ k.transpose(-2, -1) / 4.0).softmax(-1)
        expected = expected[:, :, :1] if rows == "cls" else expected
        assert features.attentions[i].shape == expected.shape
        assert float((features.attentions[i] - expected).abs().max()) < 1e-12
    assert torch.equal(features.tokens[1], final) and torch.equal(features.cls, final[:, 0])
    assert features.grid == (4, 4) and features.logits.shape == (2, 10)
    if rows == "all":  # timm's own unfused attention gives the same maps
        kept = []
        block = network.blocks[0]
        block.attn.fused_attn = False
        hook = block.attn.attn_drop.register_forward_hook(lambda m, a, o: kept.append(o))
        with torch.no_grad():
            network(pixels)
        hook.remove()
        assert float((kept[0] - features.attentions[0]).abs().max()) < 1e-12


def losses(results) -> list[dict]:
    return [entry for entry in results["trainer"].state.log_history if "loss" in entry]


@pytest.mark.parametrize("direction", ["timm student", "timm teacher"])
def test_multilevel_distillation_between_timm_and_transformers_vits(tmp_path, direction):
    """Every feature term, with projections where the widths differ (64 against 32)."""
    if direction == "timm student":
        teacher = save_tiny_vit(tmp_path / "teacher", hidden_size=64, num_attention_heads=4, intermediate_size=128)
        student = save_tiny_timm(tmp_path / "student")
    else:
        teacher = save_tiny_timm(tmp_path / "teacher", embed_dim=64, num_heads=4)
        student = save_tiny_vit(tmp_path / "student")
    results = load_recipe("multilevel").main(recipe_argv(
        teacher, tmp_path / "out", tmp_path / "cache", "--student_name_or_path", student, "--max_train_samples", "16",
        "--max_eval_samples", "16", "--max_steps", "2", "--robustness_corruptions", "gaussian_noise",
        "--robustness_severities", "1"))
    logs = losses(results)
    assert logs and all(e["loss_cls"] > 0 and e["loss_patch"] > 0 and e["loss_attn"] > 0 for e in logs)
    assert results["trainer"].objective.projections is not None
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert type(reloaded).__name__ == ("TimmWrapperForImageClassification" if direction == "timm student"
                                       else "ViTForImageClassification")


@pytest.mark.parametrize("teacher_kind", ["clip", "timm"])
def test_dad_trains_a_timm_student(tiny_clip, tiny_vq, tmp_path, teacher_kind):
    teacher = tiny_clip if teacher_kind == "clip" else save_tiny_timm(tmp_path / "teacher", embed_dim=64, num_heads=4)
    extra = ["--prompt_templates", "short"] if teacher_kind == "clip" else []
    results = load_recipe("dad").main(recipe_argv(
        teacher, tmp_path / "out", tmp_path / "cache", *extra, "--vq_name_or_path", tiny_vq, "--student_name_or_path",
        save_tiny_timm(tmp_path / "student"), "--dad_mode", "online", "--max_train_samples", "16",
        "--max_eval_samples", "16", "--max_steps", "2", "--eval_distortions", "gaussian_noise:3"))
    logs = losses(results)
    assert logs and all(e["loss_kd"] > 0 and e["loss_kd_dad"] > 0 for e in logs)
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path / "out")).__name__ == \
        "TimmWrapperForImageClassification"


def test_a_timm_id_loads_from_the_hub(tmp_path, local_hub):
    """``timm/<name>`` as AutoModelForImageClassification reads it: the Hub's timm format."""
    from huggingface_hub import HfApi

    folder = save_tiny_timm(tmp_path / "tiny")
    HfApi().create_repo("timm/tiny_vit_digits")
    HfApi().upload_folder(folder_path=folder, repo_id="timm/tiny_vit_digits")
    model = load_vision_model("timm/tiny_vit_digits")
    assert type(model).__name__ == "TimmWrapperForImageClassification" and model.config.id2label[7] == "7"
    assert AutoImageProcessor.from_pretrained("timm/tiny_vit_digits").data_config["input_size"] == (3, 32, 32)


@pytest.fixture(scope="module")
def timm_student(tmp_path_factory):
    """A timm student distilled on photos (three classes) from a transformers ViT, carded."""
    root = tmp_path_factory.mktemp("timm-student")
    folder = write_photo_folder(root / "photos", per_class=(12, 10), classes=("cat", "coffee", "rocket"), seed=3)
    teacher = save_tiny_vit(root / "teacher", seed=1)
    out = root / "out"
    results = load_recipe("multilevel").main(recipe_argv(
        teacher, out, root / "cache", "--dataset_name", folder, "--student_name_or_path", save_tiny_timm(root / "init"),
        "--max_steps", "24", "--ce_weight", "1", "--learning_rate", "2e-3", "--robustness_corruptions",
        "gaussian_noise", "--robustness_severities", "1,3"))
    return folder, out, results


def test_a_timm_student_is_carded_pushed_and_the_pipeline_gets_the_cards_accuracy(timm_student, tmp_path, local_hub):
    from hf_robust_distill.hub import push_robust_student

    folder, out, _ = timm_student
    push_robust_student(str(out), "tester/timm-student", force=True)
    downloaded = snapshot_download("tester/timm-student", cache_dir=str(tmp_path / "hub-cache"))
    assert {"config.json", "model.safetensors", "README.md", "robustness_report.json"} <= set(os.listdir(downloaded))
    model = AutoModelForImageClassification.from_pretrained(downloaded)
    assert type(model).__name__ == "TimmWrapperForImageClassification"
    accuracy, _ = pipeline_accuracy(downloaded, folder)
    report = json.loads((out / "robustness_report.json").read_text())
    assert report["clean_accuracy"] == accuracy
    card = ModelCard.load(os.path.join(downloaded, "README.md"))
    clean = [r.metric_value for r in card.data.eval_results if r.metric_name == "Top-1 accuracy (clean)"]
    assert clean == [round(100 * accuracy, 2)]
    assert "TimmWrapperForImageClassification" in card.text or "timm" in card.text


def test_a_timm_student_takes_the_drop_path_rate(tmp_path):
    """The official DAD student trains with drop-path 0.25: a timm student builds it from its model_args."""
    results = load_recipe("multilevel").main(recipe_argv(
        save_tiny_vit(tmp_path / "teacher"), tmp_path / "out", tmp_path / "cache", "--student_name_or_path",
        save_tiny_timm(tmp_path / "student"), "--drop_path_rate", "0.25", "--max_train_samples", "16",
        "--max_eval_samples", "16", "--max_steps", "1", "--robustness_corruptions", "gaussian_noise",
        "--robustness_severities", "1"))
    network = results["trainer"].accelerator.unwrap_model(results["trainer"].model).timm_model
    assert [float(getattr(block.drop_path1, "drop_prob", 0.0)) for block in network.blocks] == pytest.approx([0.0, 0.25])
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_args"]["drop_path_rate"] == 0.25
