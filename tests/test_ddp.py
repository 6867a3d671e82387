import hashlib
import os

from .conftest import load_recipe, run_in_two_processes


def train_and_write_digest(recipe_argv, digest_dir):
    trainer = load_recipe("multilevel").main(recipe_argv)["trainer"]
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    with open(os.path.join(digest_dir, f"rank{trainer.args.process_index}.txt"), "w") as f:
        f.write(f"{trainer.args.world_size} {trainer.state.global_step} {digest.hexdigest()}")


def test_two_process_ddp_trains_the_recipe_to_identical_weights(tiny_vit, tmp_path):
    """Two CPU processes over gloo: the recipe trains under DDP and both ranks end with equal weights."""
    run_in_two_processes(train_and_write_digest, [
        "--teacher_name_or_path", tiny_vit, "--output_dir", str(tmp_path / "out"), "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--max_train_samples", "48", "--max_eval_samples", "16",
        "--distortions", "pixel_mask:0.5-0.9,noise:0.1-0.3", "--use_cpu", "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1",
    ], str(tmp_path))
    digests = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert digests[0][:2] == ["2", "3"], digests  # world size 2, 3 optimizer steps
    assert digests[0] == digests[1]
