"""No card describes a head that never learned: a student's new head is trained (on detached
features, so the backbone learns from distillation alone), and the recipe says so."""

import torch
from transformers import AutoImageProcessor

from tests.conftest import load_recipe, recipe_argv
from hf_robust_distill import DistillationConfig, RobustDistillationTrainer
from hf_robust_distill.data import load_image_dataset, prepare_dataset
from hf_robust_distill.models import load_vision_model, load_with_head


def feature_config(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3,
                  use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1, seed=0,
                  distortions="noise:0.2", max_grad_norm=0.0)
    values.update(overrides)
    return DistillationConfig(**values)


def train_new_head(tiny_vit, photo_folder, tmp_path, **overrides):
    train = load_image_dataset(photo_folder)["train"]
    names = train.features["label"].names
    torch.manual_seed(0)
    student, head = load_with_head(tiny_vit, names, attention_maps=True)
    assert head == "new"
    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = RobustDistillationTrainer(model=student, teacher=load_vision_model(tiny_vit, attention_maps=True),
                                        args=feature_config(tmp_path, **overrides), processing_class=processor,
                                        train_dataset=prepare_dataset(train, processor))
    trainer.train()
    return start, student.state_dict(), trainer


def test_a_new_head_learns_and_the_backbone_gets_nothing_from_it(tiny_vit, photo_folder, tmp_path):
    """Today a new head is frozen: after any number of steps it is bit-identical to its random start."""
    start, trained, trainer = train_new_head(tiny_vit, photo_folder, tmp_path / "a")
    assert not torch.equal(trained["classifier.weight"], start["classifier.weight"])
    assert all("loss_head" in e for e in trainer.state.log_history if "loss" in e)
    # The same run without the head term: the backbone ends bit-identical, the head untouched.
    _, frozen, _ = train_new_head(tiny_vit, photo_folder, tmp_path / "b", head_ce_weight=0.0)
    assert torch.equal(frozen["classifier.weight"], start["classifier.weight"])
    backbone = [k for k in trained if not k.startswith("classifier.")]
    assert all(torch.equal(trained[k], frozen[k]) for k in backbone)


def test_the_recipe_says_the_head_is_new_and_trains_it(tiny_vit, photo_folder, tmp_path, caplog):
    results = load_recipe("multilevel").main(recipe_argv(tiny_vit, tmp_path / "out", tmp_path / "cache",
                                                         "--dataset_name", photo_folder, "--force_push"))
    assert "starting a new head" in caplog.text and "loss_head" in caplog.text
    student = results["trainer"].model
    assert student.config.id2label == {0: "cat", 1: "coffee"}
    assert student.classifier.weight.requires_grad
