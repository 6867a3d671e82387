import json
import os

import pytest

from tests.conftest import load_recipe


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_dad_recipe_trains_and_prints_the_table(tiny_clip, tiny_vq, tiny_vit, tmp_path, mode):
    recipe = load_recipe("dad")
    out = tmp_path / "out"
    results = recipe.main([
        "--teacher_name_or_path", tiny_clip, "--prompt_templates", "short", "--vq_name_or_path", tiny_vq,
        "--student_name_or_path", tiny_vit, *(["--dad_mode", mode] if mode == "online" else []),  # offline: default
        "--output_dir", str(out),
        "--max_train_samples", "16", "--max_eval_samples", "16", "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--generation_batch_size", "8", "--use_cpu",
        "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "1",
        "--eval_distortions", "gaussian_noise:3", "--plain_kd_baseline", "--robustness_corruptions",
        "gaussian_noise,contrast", "--robustness_severities", "2", "--corruption_cache_dir", str(tmp_path / "cache"),
    ])
    table = results["table"]
    assert list(table) == ["teacher", "plain-KD student", "DAD student"]
    assert all(set(row) == {"clean", "gaussian_noise:3"} for row in table.values())
    with open(out / "distortion_accuracy.json") as f:
        assert json.load(f) == table
    logs = [e for e in results["trainer"].state.log_history if "loss" in e]
    assert logs and "loss_kd_dad" in logs[-1]
    assert "loss_kd_dad" not in [e for e in results["baseline"].state.log_history if "loss" in e][-1]
    assert os.path.isfile(out / "model.safetensors") and os.path.isfile(out / "plain-kd" / "model.safetensors")
    for folder in (out, out / "plain-kd"):  # each student gets its report, plot and card
        assert {"README.md", "robustness.png", "robustness_report.json"} <= set(os.listdir(folder))
    reports = results["reports"]
    assert reports["DAD student"].baseline == reports["teacher"].as_baseline()
    with open(out / "plain-kd" / "README.md") as f:
        assert "knowledge distillation" in f.read()
    if mode == "offline":
        assert results["trainer"].teacher.model is None  # the stored logits stood in for the teacher
        assert os.path.isfile(out / "dad-dataset" / "dad_generation.json")


def test_offline_dad_recipe_trains_from_a_generated_folder(tiny_clip, tiny_vq, tiny_vit, tmp_path):
    """The documented flow: generate once, then train from the folder with --dad_dataset."""
    recipe = load_recipe("dad")
    common = ["--teacher_name_or_path", tiny_clip, "--prompt_templates", "short", "--vq_name_or_path", tiny_vq,
              "--student_name_or_path", tiny_vit, "--dad_mode", "offline", "--max_train_samples", "16",
              "--max_eval_samples", "16", "--max_steps", "2", "--per_device_train_batch_size", "8",
              "--generation_batch_size", "8", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
              "--disable_tqdm", "true", "--eval_distortions", "gaussian_noise:3", "--robustness_corruptions",
              "contrast", "--robustness_severities", "2", "--corruption_cache_dir", str(tmp_path / "cache"),
              "--force_push"]
    generated = tmp_path / "first" / "dad-dataset"
    only = recipe.main([*common, "--output_dir", str(tmp_path / "first"), "--generate_only"])  # the first command
    assert set(only) == {"train_set"} and os.path.isfile(generated / "dad_generation.json")
    assert not os.path.exists(tmp_path / "first" / "model.safetensors")  # generated, nothing trained
    shards = {name: os.path.getmtime(generated / "data" / name) for name in os.listdir(generated / "data")}
    first = recipe.main([*common, "--output_dir", str(tmp_path / "first")])  # the second: trains from them
    assert {name: os.path.getmtime(generated / "data" / name) for name in shards} == shards  # read back, not rewritten
    assert os.path.isfile(tmp_path / "first" / "model.safetensors")
    second = recipe.main([*common, "--output_dir", str(tmp_path / "second"), "--dad_dataset", str(generated)])
    assert not os.path.exists(tmp_path / "second" / "dad-dataset")  # read, not generated again
    assert second["trainer"].teacher.model is None  # the stored logits stood in for the teacher
    assert second["table"]["DAD student"] == first["table"]["DAD student"]  # the same images, the same run


@pytest.mark.parametrize("recipe_name, config_file", [("multilevel", "multilevel_vit_base.yaml"),
                                                      ("dad", "dad_vit_base.yaml")])
def test_shipped_yaml_recipes_parse_without_a_problem(recipe_name, config_file):
    """Every key of the shipped recipes is a flag of their recipe (a typo would now stop the run)."""
    from hf_robust_distill.utils import Problems

    problems = Problems()
    path = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "configs", config_file)
    *_, config = load_recipe(recipe_name).parse_args(["--config", path, "--use_cpu"], problems)  # bf16 needs a GPU
    assert not problems.found and config.bf16 and config.learning_rate > 0


def test_the_dad_recipe_generates_offline_by_default_and_reads_the_official_objective():
    from hf_robust_distill.utils import Problems

    recipe = load_recipe("dad")
    *_, demo = recipe.parse_args(["--use_cpu"], Problems())  # the embedded demo's settings
    assert demo.dad_mode == "offline" and demo.dad_objective == "separate"
    assert (demo.ce_weight, demo.kd_weight, demo.dad_kd_weight) == (1.0, 0.5, 0.5)  # the demo's own
    *_, official = recipe.parse_args(["--use_cpu", "--dad_objective", "official"], Problems())
    assert official.dad_mode == "offline" and official.dad_objective == "official"
    assert (official.ce_weight, official.kd_weight, official.dad_kd_weight, official.dad_ce_weight) == (0.75, 0.25, 0, 0)
    *_, online = recipe.parse_args(["--use_cpu", "--dad_mode", "online"], Problems())
    assert online.dad_mode == "online"
    *_, method = recipe.parse_args(["--use_cpu", "--teacher_name_or_path", "any/teacher"], Problems())
    # the method's defaults, off the demo: benchmarks/dad_defaults.py's winners, quoted in docs/flags.md
    assert (method.learning_rate, method.ce_weight, method.kd_weight, method.dad_kd_weight) == (2e-3, 0.5, 0.5, 0.5)
    assert (method.attack_settings().eps, method.attack_settings(offline=True).step_size) == (0.1, 0.01)  # official
    configs = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "configs")
    *_, paper = recipe.parse_args(["--config", os.path.join(configs, "dad_vit_base.yaml"), "--use_cpu"], Problems())
    assert (paper.learning_rate, paper.attack_settings().eps, paper.attack_settings().step_size) == (1e-4, 0.1, 0.01)
