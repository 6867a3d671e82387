import os
import subprocess
import sys

from .conftest import free_port


def test_two_process_ddp_trains_the_recipe_to_identical_weights(tiny_vit, tmp_path):
    """torchrun, two CPU processes over gloo: the recipe trains and both ranks end equal."""
    here = os.path.dirname(__file__)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), os.path.join(here, "ddp_recipe_run.py"), str(tmp_path),
        "--teacher_name_or_path", tiny_vit, "--output_dir", str(tmp_path / "out"), "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--max_train_samples", "48", "--max_eval_samples", "16",
        "--distortions", "pixel_mask:0.5-0.9,noise:0.1-0.3", "--use_cpu", "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    digests = [open(tmp_path / f"rank{r}.txt").read().split() for r in (0, 1)]
    assert digests[0][:2] == ["2", "3"], digests  # world size 2, 3 optimizer steps
    assert digests[0] == digests[1]
