"""Teachers and students that cut images differently: prefix tokens read from configs, the
teacher's patch grid resampled to the student's, attention maps cut to [CLS] + grid and
head-averaged. Pure functions first, then training runs of such pairs."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import (AutoImageProcessor, DeiTConfig, DeiTForImageClassification, Dinov2WithRegistersConfig,
                          ViTConfig)

from tests.conftest import DIGIT_NAMES, save_tiny_vit
from tests.training.test_trainer import StopAt, make_config
from hf_robust_distill import RobustDistillationTrainer
from hf_robust_distill.cli import demo_image_processor
from hf_robust_distill.models import cls_and_grid, load_vision_model, prefix_tokens, resample_attention, resample_tokens


def test_prefix_tokens_are_read_from_the_config():
    assert prefix_tokens(ViTConfig()) == 1
    assert prefix_tokens(DeiTConfig()) == 2  # [CLS] + distillation token
    assert prefix_tokens(Dinov2WithRegistersConfig(num_register_tokens=4)) == 5


def test_resampled_tokens_keep_a_smooth_field():
    """A field linear in the patch position stays that field (bilinear), up and down in size."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 8), torch.linspace(0, 1, 8), indexing="ij")
    tokens = torch.stack([ys, xs], -1).reshape(1, 64, 2)
    assert resample_tokens(tokens, (8, 8), (8, 8)) is tokens
    down = resample_tokens(tokens, (8, 8), (4, 4))
    assert down.shape == (1, 16, 2)
    torch.testing.assert_close(down.mean(1), tokens.mean(1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="do not form a 5x5 grid"):
        resample_tokens(tokens, (5, 5), (4, 4))


def test_attention_is_cut_to_cls_and_grid_and_resampled_as_distributions():
    torch.manual_seed(0)
    maps = torch.softmax(torch.randn(2, 3, 1 + 2 + 16, 1 + 2 + 16), -1)  # [CLS], 2 registers, a 4x4 grid
    cut = cls_and_grid(maps, prefix=3)
    assert cut.shape == (2, 3, 17, 17)
    torch.testing.assert_close(cut.sum(-1), torch.ones(2, 3, 17))
    torch.testing.assert_close(cut[..., 0, 0], maps[..., 0, 0] / (maps[..., 0, :1].sum(-1) + maps[..., 0, 3:].sum(-1)))
    for rows in (cut, cut[..., :1, :]):
        resampled = resample_attention(rows, (4, 4), (2, 2))
        assert resampled.shape[-1] == 5 and resampled.shape[-2] == (1 if rows.shape[-2] == 1 else 5)
        torch.testing.assert_close(resampled.sum(-1), torch.ones(resampled.shape[:-1]))
    uniform = torch.full((1, 1, 1, 17), 1 / 17)
    torch.testing.assert_close(resample_attention(uniform, (4, 4), (2, 2))[..., 1:].sum(-1),
                               uniform[..., 1:].sum(-1))  # the grid keeps its share of the mass


def save_tiny_deit(path) -> str:
    """A 2-block DeiT (with its distillation token) of width 32, 8 px patches, on 32 px images."""
    torch.manual_seed(1)
    config = DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=10, id2label=dict(enumerate(DIGIT_NAMES)),
                        label2id={n: i for i, n in enumerate(DIGIT_NAMES)})
    DeiTForImageClassification(config).save_pretrained(path)
    demo_image_processor().save_pretrained(path)
    return str(path)


def big_to_small(tmp_path, student_kind, out, train, **overrides):
    """Teacher: width 64, 4 heads, 4 px patches (an 8x8 grid). Student: width 32, 2 heads, 8 px
    patches (4x4), a ViT or a DeiT (with its distillation token)."""
    teacher = save_tiny_vit(tmp_path / "teacher", hidden_size=64, num_attention_heads=4, patch_size=4,
                            intermediate_size=128)
    student = (save_tiny_deit(tmp_path / "student") if student_kind == "deit"
               else save_tiny_vit(tmp_path / "student", seed=1))
    args = make_config(out, patch_layers=[0, -1], attn_layers=[0, -1], **overrides)
    return RobustDistillationTrainer(model=load_vision_model(student), teacher=load_vision_model(teacher), args=args,
                                     train_dataset=train, processing_class=AutoImageProcessor.from_pretrained(student))


@pytest.mark.parametrize("student_kind, rows, kind", [("deit", "all", "linear"), ("vit", "cls", "mlp")])
def test_a_wider_teacher_of_finer_patches_and_more_heads_distils_into_a_small_student(
        digits, tmp_path, student_kind, rows, kind):
    train, _ = digits
    trainer = big_to_small(tmp_path, student_kind, tmp_path / "out", train, attn_rows=rows, projection=kind)
    assert (trainer.student_taps.prefix_tokens, trainer.teacher.taps.prefix_tokens) == (
        2 if student_kind == "deit" else 1, 1)
    projected = {name for name, _ in trainer.model.named_parameters() if name.startswith("distillation_projections")}
    assert projected and all(p.requires_grad for n, p in trainer.model.named_parameters() if n in projected)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n in projected}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        assert all(entry[part] > 0 and torch.isfinite(torch.tensor(entry[part]))
                   for part in ("loss_cls", "loss_patch", "loss_attn"))
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in projected)  # the projections train

    trainer.save_model(str(tmp_path / "student-folder"))
    saved = load_file(str(tmp_path / "student-folder" / "model.safetensors"))
    assert saved and not any("distillation_projections" in key for key in saved)
    assert not (tmp_path / "student-folder" / "projections.safetensors").exists()
    reloaded = type(trainer.model).from_pretrained(tmp_path / "student-folder")  # no unexpected keys to drop
    assert not hasattr(reloaded, "distillation_projections")


def test_a_resumed_big_to_small_run_equals_an_uninterrupted_one(digits, tmp_path):
    """Projections included: they are saved beside each checkpoint and restored on resume."""
    train, _ = digits
    straight = big_to_small(tmp_path, "deit", tmp_path / "straight", train, max_steps=4)
    straight.train()
    interrupted = big_to_small(tmp_path, "deit", tmp_path / "resumed", train, max_steps=4, save_strategy="steps",
                               save_steps=2)
    interrupted.add_callback(StopAt(2))
    interrupted.train()
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    assert (checkpoint / "projections.safetensors").exists()
    assert not any("distillation_projections" in key for key in load_file(str(checkpoint / "model.safetensors")))
    resumed = big_to_small(tmp_path, "deit", tmp_path / "resumed", train, max_steps=4)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_the_recipe_distils_a_dinov2_teacher_into_a_deit_student(digits, tmp_path):
    """Another architecture, width, patch size, head count and prefix on each side, through the
    recipe's own loading; the student folder it ends with holds no projection weights."""
    from transformers import Dinov2Config, Dinov2Model

    from tests.conftest import load_recipe, recipe_argv

    torch.manual_seed(2)
    Dinov2Model(Dinov2Config(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128)).save_pretrained(tmp_path / "dinov2")
    demo_image_processor().save_pretrained(tmp_path / "dinov2")
    student = save_tiny_deit(tmp_path / "deit")
    out = tmp_path / "out"
    results = load_recipe("multilevel").main(recipe_argv(
        tmp_path / "dinov2", out, tmp_path / "cache", "--student_name_or_path", student, "--max_train_samples", "32",
        "--max_eval_samples", "16"))
    assert type(results["trainer"].model).__name__ == "DeiTForImageClassification"
    assert not any("distillation_projections" in key for key in load_file(str(out / "model.safetensors")))
    assert (out / "README.md").exists() and "student" in results["table"]
