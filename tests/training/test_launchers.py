"""Runs under the shipped accelerate configs, through the launchers' own code (``tests/launchers.py``):
FSDP2's preparation of every ViT-family student, DeepSpeed's config processing and finalisation,
batches as DeepSpeed casts them, weight averages, LoRA merges and teacher caches under sharding.
Each test asserts that the mode was really on."""

import json
import os

import pytest
import torch

from tests.conftest import save_tiny_classifier, save_tiny_timm, save_tiny_vit
from tests.launchers import REPO, run_launched

STUDENTS = ("vit", "deit", "dinov2", "clip", "timm")


def records(folder, name):
    return [json.loads((folder / f"{name}.rank{r}.json").read_text()) for r in (0, 1)]


def launched_trainer(teacher_path, student_path, output_dir, callbacks=(), **overrides):
    """A trainer on 32 digits as a recipe builds one in a launched process: the student loaded after
    the arguments (partitioned under ZeRO-3), the teacher with whole weights."""
    from transformers import AutoImageProcessor

    from hf_robust_distill import DistillationConfig, RobustDistillationTrainer
    from hf_robust_distill.data import demo_digits, prepare_dataset
    from hf_robust_distill.models import load_vision_model, whole_weights

    values = dict(output_dir=output_dir, per_device_train_batch_size=4, logging_steps=1, report_to="none",
                  disable_tqdm=True, learning_rate=1e-3, distortions="noise:0.1-0.3", save_strategy="no")
    args = DistillationConfig(**{**values, **overrides})
    with whole_weights():
        teacher = load_vision_model(teacher_path)
    return RobustDistillationTrainer(
        model=load_vision_model(student_path), teacher=teacher, args=args,
        train_dataset=prepare_dataset(demo_digits()["train"].select(range(32)), (32, 32)),
        processing_class=AutoImageProcessor.from_pretrained(student_path), callbacks=list(callbacks))


