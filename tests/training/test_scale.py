"""The lean training step and what several devices ask of it, on one CPU process: selective
attention maps, compiled students, gradient checkpointing, frozen models outside the Trainer's
accelerator, and the launch configs. Two-process runs are in test_ddp.py."""

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from torch.overrides import TorchFunctionMode
from transformers import (AutoImageProcessor, CLIPConfig, CLIPForImageClassification, DeiTConfig,
                          DeiTForImageClassification, Dinov2Config, Dinov2ForImageClassification, TrainerCallback,
                          ViTConfig, ViTForImageClassification)

from tests.training.test_trainer import make_config
from hf_robust_distill import RobustDistillationTrainer
from hf_robust_distill.models import (SELECTIVE_ATTENTION, FeatureTaps, attention_rows, load_vision_model,
                                      read_attention_maps)
from hf_robust_distill.training import check_one_device_per_process, fsdp_blocks, inference_dtype, unreached_parameters

SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64)


class CountSdpa(TorchFunctionMode):
    """Counts calls of the fused attention kernel."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def a_batch(digits, n=8):
    train, _ = digits
    rows = [train[i] for i in range(n)]
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows])}


def eval_loss(trainer, batch):
    trainer.model.eval()
    trainer.views.seeds.evaluation_batch = 0  # the same distorted view every time
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
    return loss, dict(trainer.loss_parts.last)


@pytest.mark.parametrize("rows", ["all", "cls"])
def test_selective_attention_gives_the_all_eager_loss_and_keeps_sdpa_elsewhere(tiny_vit, digits, tmp_path, rows):
    train, _ = digits
    trainer = RobustDistillationTrainer(
        model=load_vision_model(tiny_vit), teacher=load_vision_model(tiny_vit),
        args=make_config(tmp_path, attn_rows=rows, attn_layers=[-1], patch_layers=[0, -1]), train_dataset=train,
        processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    for taps in (trainer.student_taps, trainer.teacher.taps):
        assert [attention_rows(m) for m in taps.attention_modules] == [None, rows]
    assert trainer.model.config._attn_implementation == SELECTIVE_ATTENTION
    batch = a_batch(digits)
    with CountSdpa() as counter:
        selective, parts = eval_loss(trainer, batch)
    # Per model: layer 0 runs sdpa; layer 1 is eager (rows="all") or sdpa beside its [CLS] row.
    assert counter.calls == (2 if rows == "all" else 4)
    assert parts["loss_attn"] > 0

    for model in (trainer.model, trainer.teacher.model):
        model.set_attn_implementation("eager")
    with CountSdpa() as counter:
        eager, eager_parts = eval_loss(trainer, batch)
    assert counter.calls == 0
    torch.testing.assert_close(selective, eager, rtol=1e-5, atol=1e-5)
    for name, value in eager_parts.items():
        torch.testing.assert_close(parts[name], value, rtol=1e-5, atol=1e-5)


class GraphCount(TrainerCallback):
    def __init__(self):
        self.per_step = []

    def on_step_end(self, args, state, control, **kwargs):
        from torch._dynamo.utils import counters

        self.per_step.append(counters["stats"]["unique_graphs"])


def test_a_compiled_student_trains_with_an_attention_loss(tiny_vit, digits, tmp_path):
    """The hooks are registered once, so the compiled graphs of step 1 serve every later step."""
    torch._dynamo.reset()
    train, _ = digits
    graphs = GraphCount()
    trainer = RobustDistillationTrainer(
        model=load_vision_model(tiny_vit), teacher=load_vision_model(tiny_vit),
        args=make_config(tmp_path, torch_compile=True, torch_compile_backend="aot_eager"), train_dataset=train,
        processing_class=AutoImageProcessor.from_pretrained(tiny_vit), callbacks=[graphs])
    trainer.train()
    assert type(trainer.model_wrapped).__name__ == "OptimizedModule"
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3 and all(entry["loss_attn"] > 0 for entry in logs)
    assert graphs.per_step[0] > 0 and graphs.per_step[-1] == graphs.per_step[0]  # no recompilation
    torch._dynamo.reset()


def student_gradients(tiny_vit, digits, tmp_path, checkpointing: bool) -> dict:
    train, _ = digits
    student = load_vision_model(tiny_vit)
    if checkpointing:
        student.activation_checkpointing_enable()
    trainer = RobustDistillationTrainer(
        model=student, teacher=load_vision_model(tiny_vit),
        args=make_config(tmp_path, patch_layers=[0, -1], attn_layers=[0, -1]), train_dataset=train,
        processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    student.train()
    assert student.is_activation_checkpointing == checkpointing
    trainer.views.seeds.restart()
    trainer.compute_loss(student, a_batch(digits)).backward()
    return {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_keeps_every_losss_gradient(tiny_vit, digits, tmp_path):
    plain = student_gradients(tiny_vit, digits, tmp_path, checkpointing=False)
    checkpointed = student_gradients(tiny_vit, digits, tmp_path, checkpointing=True)
    assert plain.keys() == checkpointed.keys() and any("layers.0.attention.q_proj" in n for n in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6)


def test_reentrant_checkpointing_with_an_attention_loss_is_refused(tiny_vit, digits, tmp_path):
    train, _ = digits
    args = make_config(tmp_path, activation_checkpointing=True,
                       activation_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match='"use_reentrant": false'):
        RobustDistillationTrainer(model=load_vision_model(tiny_vit), teacher=load_vision_model(tiny_vit), args=args,
                                  train_dataset=train, processing_class=AutoImageProcessor.from_pretrained(tiny_vit))


def test_unreached_parameters_are_named():
    model = ViTForImageClassification(ViTConfig(**SMALL, num_labels=3))
    middle = FeatureTaps(model, token_layers=[0], need_cls=False)
    unreached = unreached_parameters(model, middle, (32, 32), reads_logits=False)
    assert any(n.startswith("vit.layers.1.") for n in unreached) and "classifier.weight" in unreached
    assert not any(n.startswith("vit.layers.0.") for n in unreached)
    everything = FeatureTaps(model, token_layers=[0], need_cls=True)
    assert unreached_parameters(model, everything, (32, 32), reads_logits=True) == []
    # The attention map of the last block reads its queries and keys, not its values or MLP.
    attention_only = FeatureTaps(model, attention_layers=[-1], need_cls=False)
    read_attention_maps(model, attention_only.attention_modules, attention_only.attention_layers)
    unreached = unreached_parameters(model, attention_only, (32, 32), reads_logits=False)
    assert "vit.layers.1.attention.v_proj.weight" in unreached
    assert "vit.layers.1.attention.q_proj.weight" not in unreached


def test_several_gpus_in_one_process_are_refused_with_the_launch_line():
    check_one_device_per_process(1)
    with pytest.raises(ValueError, match="accelerate launch --multi_gpu --num_processes 4"):
        check_one_device_per_process(4)


def test_a_standalone_evaluate_prepares_the_student_not_the_teacher(tiny_vit, digits, tmp_path):
    """The teacher is not registered in the Trainer's accelerator, so evaluate() before train() prepares the student."""
    train, eval_set = digits
    student = load_vision_model(tiny_vit)
    trainer = RobustDistillationTrainer(model=student, teacher=load_vision_model(tiny_vit),
                                        args=make_config(tmp_path), train_dataset=train, eval_dataset=eval_set,
                                        processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    assert trainer.accelerator._models == []
    metrics = trainer.evaluate()
    assert "eval_accuracy_clean" in metrics
    assert len(trainer.accelerator._models) == 1 and trainer.accelerator._models[0] is student


def test_the_teacher_runs_in_its_inference_dtype_and_the_losses_in_fp32(tiny_vit, digits, tmp_path):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert inference_dtype("auto", mixed_precision=True, device=cpu) == torch.float32
    assert inference_dtype("auto", mixed_precision=False, device=gpu) == torch.float32
    assert inference_dtype("float16", mixed_precision=False, device=cpu) == torch.float16
    train, _ = digits
    trainer = RobustDistillationTrainer(
        model=load_vision_model(tiny_vit), teacher=load_vision_model(tiny_vit),
        args=make_config(tmp_path, teacher_dtype="bfloat16", max_steps=2), train_dataset=train,
        processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    assert {p.dtype for p in trainer.teacher.model.parameters()} == {torch.bfloat16}
    loss, parts = eval_loss(trainer, a_batch(digits))
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in parts.values())
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)


