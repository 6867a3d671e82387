"""Two CPU processes over gloo, forked from the test process (``run_in_two_processes``): DDP runs
of both recipes, a teacher sharded with FSDP2, contrastive negatives from both processes, and
whole teacher weights under FSDP's CPU-RAM-efficient loading."""

import hashlib
import json
import os

import pytest
import torch
from accelerate.utils import patch_environment
from torch.distributed.tensor import DTensor

from tests.conftest import load_recipe, run_in_two_processes
from hf_robust_distill.methods import cls_loss
from hf_robust_distill.models import load_vision_model, whole_weights
from hf_robust_distill.methods import gather_rows
from hf_robust_distill.training import check_whole


def digest_of(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_and_write_digest(recipe, recipe_argv, digest_dir):
    results = load_recipe(recipe).main(recipe_argv)
    trainer = results["trainer"]
    model = trainer.accelerator.unwrap_model(trainer.model)
    record = {"world_size": trainer.args.world_size, "steps": trainer.state.global_step, "digest": digest_of(model),
              "ddp": type(trainer.model_wrapped).__name__,
              "teacher_dtensors": all(isinstance(p, DTensor) for p in trainer.teacher.model.parameters()),
              "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
              "reports": {name: {c: {str(s): a for s, a in row.items()} for c, row in report.accuracy.items()}
                          for name, report in results["reports"].items()}}  # every process scored its share
    with open(os.path.join(digest_dir, f"rank{trainer.args.process_index}.json"), "w") as f:
        json.dump(record, f)


def read_ranks(path):
    return [json.loads((path / f"rank{r}.json").read_text()) for r in (0, 1)]


COMMON = ["--max_steps", "3", "--per_device_train_batch_size", "4", "--max_train_samples", "48",
          "--max_eval_samples", "16", "--use_cpu", "--save_strategy", "no", "--report_to", "none",
          "--disable_tqdm", "true", "--logging_steps", "1", "--robustness_corruptions", "contrast",
          "--robustness_severities", "2"]


def test_two_process_ddp_trains_the_multilevel_recipe_to_identical_weights(tiny_vit, tmp_path):
    """DDP (without find_unused_parameters) with InfoNCE negatives gathered from both processes."""
    run_in_two_processes(train_and_write_digest, "multilevel", [
        "--teacher_name_or_path", tiny_vit, "--output_dir", str(tmp_path / "out"), "--cls_loss", "infonce",
        "--distortions", "pixel_mask:0.5-0.9,noise:0.1-0.3", "--corruption_cache_dir", str(tmp_path / "cache"),
        *COMMON], str(tmp_path))
    ranks = read_ranks(tmp_path)
    assert ranks[0]["world_size"] == 2 and ranks[0]["steps"] == 3 and ranks[0]["ddp"] == "DistributedDataParallel"
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert os.path.isfile(tmp_path / "out" / "robustness_report.json")
    assert set(ranks[0]["reports"]) == {"teacher", "student"} and ranks[0]["reports"] == ranks[1]["reports"]


def test_two_process_dad_trains_with_a_sharded_teacher_to_identical_weights(tiny_clip, tiny_vq, tiny_vit, tmp_path):
    """Online DAD under DDP with the CLIP teacher sharded by FSDP2 (its weights are DTensors): PGD
    differentiates through the sharded teacher, and rank 0 reports with a whole copy."""
    run_in_two_processes(train_and_write_digest, "dad", [
        "--teacher_name_or_path", tiny_clip, "--prompt_templates", "short", "--vq_name_or_path", tiny_vq,
        "--student_name_or_path", tiny_vit, "--dad_mode", "online", "--teacher_sharding", "true",
        "--output_dir", str(tmp_path / "out"), "--eval_distortions", "gaussian_noise:3",
        "--corruption_cache_dir", str(tmp_path / "cache"), *COMMON], str(tmp_path))
    ranks = read_ranks(tmp_path)
    assert ranks[0]["world_size"] == 2 and ranks[0]["steps"] == 3
    assert ranks[0]["teacher_dtensors"] and ranks[1]["teacher_dtensors"]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert all(torch.isfinite(torch.tensor(ranks[0]["losses"])))
    assert os.path.isfile(tmp_path / "out" / "README.md")
    assert "DAD student" in ranks[0]["reports"] and ranks[0]["reports"] == ranks[1]["reports"]


def infonce_halves(out_dir):
    rank = torch.distributed.get_rank()
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 16, generator=generator), torch.randn(8, 16, generator=generator)
    mine = slice(0, 3) if rank == 0 else slice(3, 8)  # micro-batches of unequal size
    rows, offset = gather_rows(teacher[mine])
    record = {"rows_equal": bool(torch.equal(rows, teacher)), "offset": offset}
    even = slice(4 * rank, 4 * rank + 4)
    negatives, offset = gather_rows(teacher[even])
    record["loss"] = float(cls_loss(student[even], teacher[even], "infonce", 0.1, negatives, offset))
    record["global_loss"] = float(cls_loss(student, teacher, "infonce", 0.1))
    record["local_loss"] = float(cls_loss(student[even], teacher[even], "infonce", 0.1))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