def fsdp_run(teacher_path, student_path, output_dir, max_steps, resume=None):
    """A narrower student (projections to the teacher's width) distilled under the launched FSDP."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    trainer = launched_trainer(teacher_path, student_path, output_dir, max_steps=max_steps, save_strategy="steps",
                               save_steps=2)
    trainer.train(resume_from_checkpoint=resume)
    model = trainer.model
    units = {}
    for module in model.modules():
        if isinstance(module, FSDPModule):
            name = type(module).__name__.removeprefix("FSDP")
            units[name] = units.get(name, 0) + 1
    return trainer, {
        "fsdp": trainer.is_fsdp_enabled, "steps": trainer.state.global_step, "units": units,
        "sharded": all(isinstance(p, DTensor) for p in model.parameters()),
        "projections": (sorted(trainer.objective.projections.state_dict())
                        if trainer.objective.projections is not None else []),
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "logged_steps": [e["step"] for e in trainer.state.log_history if "loss" in e],
    }


def lora_merge_error(trainer, folder) -> float:
    """How far the merged folder's attention projections lie from base + (alpha / r) B A of the
    trained adapters (gathered from every process), largest over the projections."""
    from transformers import AutoModelForImageClassification

    state = trainer.accelerator.get_state_dict(trainer.deepspeed if trainer.is_deepspeed_enabled else trainer.model)
    if not trainer.args.should_save:
        return 0.0
    from hf_robust_distill.models import whole_weights

    with whole_weights():  # this process alone: no zero.Init under ZeRO-3
        merged = AutoModelForImageClassification.from_pretrained(folder).state_dict()  # plain: no peft
    scale = trainer.args.lora_alpha / trainer.args.lora_r
    errors = []
    for key in [k for k in state if k.endswith("lora_A.default.weight")]:
        prefix = key.removesuffix("lora_A.default.weight")
        base, a, b = (state[prefix + part].float() for part in
                      ("base_layer.weight", "lora_A.default.weight", "lora_B.default.weight"))
        name = prefix.removeprefix("base_model.model.") + "weight"
        errors.append(float((merged[name].float() - (base + scale * b @ a)).abs().max()))
    assert errors and any(float(state[k].abs().max()) > 0 for k in state if "lora_B" in k)  # trained adapters
    return max(errors)


def lora_run(student_path, output_dir):
    """A LoRA student (adapters on q and v) distilled from its own checkpoint, saved merged."""
    trainer = launched_trainer(student_path, student_path, output_dir, max_steps=2, learning_rate=1e-2, lora_r=4,
                               lora_alpha=8)
    trainer.train()
    folder = os.path.join(output_dir, "merged")
    trainer.save_model(folder)
    return trainer, lora_merge_error(trainer, folder)


def distil_each_student_under_fsdp(teacher_path, students, out, record_dir):
    """In one launch, as a recipe with a baseline does: each student trains two steps and saves a
    sharded checkpoint, a second run resumes it for two more, and the final folder is whole."""
    from safetensors.torch import load_file

    rank = int(os.environ["RANK"])
    for arch, student_path in students.items():
        output_dir = os.path.join(out, arch)
        _, first = fsdp_run(teacher_path, student_path, output_dir, 2)
        checkpoint = os.path.join(output_dir, "checkpoint-2")
        saved = load_file(os.path.join(checkpoint, "projections.safetensors"))
        trainer, second = fsdp_run(teacher_path, student_path, output_dir, 4, resume=checkpoint)
        trainer.save_model(os.path.join(output_dir, "final"))
        record = {"first": first, "second": second, "checkpoint": sorted(os.listdir(checkpoint)),
                  "saved_projections": sorted(saved)}
        with open(os.path.join(record_dir, f"{arch}.rank{rank}.json"), "w") as f:
            json.dump(record, f)
    from torch.distributed.tensor import DTensor

    trainer, error = lora_run(students["vit"], os.path.join(out, "lora"))
    record = {"sharded": all(isinstance(p, DTensor) for p in trainer.model.parameters()), "merge_error": error}
    with open(os.path.join(record_dir, f"lora.rank{rank}.json"), "w") as f:
        json.dump(record, f)


BLOCKS = {"vit": "ViTLayer", "deit": "DeiTLayer", "dinov2": "Dinov2Layer", "clip": "CLIPEncoderLayer", "timm": "Block"}


def test_fsdp2_prepares_trains_checkpoints_and_resumes_every_student(tmp_path):
    """accelerate's fsdp2_prepare_model, as fsdp.yaml launches it: the blocks are the sharded units
    (their embeddings are not: accelerate shards the input embeddings on their own), CLIP's
    classifier prepares although transformers gives it no input embeddings, a timm ViT
    (TimmWrapper) is sharded by timm's own blocks, and the five model classes follow one another
    in one process. Checkpoints are sharded and carry the projections.
    A LoRA student's final folder is merged from the gathered shards."""
    from transformers import AutoModelForImageClassification

    teacher = save_tiny_vit(tmp_path / "teacher", hidden_size=64, num_attention_heads=4, intermediate_size=128)
    students = {arch: save_tiny_timm(tmp_path / arch) if arch == "timm" else save_tiny_classifier(tmp_path / arch, arch)
                for arch in STUDENTS}
    run_launched("fsdp", distil_each_student_under_fsdp, teacher, students, str(tmp_path / "out"), str(tmp_path))
    for arch in STUDENTS:
        rank0, rank1 = records(tmp_path, arch)
        for run in (rank0["first"], rank0["second"], rank1["second"]):
            assert run["fsdp"] and run["sharded"]
            assert run["units"][BLOCKS[arch]] == 2
            # the embeddings are no unit (ViTEmbeddings...); accelerate shards the patch embeddings alone
            assert not any(name.endswith("Embeddings") and not name.endswith("PatchEmbeddings") for name in run["units"])
            assert all(torch.isfinite(torch.tensor(run["losses"])))
        assert rank0["first"]["steps"] == 2 and rank0["second"]["steps"] == 4
        assert rank0["second"]["logged_steps"] == [1, 2, 3, 4]  # resumed at step 2: its log goes on
        assert "pytorch_model_fsdp_0" in rank0["checkpoint"] and "projections.safetensors" in rank0["checkpoint"]
        assert rank0["saved_projections"] == rank0["first"]["projections"] != []
        print(arch, rank0["second"]["units"])
        final = tmp_path / "out" / arch / "final"
        student = AutoModelForImageClassification.from_pretrained(final)  # whole, plain, no projections
        initial = AutoModelForImageClassification.from_pretrained(students[arch])
        assert not any("projections" in name for name in student.state_dict())
        assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(),
                                                        initial.state_dict().values()))
    lora = records(tmp_path, "lora")
    assert lora[0]["sharded"] and lora[0]["merge_error"] < 1e-6


# ---- DeepSpeed: the config transformers finalises, for every argument set a run builds -----------