ARCHITECTURES = {
    "vit": (ViTForImageClassification, ViTConfig(**SMALL), {"ViTLayer"}),
    "deit": (DeiTForImageClassification, DeiTConfig(**SMALL), {"DeiTLayer"}),
    "dinov2": (Dinov2ForImageClassification, Dinov2Config(**SMALL), {"Dinov2Layer"}),
    "clip": (CLIPForImageClassification, CLIPConfig(vision_config=SMALL), {"CLIPEncoderLayer"}),
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_fsdp_wraps_the_students_blocks_only(arch):
    """fsdp.yaml names no class; the trainer hands accelerate the model's blocks (not its
    embeddings, whose patch embeddings accelerate shards on their own; not the text embeddings a
    vision-only CLIP's _no_split_modules names). The launched preparation is in test_launchers.py."""
    config = load_config_from_file("recipes/configs/fsdp.yaml")
    assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_version"] == 2
    assert "fsdp_transformer_layer_cls_to_wrap" not in config.fsdp_config
    model_class, model_config, blocks = ARCHITECTURES[arch]
    model = model_class(model_config)
    names = {cls.__name__ for cls in fsdp_blocks(model)}
    assert names == blocks
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    plugin.transformer_cls_names_to_wrap = sorted(names)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [m for m in model.modules() if policy(m)]
    assert sum(type(m).__name__ in blocks for m in wrapped) == SMALL["num_hidden_layers"]


@pytest.mark.parametrize("stage", [2, 3])
def test_the_deepspeed_configs_parse(stage):
    config = load_config_from_file(f"recipes/configs/deepspeed_zero{stage}.yaml")
    assert config.distributed_type == "DEEPSPEED" and config.deepspeed_config["zero_stage"] == stage
    assert config.mixed_precision == "bf16"
    if stage == 3:
        assert config.deepspeed_config["zero3_save_16bit_model"]  # the final folder gets whole weights
