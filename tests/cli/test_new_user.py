"""What a new user hit trying the recipes as README shows them, with tiny models: each is now a
problem named before the first step (or a run that leaves nothing half-written behind)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import load_recipe, recipe_argv
from tests.cli.test_preflight import problems_of
from hf_robust_distill import DistillationConfig
from hf_robust_distill.cli import run_recipe
from hf_robust_distill.utils import PreflightError


def multilevel_problems(tiny_vit, tmp_path, *extra, dataset=None, output_dir=None) -> dict[str, str]:
    argv = recipe_argv(tiny_vit, output_dir or tmp_path / "out", tmp_path / "cache", "--max_train_samples", "16",
                       "--max_eval_samples", "8", *extra)
    if dataset is not None:
        argv += ["--dataset_name", str(dataset)]
    with pytest.raises(PreflightError) as error:
        load_recipe("multilevel").main(argv)
    return problems_of(error)


def write_16_bit_folder(root) -> str:
    """An imagefolder of 16-bit greyscale PNGs using the whole 16-bit range, three classes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 3)):
        for label in ("a", "b", "c"):
            os.makedirs(root / split / label, exist_ok=True)
            for i in range(count):
                values = (rng.random((24, 24)) * 60000).astype(np.uint16)
                Image.fromarray(values).save(root / split / label / f"{i}.png")
    return str(root)


def test_16_bit_greyscale_the_pipeline_would_clip_is_refused_before_training(tiny_vit, tmp_path):
    """The card said 100% clean accuracy where pipeline("image-classification") got 33% on the same
    files: transformers' load_image clips 16-bit values to white. Such data is now refused, named."""
    found = multilevel_problems(tiny_vit, tmp_path, dataset=write_16_bit_folder(tmp_path / "grey16"))
    message = found["--eval_split"]
    assert "8 of the 8 images of the evaluation split do not decode" in message
    assert "16-bit greyscale with values from" in message and "clips to 0-255" in message
    assert not os.path.exists(tmp_path / "out")


def test_an_output_dir_that_is_a_file_or_under_one_is_named(tiny_vit, tmp_path):
    existing = tmp_path / "a_file"
    existing.write_text("not a folder")
    assert "is a file: give a folder" in multilevel_problems(tiny_vit, tmp_path, output_dir=existing)["--output_dir"]
    under = existing / "out"
    assert "cannot be made" in multilevel_problems(tiny_vit, tmp_path, output_dir=under)["--output_dir"]


def test_a_vq_input_range_contradicting_the_saved_one_is_named(tiny_clip, tiny_vq, tiny_vit, tmp_path):
    with pytest.raises(PreflightError) as error:
        load_recipe("dad").main(recipe_argv(tiny_clip, tmp_path / "out", tmp_path / "cache", "--vq_name_or_path",
                                            tiny_vq, "--vq_input_range", "[0,1]", "--student_name_or_path", tiny_vit,
                                            "--prompt_templates", "short"))
    message = problems_of(error)["--vq_name_or_path"]
    assert "--vq_input_range [0,1] contradicts the [-1,1] saved with the VQ model" in message


def test_a_distortion_problem_names_its_flag(tiny_vit, tmp_path):
    found = multilevel_problems(tiny_vit, tmp_path, "--distortions", "nosie:0.1,gaussian_noise:6")
    assert "did you mean 'noise'" in found["--distortions"]
    assert not any(where.startswith("flags of") for where in found)


def test_the_plain_kd_baseline_trains_beside_the_official_objective(tiny_clip, tiny_vq, tiny_vit, tmp_path):
    """It trained the DAD student for the whole run, then stopped on the baseline's config."""
    results = load_recipe("dad").main(recipe_argv(
        tiny_clip, tmp_path / "out", tmp_path / "cache", "--vq_name_or_path", tiny_vq, "--student_name_or_path",
        tiny_vit, "--prompt_templates", "short", "--dad_objective", "official", "--plain_kd_baseline", "true",
        "--dad_mode", "online", "--max_train_samples", "16", "--max_eval_samples", "8", "--max_steps", "1",
        "--eval_distortions", "gaussian_noise:3"))
    baseline = results["baseline"].args
    assert baseline.dad_mode == "none" and baseline.dad_objective == "separate"
    assert (baseline.ce_weight, baseline.kd_weight) == (0.75, 0.25)  # the official objective's, on clean images
    assert os.path.isfile(tmp_path / "out" / "plain-kd" / "README.md")