def test_infonce_negatives_come_from_every_process(tmp_path):
    """Averaged over the processes (as DDP averages gradients), the loss is the global batch's."""
    run_in_two_processes(infonce_halves, str(tmp_path))
    ranks = read_ranks(tmp_path)
    assert ranks[0]["rows_equal"] and ranks[1]["rows_equal"] and [r["offset"] for r in ranks] == [0, 3]
    mean = (ranks[0]["loss"] + ranks[1]["loss"]) / 2
    assert mean == pytest.approx(ranks[0]["global_loss"], rel=1e-6)
    assert (ranks[0]["local_loss"] + ranks[1]["local_loss"]) / 2 != pytest.approx(mean, rel=1e-3)


def load_under_fsdp_efficient_loading(path, out_dir):
    rank = torch.distributed.get_rank()
    with patch_environment(accelerate_use_fsdp="true", fsdp_cpu_ram_efficient_loading="true", local_rank=str(rank)):
        plain = load_vision_model(path, label_names=["a", "b", "c"])  # a new head: keys the checkpoint lacks
        with whole_weights():
            whole = load_vision_model(path, label_names=["a", "b", "c"])
    try:
        check_whole(plain, "teacher")
        refused = ""
    except ValueError as error:
        refused = str(error)
    record = {"plain_meta": any(p.is_meta for p in plain.parameters()),
              "whole_meta": any(p.is_meta for p in whole.parameters()), "refused": refused}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


def test_frozen_models_load_whole_on_every_process_under_fsdp_efficient_loading(tiny_vit, tmp_path):
    """Under FSDP's cpu_ram_efficient_loading transformers leaves the weights it initialises (here a new
    head) on meta on ranks other than 0, for the wrapper to broadcast rank 0's; a frozen model is never
    wrapped, so it is loaded inside whole_weights(), and a meta one is refused by name."""
    run_in_two_processes(load_under_fsdp_efficient_loading, tiny_vit, str(tmp_path))
    ranks = read_ranks(tmp_path)
    assert ranks[0]["plain_meta"] is False and ranks[1]["plain_meta"] is True
    assert "whole_weights()" in ranks[1]["refused"] and ranks[0]["refused"] == ""
    assert not ranks[0]["whole_meta"] and not ranks[1]["whole_meta"]


def train_middle_layer_only(recipe_argv):
    load_recipe("multilevel").main(recipe_argv)


def test_layers_no_loss_reaches_are_named_before_ddp_training(tiny_vit, tmp_path):
    with pytest.raises(Exception, match=r"no loss term reaches .*vit\.layers\.1.*--ddp_find_unused_parameters true"):
        run_in_two_processes(train_middle_layer_only, [
            "--teacher_name_or_path", tiny_vit, "--output_dir", str(tmp_path / "out"), "--patch_layers", "0",
            "--cls_weight", "0", "--attn_weight", "0", "--head_ce_weight", "0",
            "--corruption_cache_dir", str(tmp_path / "cache"), *COMMON])
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")
