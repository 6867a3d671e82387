"""Teachers and students that cut images differently: prefix tokens read from configs, the
teacher's patch grid resampled to the student's, attention maps cut to [CLS] + grid and
head-averaged. Pure functions first, then training runs of such pairs."""

import pytest
import torch
from transformers import (AutoImageProcessor, DeiTConfig, DeiTForImageClassification, Dinov2WithRegistersConfig,
                          ViTConfig)

from hf_robust_distill import RobustDistillationTrainer
from hf_robust_distill.demo import demo_image_processor
from hf_robust_distill.models import load_vision_model
from hf_robust_distill.token_grids import cls_and_grid, prefix_tokens, resample_attention, resample_tokens

from .conftest import DIGIT_NAMES, save_tiny_vit
from .test_trainer import make_config


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


@pytest.mark.parametrize("rows", ["all", "cls"])
def test_a_teacher_of_finer_patches_and_more_heads_distils_into_a_deit(digits, tmp_path, rows):
    """Teacher: 4 heads, 4 px patches (an 8x8 grid). Student: a DeiT with 2 heads, 8 px patches (4x4)
    and a distillation token. All three feature terms train, with finite losses."""
    train, _ = digits
    teacher = save_tiny_vit(tmp_path / "teacher", num_attention_heads=4, patch_size=4)
    student = save_tiny_deit(tmp_path / "student")
    trainer = RobustDistillationTrainer(
        model=load_vision_model(student), teacher=load_vision_model(teacher),
        args=make_config(tmp_path / "out", max_steps=3, attn_rows=rows, patch_layers=[0, -1], attn_layers=[0, -1]),
        train_dataset=train, processing_class=AutoImageProcessor.from_pretrained(student))
    assert (trainer.student_taps.prefix_tokens, trainer.teacher_taps.prefix_tokens) == (2, 1)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        assert all(entry[part] > 0 and torch.isfinite(torch.tensor(entry[part]))
                   for part in ("loss_cls", "loss_patch", "loss_attn"))
