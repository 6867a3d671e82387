"""The weight average (``--ema_decay``) and stochastic depth (``--drop_path_rate``) of the student."""

import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, ConvNextConfig, ConvNextForImageClassification, TrainerCallback

from tests.training.test_trainer import StopAt, make_config, make_trainer
from hf_robust_distill import DistillationConfig, RobustDistillationTrainer
from hf_robust_distill.models import check_drop_path, load_vision_model, load_with_head, student_load_kwargs
from hf_robust_distill.training import EMA_WEIGHTS, WeightAverage

DECAY = 0.5  # large steps, so that an average that lags by one step shows


class Recorder(TrainerCallback):
    """The student's trained weights after every optimizer step."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})


def test_the_average_equals_a_hand_updated_copy_and_is_the_saved_student(tiny_vit, digits, tmp_path):
    train, _ = digits
    trainer = make_trainer(tiny_vit, make_config(tmp_path, max_steps=3, ema_decay=DECAY), train)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    recorder = Recorder()
    trainer.add_callback(recorder)
    trainer.train()
    assert len(recorder.steps) == 3
    expected = dict(start)
    for weights in recorder.steps:
        expected = {n: DECAY * expected[n] + (1 - DECAY) * weights[n] for n in expected}
    final = dict(trainer.model.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(final[name].detach(), value, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(value, recorder.steps[-1][name])  # not the raw weights
    trainer.save_model(str(tmp_path / "student"))
    saved = load_vision_model(str(tmp_path / "student")).state_dict()
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(saved[name], value)


def test_evaluation_sees_the_average_and_training_goes_on_from_its_own_weights(tiny_vit, digits, tmp_path):
    model = load_vision_model(tiny_vit)
    average = WeightAverage(model, DECAY)
    own = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(model)
    moved = {n: p.detach().clone() for n, p in model.named_parameters()}
    with average.applied(model):
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), own[name] + 0.5)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), moved[name])


def test_a_resumed_run_ends_with_the_uninterrupted_runs_average(tiny_vit, digits, tmp_path):
    train, _ = digits
    straight = make_trainer(tiny_vit, make_config(tmp_path / "straight", max_steps=4, ema_decay=DECAY), train)
    straight.train()
    args = make_config(tmp_path / "resumed", max_steps=4, save_strategy="steps", save_steps=2, ema_decay=DECAY)
    interrupted = make_trainer(tiny_vit, args, train)
    interrupted.add_callback(StopAt(2))
    interrupted.train()
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    assert set(load_file(str(checkpoint / EMA_WEIGHTS))) == set(interrupted.weight_average.average)
    resumed = make_trainer(tiny_vit, make_config(tmp_path / "resumed", max_steps=4, ema_decay=DECAY), train)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert not os.path.exists(tmp_path / "straight" / EMA_WEIGHTS)  # beside checkpoints only


def test_bad_settings_are_refused():
    for bad in (dict(ema_decay=1.0), dict(ema_decay=-0.1), dict(drop_path_rate=1.0)):
        with pytest.raises(ValueError, match="lies in"):
            DistillationConfig(output_dir="x", **bad)
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        DistillationConfig(output_dir="x", ema_decay=0.999, load_best_model_at_end=True, eval_strategy="steps",
                           save_strategy="steps")


def save_tiny_convnext(path) -> str:
    labels = dict(num_labels=10, id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)})
    model = ConvNextForImageClassification(ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[2, 2],
                                                          image_size=32, **labels))
    model.save_pretrained(path)
    return str(path)


def test_drop_path_reaches_students_that_have_it_and_is_refused_for_the_rest(tiny_vit, digits, tmp_path):
    path = save_tiny_convnext(tmp_path / "convnext")
    config = make_config(tmp_path / "out", drop_path_rate=0.25, cls_weight=0, patch_weight=0, attn_weight=0,
                         kd_weight=0, ce_weight=1.0, distortions="clean")
    student, _ = load_with_head(path, [str(i) for i in range(10)], **student_load_kwargs(config))
    assert student.config.drop_path_rate == 0.25
    rates = [m.drop_prob for m in student.modules() if type(m).__name__.endswith("DropPath")]
    assert rates and max(rates) == pytest.approx(0.25)  # growing with depth up to the last block's
    processor = AutoImageProcessor.from_pretrained(tiny_vit)  # any 32 px processor
    RobustDistillationTrainer(model=student, args=config, train_dataset=digits[0], processing_class=processor)
    plain = load_vision_model(path)  # not loaded with the rate: the trainer cannot add it afterwards
    with pytest.raises(ValueError, match=r"from_pretrained\(\.\.\., drop_path_rate=0.25\)"):
        RobustDistillationTrainer(model=plain, args=config, train_dataset=digits[0], processing_class=processor)
    with pytest.raises(ValueError, match="no stochastic depth"):
        check_drop_path(load_vision_model(tiny_vit).config, 0.25)
    check_drop_path(load_vision_model(tiny_vit).config, None)