def test_zero_epochs_are_refused(tiny_vit, tmp_path):
    found = multilevel_problems(tiny_vit, tmp_path, "--num_train_epochs", "0", "--max_steps", "-1")
    assert "trains nothing" in found["--num_train_epochs / --max_steps"]


def test_a_run_stopped_inside_training_leaves_no_empty_output_dir(tiny_vit, tmp_path):
    """Too many bad training images stop the run at its first steps; the folder it made is gone."""
    from tests.conftest import truncate, write_photo_folder
    from hf_robust_distill.cli import run_recipe
    from hf_robust_distill.data import TooManyBadImages

    folder = write_photo_folder(tmp_path / "photos", per_class=(8, 4))
    for name in sorted(os.listdir(os.path.join(folder, "train", "cat")))[:6]:
        truncate(os.path.join(folder, "train", "cat", name))
    out = tmp_path / "out"
    argv = recipe_argv(tiny_vit, out, tmp_path / "cache", "--dataset_name", folder, "--max_bad_image_fraction", "0.05")
    with pytest.raises(TooManyBadImages):
        run_recipe(lambda: load_recipe("multilevel").main(argv))
    assert not os.path.exists(out)


def test_one_class_folder_is_named_as_such(tiny_clip, tiny_vq, tiny_vit, tmp_path):
    from tests.conftest import write_photo_folder

    folder = write_photo_folder(tmp_path / "one", classes=("cat",))
    with pytest.raises(PreflightError) as error:
        load_recipe("dad").main(recipe_argv(tiny_clip, tmp_path / "out", tmp_path / "cache", "--vq_name_or_path",
                                            tiny_vq, "--student_name_or_path", tiny_vit, "--dataset_name", folder,
                                            "--prompt_templates", "short"))
    message = problems_of(error)["--dataset_name"]
    assert "one class folder" in message and os.path.join("train", "cat") in message


def test_resuming_from_another_models_checkpoint_is_named(tiny_vit, tmp_path):
    from tests.conftest import save_tiny_vit

    other = tmp_path / "out" / "checkpoint-2"
    save_tiny_vit(other, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    found = multilevel_problems(tiny_vit, tmp_path, "--resume_from_checkpoint", str(other))
    message = found["--resume_from_checkpoint"]
    assert "holds another model than this run's student (hidden_size 64 there, 32 here" in message


def test_bf16_on_a_machine_without_it_is_one_problem_among_the_others(tmp_path):
    """README's first command on a CPU printed only transformers' bf16 refusal, under "flags of
    DistillationConfig"; the missing teacher and data came to light one run later."""
    assert not torch.cuda.is_available()
    with pytest.raises(PreflightError) as error:
        load_recipe("multilevel").main(["--teacher_name_or_path", str(tmp_path / "no-teacher"), "--dataset_name",
                                        str(tmp_path / "no-data"), "--bf16", "--output_dir", str(tmp_path / "out")])
    found = problems_of(error)
    assert "drop --bf16, or add --use_cpu" in found["--bf16"]
    assert "no-teacher" in found["--teacher_name_or_path"] and "no-data" in found["--dataset_name"]
    assert not any("flags of" in where for where in found)
    with pytest.raises(PreflightError, match="--bf16: this machine has no GPU with bf16"):
        DistillationConfig(output_dir=str(tmp_path / "out"), bf16=True)  # in Python too, named


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_a_launchs_problems_are_printed_once(monkeypatch, capsys, rank, printed):
    """Under ddp.yaml every one of the 8 processes printed the list."""
    monkeypatch.setenv("RANK", rank)

    def main():
        raise PreflightError([("--bf16", "this machine has no GPU with bf16")])

    with pytest.raises(SystemExit) as exited:
        run_recipe(main)
    assert exited.value.code == 2
    assert ("1 problem found before training" in capsys.readouterr().err) == printed
