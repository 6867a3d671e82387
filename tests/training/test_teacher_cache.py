"""--cache_teacher: the teacher's outputs computed once, before training, then read in every
epoch; the same losses as the live teacher, no teacher forward during training, resumable builds."""

import os
import shutil

import pytest
import torch
from transformers import AutoImageProcessor, TrainerCallback

from tests.training.test_trainer import make_config
from hf_robust_distill import DistillationConfig, RobustDistillationTrainer
from hf_robust_distill.models import load_vision_model
from hf_robust_distill.training import build_teacher_cache


class CountCalls:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1


class CallsAtStart(TrainerCallback):
    def __init__(self, counter):
        self.counter, self.at_start = counter, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.at_start = self.counter.calls


def make(tiny_vit, train, out, **overrides):
    values = dict(num_train_epochs=2, max_steps=-1, per_device_eval_batch_size=16, patch_layers=[0, -1],
                  attn_layers=[0, -1], kd_weight=0.5)
    args = make_config(out, **{**values, **overrides})
    teacher = load_vision_model(tiny_vit)
    counter = CountCalls(teacher)
    trainer = RobustDistillationTrainer(model=load_vision_model(tiny_vit), teacher=teacher, args=args,
                                        train_dataset=train, processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    return trainer, counter


def test_a_cached_teacher_gives_the_live_losses_and_runs_no_forward_in_training(tiny_vit, digits, tmp_path):
    train, _ = digits
    live, live_calls = make(tiny_vit, train, tmp_path / "live")
    live.train()
    cached, cached_calls = make(tiny_vit, train, tmp_path / "cached", cache_teacher=True)
    start = CallsAtStart(cached_calls)
    cached.add_callback(start)
    cached.train()
    steps = len(train) // 8 * 2
    assert live.state.global_step == cached.state.global_step == steps
    assert live_calls.calls == steps  # the live teacher runs every step
    # only the build: its batches and one image that sizes the cache (for the disk check)
    assert start.at_start == len(train) // 16 + 1 and cached_calls.calls == start.at_start
    live_logs = [e for e in live.state.log_history if "loss" in e]
    cached_logs = [e for e in cached.state.log_history if "loss" in e]
    for a, b in zip(live_logs, cached_logs):
        for part in ("loss", "loss_cls", "loss_patch", "loss_attn", "loss_kd"):
            assert b[part] == pytest.approx(a[part], rel=1e-5, abs=1e-6)

    # One batch, the same student: cached and live teacher outputs give the same loss parts.
    batch = cached.data_collator([cached.train_dataset[i] for i in range(8)])
    cached.model.eval()
    with torch.no_grad():
        cached.views.seeds.evaluation_batch = 0
        from_cache = float(cached.compute_loss(cached.model, dict(batch)))
        cached.views.seeds.evaluation_batch = 0
        live_inputs = {k: v for k, v in batch.items() if not k.startswith("teacher_")}  # what the cache added
        from_teacher = float(cached.compute_loss(cached.model, live_inputs))
    assert from_cache == pytest.approx(from_teacher, rel=1e-6, abs=1e-6)


def test_a_stopped_cache_build_resumes_and_other_layers_get_another_cache(tiny_vit, digits, tmp_path):
    train, _ = digits
    trainer, calls = make(tiny_vit, train, tmp_path / "out", cache_teacher=True)
    folder = tmp_path / "cache"
    kwargs = dict(token_layers=trainer.teacher.token_layers, attention_layers=trainer.teacher.attention_layers,
                  batch_size=8, shard_size=16)
    whole = build_teacher_cache(trainer.teacher, train, str(folder), **kwargs)
    assert calls.calls == len(train) // 8 + 1 and len(whole) == len(train)  # + the image that sizes it
    shutil.rmtree(folder / "shard-00003")  # as if stopped before the last shard was written
    resumed = build_teacher_cache(trainer.teacher, train, str(folder), **kwargs)
    assert calls.calls == len(train) // 8 + 1 + 3  # only the missing shard's two batches, and the sizing image
    for name in whole.column_names:
        torch.testing.assert_close(resumed[name], whole[name])

    trainer.use_teacher_cache()
    other, _ = make(tiny_vit, train, tmp_path / "out", cache_teacher=True, patch_layers=[-1])
    other.use_teacher_cache()
    caches = os.listdir(tmp_path / "out" / "teacher-cache")
    assert len(caches) == 2  # keyed by the layers read


def test_online_dad_cannot_cache_its_teacher():
    with pytest.raises(ValueError, match="dad_mode='offline'"):
        DistillationConfig(output_dir="x", cache_teacher=True, dad_mode="online", dad_kd_weight=0.5)


def test_offline_dad_reads_the_clean_view_from_the_cache_and_runs_the_teacher_on_dad_images(
        tiny_clip, tiny_vq, tiny_vit, tmp_path):
    from tests.conftest import load_recipe, recipe_argv

    results = load_recipe("dad").main(recipe_argv(
        tiny_clip, tmp_path / "out", tmp_path / "cache", "--prompt_templates", "short", "--vq_name_or_path", tiny_vq,
        "--student_name_or_path", tiny_vit, "--dad_mode", "offline", "--dad_teacher_logits", "false",
        "--cache_teacher", "true", "--max_train_samples", "16", "--max_eval_samples", "16", "--max_steps", "2",
        "--generation_batch_size", "8", "--eval_distortions", "gaussian_noise:3"))
    trainer = results["trainer"]
    assert trainer.teacher.cache is not None and "teacher_logits" in trainer.teacher.cache.column_names
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all(entry["loss_kd"] > 0 and entry["loss_kd_dad"] > 0 for entry in logs)


def test_the_cache_stores_the_teachers_dtype_and_the_rows_the_loss_reads(tiny_vit, digits, tmp_path):
    """A bf16 teacher's outputs are stored as its bf16 bits (2 bytes a value), equal to what it
    computed; with --attn_rows cls the attention maps are the [CLS] rows alone."""
    import numpy as np

    from hf_robust_distill.training import row_bytes

    train, _ = digits
    trainer, _ = make(tiny_vit, train, tmp_path / "out", cache_teacher=True, teacher_dtype="bfloat16",
                      attn_rows="cls", attn_layers=[-1])
    trainer.use_teacher_cache()
    cache = trainer.teacher.cache
    attention = cache.layout["teacher_attention_1"]
    assert attention["dtype"] == "bfloat16" and attention["shape"] == [2, 1, 17]  # heads, the [CLS] row, tokens
    stored = np.load(os.path.join(cache.folder, "shard-00000", "teacher_attention_1.npy"), mmap_mode="r")
    assert stored.dtype == np.uint16
    rows = cache.rows(np.array([3, 0, 40]))
    assert rows["teacher_attention_1"].dtype == torch.bfloat16
    pixels = torch.stack([train[i]["pixel_values"] for i in (3, 0, 40)])
    with torch.no_grad():
        live = trainer.teacher(pixels)
    torch.testing.assert_close(rows["teacher_attention_1"], live.attentions[1], rtol=0, atol=0)
    torch.testing.assert_close(rows["teacher_cls"], live.cls, rtol=0, atol=0)
    assert row_bytes(cache.layout) == 2 * (10 + 32 + 2 * 17 * 32 + 2 * 1 * 17)  # logits, [CLS], two token layers, rows


def test_a_cache_the_disk_cannot_hold_is_refused_before_it_is_built(tiny_vit, digits, tmp_path, monkeypatch):
    import shutil as real_shutil
    from collections import namedtuple

    train, _ = digits
    trainer, calls = make(tiny_vit, train, tmp_path / "out", cache_teacher=True)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(real_shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(ValueError, match=r"--cache_teacher needs .* GB for 64 images .* --teacher_cache_dir"):
        trainer.use_teacher_cache()
    assert calls.calls == 1  # the one image that sizes it, nothing written
    folder = tmp_path / "out" / "teacher-cache"
    assert not any(name.startswith("shard-") for sub in folder.iterdir() for name in os.listdir(sub))