def run_arguments():
    """The TrainingArguments each recipe (as README and the YAMLs' comments launch it) and each
    demo-zoo builder makes, by a name."""
    from tests.conftest import load_recipe
    from hf_robust_distill.cli import demo_clip_arguments, demo_vit_arguments

    multilevel, dad = load_recipe("multilevel"), load_recipe("dad")
    configs = os.path.join(REPO, "recipes", "configs")
    return {
        "multilevel.py (demo)": lambda out: multilevel.parse_args(["--output_dir", out])[3],
        "multilevel.py --config multilevel_vit_base.yaml": lambda out: multilevel.parse_args(
            ["--config", os.path.join(configs, "multilevel_vit_base.yaml"), "--output_dir", out])[3],
        "dad.py (demo)": lambda out: dad.parse_args(["--output_dir", out])[3],
        "dad.py --config dad_vit_base.yaml": lambda out: dad.parse_args(
            ["--config", os.path.join(configs, "dad_vit_base.yaml"), "--output_dir", out])[3],
        "dad.py --dad_objective official": lambda out: dad.parse_args(
            ["--dad_objective", "official", "--output_dir", out])[3],
        "demo zoo ViT": lambda out: demo_vit_arguments(out),
        "demo zoo CLIP": lambda out: demo_clip_arguments(out),
    }


@pytest.mark.parametrize("launcher", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_finalises_every_runs_config(launcher, tmp_path, monkeypatch):
    """transformers' own processing (propagate_args_to_deepspeed) and finalisation (deepspeed_init)
    of the DeepSpeed config accelerate builds from the shipped YAML, with the arguments of every
    recipe and demo builder: the launcher's bf16 and the run's --max_grad_norm agree with them."""
    import transformers.training_args
    from accelerate.state import AcceleratorState
    from accelerate.utils import patch_environment
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    from tests.launchers import launcher_environment

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)  # a GPU's
    model = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=64, image_size=32, patch_size=8))
    try:
        with patch_environment(**launcher_environment(launcher, 8)):
            for name, make in run_arguments().items():
                args = make(str(tmp_path / name.split()[0]))
                assert args.deepspeed_plugin is not None, name  # the launch is DeepSpeed's
                config = HfTrainerDeepSpeedConfig(args.deepspeed_plugin.hf_ds_config.config)
                config.trainer_config_process(args)
                config.trainer_config_finalize(args, model, num_training_steps=100)  # raises on a mismatch
                assert args.bf16 and config.config["bf16"]["enabled"] is True, name
                assert config.config["gradient_clipping"] == args.max_grad_norm, name
    finally:
        unset_hf_deepspeed_config()
        AcceleratorState._reset_state(reset_partial_state=True)


# ---- DeepSpeed ZeRO-2: the weight average of a bf16 module, and bf16 batches through every view ----

def zero2_run(teacher_path, output_dir, stop_at, resume=None):
    """Four steps planned (the schedule of every run alike), stopped after ``stop_at``."""
    from tests.training.test_trainer import StopAt

    trainer = launched_trainer(teacher_path, teacher_path, output_dir, callbacks=[StopAt(stop_at)], max_steps=4,
                               save_strategy="steps", save_steps=2, ema_decay=0.9)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def every_view_on_bf16_batches(trainer, clip_path, vq_path) -> dict:
    """Each view on a batch as DeepSpeed's Trainer casts it (transformers' own _prepare_input)
    against the same pixels in float32: equal, where a bf16 computation differed or failed."""
    from transformers import Trainer

    from tests.conftest import DIGIT_NAMES
    from hf_robust_distill import CLIPZeroShotClassifier, Distorter, VQDiscretizer
    from hf_robust_distill.methods.dad import dad_images
    from hf_robust_distill.views import MixingSettings, mix_batch
    from hf_robust_distill.views.corruptions import CORRUPTIONS

    batch = next(iter(trainer.get_train_dataloader()))
    cast = {k: Trainer._prepare_input(trainer, v) for k, v in batch.items() if k != "bad_images"}
    pixels = cast["pixel_values"]
    views = {f"{name}:3": Distorter(f"{name}:3") for name in CORRUPTIONS}
    views.update({spec: Distorter(spec) for spec in ("noise:0.3", "blur:1-3", "pixel_mask:0.7", "patch_mask:0.5")})
    mixing = MixingSettings(0.8, 1.0)
    views["mixing"] = lambda x, g: mix_batch([x], cast["labels"], 10, mixing, g)[0][0]
    teacher = CLIPZeroShotClassifier.from_clip(clip_path, DIGIT_NAMES, templates="plain")
    vq = VQDiscretizer.from_pretrained(vq_path)
    views["dad"] = lambda x, g: dad_images(teacher, vq, x, cast["labels"], generator=g)
    differences = {}
    for name, view in views.items():
        on_bf16 = view(pixels, torch.Generator().manual_seed(0))
        on_fp32 = view(pixels.float(), torch.Generator().manual_seed(0))
        differences[name] = float((on_bf16.float() - on_fp32.to(torch.bfloat16).float()).abs().max())
    return {"batch_dtype": str(pixels.dtype), "trainer_batch_dtype": str(trainer._prepare_inputs(batch)[
        "pixel_values"].dtype), "differences": differences}


