"""A diverged run stops with the step, the part that went non-finite and the last good
checkpoint, and no weights with NaN or Inf are ever saved, carded or pushed."""

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor

from tests.conftest import load_recipe, recipe_argv
from tests.hub.test_hub import a_student
from hf_robust_distill import DistillationConfig, RobustDistillationTrainer, push_robust_student
from hf_robust_distill.hub import RefusedPush
from hf_robust_distill.models import load_vision_model
from hf_robust_distill.training import NonFiniteLossError, NonFiniteWeightsError


def weights_in(folder) -> list[str]:
    return [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
            if name.endswith(".safetensors")]


def test_a_learning_rate_of_1e6_stops_with_the_documented_error_and_leaves_no_nan_weights(tiny_vit, tmp_path):
    """Today it logs 'loss': 0 while every part is NaN, saves NaN weights and cards them."""
    out = tmp_path / "out"
    with pytest.raises(NonFiniteLossError) as error:
        load_recipe("multilevel").main(recipe_argv(tiny_vit, out, tmp_path / "cache", "--learning_rate", "1e6",
                                                   "--max_steps", "6", "--save_strategy", "steps", "--save_steps",
                                                   "1"))
    message = str(error.value)
    assert "at step" in message and "Training stopped before this step was applied" in message
    assert "The last good checkpoint is" in message and "--resume_from_checkpoint" in message
    assert not os.path.exists(out / "model.safetensors") and not os.path.exists(out / "README.md")
    saved = weights_in(out)
    assert saved, "the checkpoints before the divergence are kept"
    for path in saved:
        assert all(torch.isfinite(t).all() for t in load_file(path).values()), path


class NaNImages:
    """A training set whose images are NaN: the first step's loss is NaN."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        example = dict(self.dataset[i])
        example["pixel_values"] = torch.full_like(example["pixel_values"], float("nan"))
        return example


def test_a_nan_loss_names_its_step_and_its_parts_and_is_never_applied(tiny_vit, digits, tmp_path):
    train, _ = digits
    student = load_vision_model(tiny_vit, attention_maps=True)
    args = DistillationConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, use_cpu=True,
                              report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1,
                              distortions="clean", seed=0)
    trainer = RobustDistillationTrainer(model=student, teacher=load_vision_model(tiny_vit, attention_maps=True),
                                        args=args, train_dataset=NaNImages(train),
                                        processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match=r"the training loss is nan at step 1: loss_cls = nan, "
                                                 r"loss_patch = nan, loss_attn = nan, loss_head = nan"):
        trainer.train()
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # the step was not applied
    assert not [e for e in trainer.state.log_history if "loss" in e]  # no 'loss': 0 standing for NaN


def test_weights_with_nan_are_never_saved(tiny_vit, digits, tmp_path):
    train, _ = digits
    args = DistillationConfig(output_dir=str(tmp_path / "out"), max_steps=1, use_cpu=True, report_to="none")
    trainer = RobustDistillationTrainer(model=load_vision_model(tiny_vit), teacher=load_vision_model(tiny_vit),
                                        args=args, train_dataset=train,
                                        processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    with torch.no_grad():
        trainer.model.classifier.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match="classifier.weight"):
        trainer.save_model()
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_a_push_of_nan_weights_is_refused_before_any_request(tiny_vit, tmp_path, local_hub):
    folder = a_student(tiny_vit, tmp_path / "student")
    weights = load_file(os.path.join(folder, "model.safetensors"))
    weights["classifier.bias"][0] = float("nan")
    save_file(weights, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RefusedPush, match="NaN or Inf"):
        push_robust_student(folder, "tester/diverged", force=True)  # not even with force
    assert local_hub.requests == []
    shutil.rmtree(folder)
