import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, TrainerCallback

from tests.conftest import save_tiny_vit
from hf_robust_distill import DistillationConfig, RobustDistillationTrainer
from hf_robust_distill.models import SELECTIVE_ATTENTION, AttentionMapsUnavailable, FeatureTaps, load_vision_model


class StopAt(TrainerCallback):
    """Simulates an interruption after ``step`` optimizer steps."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def make_config(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                  learning_rate=1e-3, max_steps=3, logging_steps=1, save_strategy="no", report_to="none",
                  disable_tqdm=True, seed=0, distortions="pixel_mask:0.5-0.9,noise:0.1-0.3,blur:1",
                  use_cpu=True, dataloader_num_workers=0)
    values.update(overrides)
    return DistillationConfig(**values)


def make_trainer(path, args, train, eval_set=None, teacher_path=None):
    student = load_vision_model(path, attention_maps=args.attn_weight > 0)
    teacher = load_vision_model(teacher_path or path, attention_maps=args.attn_weight > 0)
    return RobustDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=train,
                                     eval_dataset=eval_set, processing_class=AutoImageProcessor.from_pretrained(path))


def test_end_to_end_logs_parts_and_freezes_the_teacher(tiny_vit, digits, tmp_path):
    train, eval_set = digits
    trainer = make_trainer(tiny_vit, make_config(tmp_path), train, eval_set)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.model.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        for part in ("loss_cls", "loss_patch", "loss_attn", "loss_head"):
            assert part in entry and entry[part] >= 0
        weighted = entry["loss_cls"] + entry["loss_patch"] + 0.1 * entry["loss_attn"] + entry["loss_head"]
        assert entry["loss"] == pytest.approx(weighted, rel=1e-3, abs=1e-4)
    assert not trainer.teacher.model.training
    assert all(torch.equal(v, trainer.teacher.model.state_dict()[k]) for k, v in teacher_before.items())
    assert all(not p.requires_grad for p in trainer.teacher.model.parameters())
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in student_before.items())

    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_loss_cls", "eval_loss_patch", "eval_loss_attn",
                "eval_accuracy_clean", "eval_accuracy_distorted"):
        assert key in metrics
    # Evaluation views are drawn the same way every time.
    assert trainer.evaluate()["eval_loss"] == pytest.approx(metrics["eval_loss"])


def test_distillation_lowers_the_loss(tiny_vit, digits, tmp_path):
    """With the student starting as a copy of the teacher, aligning it on the distorted view
    brings its features towards the teacher's clean ones."""
    train, _ = digits
    trainer = make_trainer(tiny_vit, make_config(tmp_path, max_steps=24, learning_rate=3e-3,
                                                 distortions="noise:0.3"), train)
    trainer.train()
    losses = [e["loss_cls"] + e["loss_patch"] + 0.1 * e["loss_attn"] for e in trainer.state.log_history if "loss" in e]
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4


def test_checkpoint_holds_only_student_weights(tiny_vit, digits, tmp_path):
    train, _ = digits
    trainer = make_trainer(tiny_vit, make_config(tmp_path, max_steps=2, save_strategy="steps", save_steps=2), train)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    saved = load_file(checkpoint / "model.safetensors")
    student = trainer.model.state_dict()
    # transformers writes its checkpoint key names; count and size are the student's alone.
    assert len(saved) == len(student)
    assert sum(t.numel() for t in saved.values()) == sum(t.numel() for t in student.values())
    reloaded = load_vision_model(str(checkpoint)).state_dict()
    for key, value in student.items():
        torch.testing.assert_close(reloaded[key], value)
    assert os.path.exists(checkpoint / "preprocessor_config.json")
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    n_params = sum(len(group["params"]) for group in optimizer["param_groups"])
    assert n_params == sum(1 for p in trainer.model.parameters() if p.requires_grad)