def averages_and_views_under_zero2(teacher_path, clip_path, vq_path, out, record_dir):
    from safetensors.torch import load_file

    rank = int(os.environ["RANK"])
    first = zero2_run(teacher_path, os.path.join(out, "resumed"), 2)
    saved = load_file(os.path.join(out, "resumed", "checkpoint-2", "ema.safetensors"))
    resumed = zero2_run(teacher_path, os.path.join(out, "resumed"), 4,
                        resume=os.path.join(out, "resumed", "checkpoint-2"))
    whole = zero2_run(teacher_path, os.path.join(out, "whole"), 4)
    whole.save_model(os.path.join(out, "whole"))  # the average, whole, as the student
    average, reference = resumed.weight_average.average, whole.weight_average.average
    record = {
        "deepspeed": first.is_deepspeed_enabled and type(first.model_wrapped).__name__ == "DeepSpeedEngine",
        "teacher": type(first.teacher.model).__name__,
        "module_dtypes": sorted({str(p.dtype) for p in first.model.parameters()}),
        "average_dtypes": sorted({str(t.dtype) for t in first.weight_average.average.values()}),
        "saved_average": sorted(saved) == sorted(first.weight_average.average),
        "steps": [first.state.global_step, resumed.state.global_step, whole.state.global_step],
        "resumed_vs_whole": max(float((average[k] - reference[k]).abs().max()) for k in reference),
        "moved": max(float((average[k] - saved[k].to(average[k].device)).abs().max()) for k in saved),
        "weights_resumed_vs_whole": max(float((a.float() - b.float()).abs().max()) for a, b in zip(
            resumed.model.parameters(), whole.model.parameters())),
    }
    record.update(every_view_on_bf16_batches(resumed, clip_path, vq_path))
    with open(os.path.join(record_dir, f"zero2.rank{rank}.json"), "w") as f:
        json.dump(record, f)


def test_zero2_averages_a_bf16_student_resumes_it_and_keeps_views_in_fp32(tmp_path, tiny_clip, tiny_vq):
    """deepspeed_zero2.yaml: the module trains in bf16 and its average in fp32, written beside each
    checkpoint and read back on resume (transformers' DeepSpeed resume skips _load_from_checkpoint):
    the resumed average equals the uninterrupted run's. The batch reaches the trainer in float32,
    and each view given DeepSpeed's bf16 cast computes what it computes in float32."""
    teacher = save_tiny_vit(tmp_path / "vit")
    run_launched("deepspeed_zero2", averages_and_views_under_zero2, teacher, tiny_clip, tiny_vq,
                 str(tmp_path / "out"), str(tmp_path))
    for record in records(tmp_path, "zero2"):
        assert record["deepspeed"] and record["steps"] == [2, 4, 4]
        assert record["module_dtypes"] == ["torch.bfloat16"] and record["average_dtypes"] == ["torch.float32"]
        assert record["saved_average"] and record["moved"] > 0
        assert record["weights_resumed_vs_whole"] == 0 and record["resumed_vs_whole"] < 1e-6
        assert record["teacher"] == "ViTForImageClassification"  # a whole module (ZeRO-2 shards no weights)
        assert record["batch_dtype"] == "torch.bfloat16" and record["trainer_batch_dtype"] == "torch.float32"
        assert {name for name, d in record["differences"].items() if d > 0} == set(), record["differences"]
    from transformers import ViTForImageClassification

    student = ViTForImageClassification.from_pretrained(tmp_path / "out" / "whole")  # plain, outside DeepSpeed
    assert all(torch.isfinite(p).all() for p in student.parameters())


# ---- DeepSpeed ZeRO-3: partitioned students, the sharded teacher's cache, merges, the demo zoo -----

def zero3_distil(teacher_path, output_dir, **overrides):
    trainer = launched_trainer(teacher_path, teacher_path, output_dir, max_steps=3, **overrides)
    trainer.train()
    trainer.save_model(output_dir)
    return trainer


