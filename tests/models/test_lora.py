"""LoRA students: every loss trains the adapters and the head alone; checkpoints hold the adapter
and resume from it; the final folder is the merged model, loadable without peft."""

import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageClassification

from tests.training.test_trainer import StopAt, make_config
from hf_robust_distill import RobustDistillationTrainer
from hf_robust_distill.models import is_lora, load_vision_model, trained_share


def lora_trainer(tiny_vit, train, out, **overrides):
    args = make_config(out, lora_r=4, lora_alpha=8, patch_layers=[0, -1], attn_layers=[0, -1], **overrides)
    return RobustDistillationTrainer(model=load_vision_model(tiny_vit), teacher=load_vision_model(tiny_vit), args=args,
                                     train_dataset=train, processing_class=AutoImageProcessor.from_pretrained(tiny_vit))


def test_a_lora_student_trains_adapters_and_head_and_ends_merged(tiny_vit, digits, tmp_path):
    train, eval_set = digits
    trainer = lora_trainer(tiny_vit, train, tmp_path / "out")
    assert is_lora(trainer.model)
    trainable, total = trained_share(trainer.model)
    assert 0 < trainable < total / 2
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3 and all(entry["loss_attn"] > 0 and entry["loss_head"] > 0 for entry in logs)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n or "modules_to_save" in n for n in changed)
    assert any("lora_B" in n for n in changed) and any("classifier" in n for n in changed)

    trainer.save_model(str(tmp_path / "student"))
    weights = load_file(str(tmp_path / "student" / "model.safetensors"))
    assert not any("lora_" in key or "modules_to_save" in key for key in weights)
    merged = AutoModelForImageClassification.from_pretrained(tmp_path / "student").eval()  # no peft involved
    trainer.model.eval()
    pixels = torch.stack([eval_set[i]["pixel_values"] for i in range(8)])
    with torch.no_grad():
        unmerged = trainer.model(pixel_values=trainer.student_pixels(pixels)).logits
        torch.testing.assert_close(merged(pixel_values=trainer.student_pixels(pixels)).logits, unmerged,
                                   rtol=1e-4, atol=1e-5)


def test_a_lora_run_resumes_from_its_adapter_checkpoint(tiny_vit, digits, tmp_path):
    train, _ = digits
    straight = lora_trainer(tiny_vit, train, tmp_path / "straight", max_steps=4)
    straight.train()
    interrupted = lora_trainer(tiny_vit, train, tmp_path / "resumed", max_steps=4, save_strategy="steps",
                               save_steps=2)
    interrupted.add_callback(StopAt(2))
    interrupted.train()
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").exists()
    resumed = lora_trainer(tiny_vit, train, tmp_path / "resumed", max_steps=4)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_the_recipe_pushes_a_merged_lora_student_whose_card_names_the_rank(tiny_vit, tmp_path):
    from tests.conftest import load_recipe, recipe_argv

    out = tmp_path / "out"
    results = load_recipe("multilevel").main(recipe_argv(tiny_vit, out, tmp_path / "cache", "--lora_r", "4",
                                                         "--max_train_samples", "32", "--max_eval_samples", "16"))
    assert is_lora(results["trainer"].model)
    assert type(AutoModelForImageClassification.from_pretrained(out)).__name__ == "ViTForImageClassification"
    assert not (out / "adapter_config.json").exists()
    card = (out / "README.md").read_text()
    assert "rank 4, alpha 16 on `q_proj,v_proj`" in card and "% of the parameters trained" in card


def test_a_lora_student_learns_by_online_dad(tiny_clip, tiny_vq, tiny_vit, tmp_path):
    from tests.conftest import load_recipe, recipe_argv

    out = tmp_path / "out"
    results = load_recipe("dad").main(recipe_argv(
        tiny_clip, out, tmp_path / "cache", "--prompt_templates", "short", "--vq_name_or_path", tiny_vq,
        "--student_name_or_path", tiny_vit, "--dad_mode", "online", "--max_train_samples", "16",
        "--max_eval_samples", "16", "--max_steps", "2", "--eval_distortions", "gaussian_noise:3", "--lora_r", "4"))
    logs = [entry for entry in results["trainer"].state.log_history if "loss" in entry]
    assert logs and all(entry["loss_kd_dad"] > 0 for entry in logs)
    assert type(AutoModelForImageClassification.from_pretrained(out)).__name__ == "ViTForImageClassification"
    assert "rank 4" in (out / "README.md").read_text()
