"""DeepSpeed ZeRO-3 and ZeRO-2 on two CPU processes (``torchrun``, DeepSpeed's CPU accelerator over
gloo), where DeepSpeed is installed (on a CPU machine ``pip install --no-build-isolation deepspeed``
builds it against the installed torch; on a GPU one ``pip install -e ".[deepspeed]"``). CI installs
only the test extra, so there these are skipped; on a GPU machine the same runs use its GPUs.

What a CPU run proves: DeepSpeed is on and partitions the student (its parameters are ZeRO-3
partitioned ``ds_id`` tensors); the teacher gets its own inference engine under ZeRO-3 and stays
a whole module under ZeRO-2; the run ends with a whole student that plain ``from_pretrained``
loads. What it does not: on a CPU accelerate keeps each DeepSpeed rank a one-process state, so
both ranks see the whole training set and each acts as the main process (so each gets its own
folder here, and only rank 0's holds the gathered weights); the data split is the launcher's,
tested under DDP, and the recipes' end on the main process is tested there too.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import save_tiny_vit

pytest.importorskip("deepspeed")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def deepspeed_config(stage: int) -> dict:
    zero = {"stage": stage}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto",
            "gradient_accumulation_steps": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}


@pytest.mark.parametrize("stage", [3, 2])
def test_deepspeed_distils_and_saves_a_whole_student(tmp_path, stage):
    from transformers import ViTForImageClassification

    teacher = save_tiny_vit(tmp_path / "tiny")
    config = tmp_path / "ds.json"
    config.write_text(json.dumps(deepspeed_config(stage)))
    out = tmp_path / "out"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__, teacher, str(out),
         str(config), str(tmp_path)], env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["deepspeed"] and rank["zero_stage"] == stage and rank["steps"] == 3
        assert rank["student_partitioned"] == (stage == 3)
        assert rank["teacher"] == ("DeepSpeedEngine" if stage == 3 else "ViTForImageClassification")
        assert rank["teacher_partitioned"] == (stage == 3)
    assert ranks[0]["saved_student_whole"]
    student = ViTForImageClassification.from_pretrained(out / "rank0")  # plain, outside DeepSpeed
    initial = ViTForImageClassification.from_pretrained(teacher)
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student.parameters(), initial.parameters()))


def run_rank(teacher_path, out, config_file, record_dir):
    """One torchrun rank: distillation under DeepSpeed, what the models were prepared as, and the
    student read back from the folder rank 0 saved."""
    import torch.distributed as dist
    from transformers import AutoImageProcessor

    from hf_robust_distill import DistillationConfig, RobustDistillationTrainer
    from hf_robust_distill.data import prepare_dataset
    from hf_robust_distill.demo import demo_digits
    from hf_robust_distill.frozen import is_sharded, whole_weights, zero_stage
    from hf_robust_distill.models import load_vision_model

    rank = int(os.environ["RANK"])
    args = DistillationConfig(output_dir=os.path.join(out, f"rank{rank}"), per_device_train_batch_size=4, max_steps=3,
                              logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                              deepspeed=config_file)
    student = load_vision_model(teacher_path)  # after the config: partitioned by zero.Init under ZeRO-3
    with whole_weights():
        teacher = load_vision_model(teacher_path)
    train = prepare_dataset(demo_digits()["train"].select(range(32)), (32, 32))
    trainer = RobustDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=train,
                                        processing_class=AutoImageProcessor.from_pretrained(teacher_path))
    trainer.train()
    trainer.save_model(args.output_dir)
    record = {"deepspeed": trainer.is_deepspeed_enabled, "zero_stage": zero_stage(trainer.accelerator),
              "steps": trainer.state.global_step, "student_partitioned": is_sharded(trainer.model),
              "teacher": type(trainer.teacher).__name__, "teacher_partitioned": is_sharded(trainer.teacher)}
    if rank == 0:
        record["saved_student_whole"] = not is_sharded(trainer.saved_student(args.output_dir))
    assert dist.get_world_size() == 2
    with open(os.path.join(record_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    run_rank(*sys.argv[1:])