def test_gradient_accumulation_matches_a_full_batch(tiny_vit, digits, tmp_path):
    """2 x 4 with accumulation and 1 x 8 give the same logged loss and the same update."""
    train, _ = digits
    runs = {}
    for name, batch, accumulation in (("full", 8, 1), ("accumulated", 4, 2)):
        args = make_config(tmp_path / name, max_steps=1, per_device_train_batch_size=batch,
                           gradient_accumulation_steps=accumulation, distortions="gaussian_blur:2")
        trainer = make_trainer(tiny_vit, args, train)
        trainer.train()
        runs[name] = (trainer.state.log_history[0]["loss"], trainer.model.state_dict())
    assert runs["accumulated"][0] == pytest.approx(runs["full"][0], rel=1e-4)
    for key, value in runs["full"][1].items():
        torch.testing.assert_close(runs["accumulated"][1][key], value, rtol=1e-4, atol=1e-5)


def test_sdpa_models_are_switched_to_selective_attention_or_fail_clearly(tiny_vit, digits, tmp_path):
    sdpa = load_vision_model(tiny_vit)
    assert sdpa.config._attn_implementation == "sdpa"
    assert load_vision_model(tiny_vit, attention_maps=True).config._attn_implementation == "eager"
    taps = FeatureTaps(sdpa, attention_layers=[-1])
    with pytest.raises(AttentionMapsUnavailable, match="attn_implementation='eager'"):
        taps(sdpa, torch.zeros(1, 3, 32, 32))
    # Handed sdpa models, the trainer switches the distilled layers before training and distils real maps.
    train, _ = digits
    teacher = load_vision_model(tiny_vit)
    trainer = RobustDistillationTrainer(model=sdpa, teacher=teacher, args=make_config(tmp_path, max_steps=1),
                                        train_dataset=train, processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    assert sdpa.config._attn_implementation == teacher.config._attn_implementation == SELECTIVE_ATTENTION
    trainer.train()
    assert trainer.state.log_history[0]["loss_attn"] > 0


def test_teachers_of_another_depth_are_mapped_by_relative_depth(tiny_vit, digits, tmp_path):
    train, _ = digits
    deep = save_tiny_vit(tmp_path / "deep", num_hidden_layers=4)
    args = make_config(tmp_path, max_steps=1, patch_layers=[0, 1], attn_layers=[0, -1])
    trainer = make_trainer(tiny_vit, args, train, teacher_path=deep)
    assert trainer.teacher.token_layers == [1, 3]
    assert trainer.teacher.attention_layers == [1, 3]
    trainer.train()


def test_resume_from_checkpoint_continues_the_run(tiny_vit, digits, tmp_path):
    """Stopping after 2 of 4 steps and resuming ends with the weights of an uninterrupted run."""
    train, _ = digits
    straight = make_trainer(tiny_vit, make_config(tmp_path / "straight", max_steps=4), train)
    straight.train()

    args = make_config(tmp_path / "resumed", max_steps=4, save_strategy="steps", save_steps=2)
    interrupted = make_trainer(tiny_vit, args, train)
    interrupted.add_callback(StopAt(2))
    interrupted.train()
    assert interrupted.state.global_step == 2
    resumed = make_trainer(tiny_vit, make_config(tmp_path / "resumed", max_steps=4), train)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="every loss weight is 0"):
        DistillationConfig(output_dir="x", cls_weight=0, patch_weight=0, attn_weight=0)
    with pytest.raises(ValueError, match=">= 0"):
        DistillationConfig(output_dir="x", cls_weight=-1)
    with pytest.raises(ValueError, match="unknown distortion"):
        DistillationConfig(output_dir="x", distortions="fog_of_war:1")
    with pytest.raises(ValueError, match="remove_unused_columns"):
        DistillationConfig(output_dir="x", remove_unused_columns=True)
    assert DistillationConfig(output_dir="x").remove_unused_columns is False


def test_a_teacher_is_required_for_distillation_terms(tiny_vit, digits, tmp_path):
    train, _ = digits
    student = load_vision_model(tiny_vit)
    with pytest.raises(ValueError, match="needs a teacher"):
        RobustDistillationTrainer(model=student, teacher=None, args=make_config(tmp_path), train_dataset=train,
                                  processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