def partitioned_runs_under_zero3(teacher_path, out, record_dir):
    from hf_robust_distill.cli import build_demo_clip
    from hf_robust_distill.training import is_sharded

    rank = int(os.environ["RANK"])
    plain = zero3_distil(teacher_path, os.path.join(out, "plain"))
    cached = zero3_distil(teacher_path, os.path.join(out, "cached"), cache_teacher=True, kd_weight=0.5)
    lora, merge_error = lora_run(teacher_path, os.path.join(out, "lora"))
    clip = build_demo_clip(os.path.join(out, "clip"), epochs=1)
    record = {
        "zero3": plain.is_deepspeed_enabled and plain.accelerator.state.deepspeed_plugin.zero_stage == 3,
        "student_partitioned": is_sharded(plain.model), "teacher": type(plain.teacher.model).__name__,
        "teacher_partitioned": is_sharded(plain.teacher.model), "steps": plain.state.global_step,
        "cache_teacher_sharded": cached.teacher.is_sharded, "cache_rows": len(cached.teacher.cache),
        "cached_steps": cached.state.global_step,
        "cached_losses": [e["loss_kd"] for e in cached.state.log_history if "loss_kd" in e],
        "lora_partitioned": is_sharded(lora.model), "merge_error": merge_error, "clip": clip,
    }
    with open(os.path.join(record_dir, f"zero3.rank{rank}.json"), "w") as f:
        json.dump(record, f)


def test_zero3_partitions_caches_with_the_sharded_teacher_merges_and_saves_whole_models(tmp_path):
    """deepspeed_zero3.yaml: the student partitioned, the teacher its own partitioned inference
    engine (the default); --cache_teacher builds with that sharded teacher on every process in step
    (it used to run on rank 0 alone and hang); a LoRA student merges from gathered weights; the
    demo zoo's CLIP saves whole weights (save_pretrained after partitioning wrote empty tensors)."""
    from transformers import CLIPModel, ViTForImageClassification

    teacher = save_tiny_vit(tmp_path / "vit")
    run_launched("deepspeed_zero3", partitioned_runs_under_zero3, teacher, str(tmp_path / "out"), str(tmp_path),
                 timeout=300)
    for record in records(tmp_path, "zero3"):
        assert record["zero3"] and record["student_partitioned"] and record["steps"] == 3
        assert record["teacher"] == "DeepSpeedEngine" and record["teacher_partitioned"]
        assert record["cache_teacher_sharded"] and record["cache_rows"] == 32 and record["cached_steps"] == 3
        assert len(record["cached_losses"]) == 3 and all(v > 0 for v in record["cached_losses"])
        assert record["lora_partitioned"]
    assert records(tmp_path, "zero3")[0]["merge_error"] < 1e-2  # 16-bit weights, gathered
    student = ViTForImageClassification.from_pretrained(tmp_path / "out" / "plain")  # plain, whole
    initial = ViTForImageClassification.from_pretrained(teacher)
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student.parameters(), initial.parameters()))
    clip = CLIPModel.from_pretrained(tmp_path / "out" / "clip")
    assert all(p.numel() > 0 and torch.isfinite(p).all() for p in clip.parameters())


# ---- DDP: the demo zoo, built by every process of a launch ------------------------------------------

def build_the_demo_teacher(cwd, record_dir):
    """recipes/multilevel.py's demo path under the launch: the zoo's ViT trained by both processes."""
    from accelerate import PartialState

    from tests.conftest import load_recipe

    os.chdir(cwd)  # the zoo lies in ./demo_output/zoo
    multilevel = load_recipe("multilevel")
    script_args, _, _, config = multilevel.parse_args(["--output_dir", "out"])
    multilevel.build_teacher_if_demo(script_args, config)
    record = {"teacher": script_args.teacher_name_or_path, "processes": PartialState().num_processes}
    with open(os.path.join(record_dir, f"zoo.rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(record, f)


def test_the_demo_zoo_trains_under_a_launcher_on_every_process(tmp_path):
    """ddp.yaml with no teacher given: the demo zoo's Trainer runs on both processes together (it
    trained on rank 0 inside main_process_first while rank 1 waited at its barrier: a deadlock)."""
    from transformers import ViTForImageClassification

    run_launched("ddp", build_the_demo_teacher, str(tmp_path), str(tmp_path), timeout=240)
    ranks = records(tmp_path, "zoo")
    assert ranks[0]["processes"] == 2 and ranks[0]["teacher"] == ranks[1]["teacher"]
    teacher = ViTForImageClassification.from_pretrained(ranks[0]["teacher"])
    assert all(torch.isfinite(p).all() for p in teacher.parameters())
