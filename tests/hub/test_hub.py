import hashlib
import os
import shutil

import pytest
import torch
from huggingface_hub import ModelCard, snapshot_download
from transformers import AutoModelForImageClassification

from tests.conftest import free_port
from tests.local_hub import LocalHub

from hf_robust_distill import DistillationConfig, RobustnessReport, push_robust_student
from hf_robust_distill.hub import PushToHubError, RefusedPush, training_settings, write_student_card

TOKEN = "hf_localtesttoken1234"


def a_report(**overrides) -> RobustnessReport:
    grid = {"gaussian_noise": {1: 0.8, 3: 0.5}, "contrast": {1: 0.9, 3: 0.7}}
    values = dict(model_name="robust-vit", dataset_name="sklearn-digits", num_examples=24, image_size=(32, 32),
                  clean_accuracy=0.95, accuracy=grid, backends={c: "torch" for c in grid}, split="test",
                  natural_shifts={"digits-r": 0.5},
                  baseline={"name": "/tmp/somewhere/teacher", "clean_accuracy": 0.97,
                            "accuracy": {c: {s: a - 0.2 for s, a in r.items()} for c, r in grid.items()}})
    values.update(overrides)
    return RobustnessReport(**values)


def a_student(tiny_vit, folder, report=None, **card) -> str:
    """A training folder: the student's files, its card, and what training leaves beside them."""
    shutil.copytree(tiny_vit, folder)
    torch.save({"secret": TOKEN}, os.path.join(folder, "training_args.bin"))
    os.makedirs(os.path.join(folder, "checkpoint-2"))
    shutil.copy(os.path.join(folder, "model.safetensors"), os.path.join(folder, "checkpoint-2", "model.safetensors"))
    shutil.copytree(tiny_vit, os.path.join(folder, "plain-kd"))
    config = DistillationConfig(output_dir=str(folder), hub_token=TOKEN, report_to="none", use_cpu=True)
    write_student_card(str(folder), report or a_report(), method="multilevel", teacher=os.path.dirname(tiny_vit),
                       train_dataset="sklearn-digits", settings=training_settings(config, "multilevel"),
                       model_name="robust-vit", student_init=tiny_vit, num_train_examples=1347, **card)
    return str(folder)


def digest(folder) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_card_parses_back_with_results_and_holds_no_token_or_path(tiny_vit, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = a_student(tiny_vit, tmp_path / "student", repo_id="tester/robust-vit")
    with open(os.path.join(folder, "README.md")) as f:
        text = f.read()
    assert TOKEN not in text and str(tmp_path) not in text and "/tmp/" not in text
    card = ModelCard(text)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-classification"
    assert card.data.model_name == "robust-vit" and "hf_robust_distill" in card.data.tags
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert results[("sklearn-digits", "Top-1 accuracy (clean)")] == 95.0
    protocol = "model-resolution protocol"  # each corrupted result names how its images were made
    assert results[("sklearn-digits (corrupted)", f"Mean corrupted top-1 accuracy ({protocol})")] == pytest.approx(72.5)
    report = RobustnessReport.load(folder)
    assert results[("sklearn-digits (corrupted)", f"mCE (vs teacher; {protocol})")] == pytest.approx(round(report.mce, 2))
    assert "Protocol: `model-resolution`" in text and "not with published ImageNet-C figures" in text
    assert report.protocol == "model-resolution" and not report.comparable_with_published
    assert results[("digits-r", "Top-1 accuracy")] == 50.0
    for needed in ("AutoModelForImageClassification.from_pretrained(\"tester/robust-vit\")", "robustness.png",
                   "alexis2026distilling", "zhou2023distilling", "| gaussian_noise | 80.0 | 50.0 | 65.0 |",
                   "asymmetric multi-level ViT distillation", "Limitations"):
        assert needed in text
    assert card.data.base_model is None  # a local initialisation is not a Hub id


def test_push_then_download_gives_identical_logits(tiny_vit, tmp_path, local_hub):
    folder = a_student(tiny_vit, tmp_path / "student")
    before = digest(folder)
    info = push_robust_student(folder, "tester/robust-vit")
    assert "tester/robust-vit" in info.commit_url
    assert digest(folder) == before  # the local folder is only read

    downloaded = snapshot_download("tester/robust-vit", cache_dir=str(tmp_path / "hub-cache"))
    assert sorted(os.listdir(downloaded)) == ["README.md", "config.json", "model.safetensors",
                                              "preprocessor_config.json", "robustness.png", "robustness_report.json"]
    with open(os.path.join(downloaded, "README.md")) as f:
        card = f.read()
    assert 'from_pretrained("tester/robust-vit")' in card and "your-username" not in card
    local = AutoModelForImageClassification.from_pretrained(folder).eval()
    remote = AutoModelForImageClassification.from_pretrained(downloaded).eval()
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(local(pixel_values=pixels).logits, remote(pixel_values=pixels).logits)


def test_push_to_an_unreachable_hub_leaves_the_folder_and_says_how_to_retry(tiny_vit, tmp_path, monkeypatch):
    import importlib

    from huggingface_hub import constants

    folder = a_student(tiny_vit, tmp_path / "student")
    before = digest(folder)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    importlib.reload(constants)
    try:
        with pytest.raises(PushToHubError) as error:
            push_robust_student(folder, "tester/robust-vit", token=TOKEN)
    finally:
        monkeypatch.undo()
        importlib.reload(constants)
    message = str(error.value)
    assert f"python -m hf_robust_distill.hub {folder} tester/robust-vit" in message
    assert "local folder is complete and unchanged" in message and TOKEN not in message
    assert digest(folder) == before


def test_a_refused_token_fails_with_the_retry_command(tiny_vit, tmp_path, local_hub):
    folder = a_student(tiny_vit, tmp_path / "student")
    with pytest.raises(PushToHubError, match="retry with"):
        push_robust_student(folder, "tester/robust-vit", token=LocalHub.BAD_TOKEN)
    assert "tester/robust-vit" not in local_hub.repos


def test_an_incomplete_folder_is_refused_before_any_request(tiny_vit, tmp_path, local_hub):
    folder = shutil.copytree(tiny_vit, tmp_path / "no-card")
    with pytest.raises(FileNotFoundError, match="README.md"):
        push_robust_student(str(folder), "tester/robust-vit")
    assert local_hub.requests == []


def test_multilevel_recipe_reports_cards_and_pushes_after_training(tiny_vit, tmp_path, local_hub):
    from tests.conftest import load_recipe

    out = tmp_path / "out"
    results = load_recipe("multilevel").main([
        "--teacher_name_or_path", tiny_vit, "--output_dir", str(out), "--max_train_samples", "16",
        "--max_eval_samples", "16", "--max_steps", "2", "--per_device_train_batch_size", "8", "--use_cpu",
        "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--distortions", "noise:0.3",
        "--kd_weight", "1", "--robustness_corruptions", "gaussian_noise,contrast", "--robustness_severities", "1,3",
        "--corruption_cache_dir", str(tmp_path / "cache"), "--push_to_hub", "--hub_model_id", "tester/ml-student",
        "--force_push",  # two steps from a random ViT: at chance, which the card says at its top
    ])
    for name in ("README.md", "robustness.png", "robustness_report.json", "teacher_robustness_report.json"):
        assert os.path.isfile(out / name)
    with open(out / "README.md") as f:
        card = f.read()
    assert "Warning: this model is at or below chance" in card
    assert "| metric | this model | teacher |" in card  # what distillation bought, beside the teacher's
    assert "| corruption | s1 | s3 | mean | teacher | Δ | CE |" in card
    student, teacher = results["reports"]["student"], results["reports"]["teacher"]
    assert student.baseline == teacher.as_baseline() and student.mce is not None
    # Nothing reached the Hub before the student was trained and saved.
    first_request = min(t for t, _, _ in local_hub.requests)
    assert first_request > os.path.getmtime(out / "model.safetensors")
    pushed = local_hub.repos["tester/ml-student"].files
    for name in ("README.md", "robustness_report.json"):  # the teacher was a local folder: no path leaks
        assert str(tmp_path).encode() not in pushed[name] and tiny_vit.encode() not in pushed[name]
    assert sorted(pushed) == [
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json", "robustness.png",
        "robustness_report.json"]


def test_a_student_at_chance_is_carded_as_such_and_its_push_refused_unless_forced(tiny_vit, tmp_path, local_hub):
    """Today a head that never learned is carded (0.0 %) and pushed as an image classifier."""
    at_chance = a_report(clean_accuracy=0.1, chance_accuracy=0.1)
    folder = a_student(tiny_vit, tmp_path / "student", report=at_chance)
    with open(os.path.join(folder, "README.md")) as f:
        card = f.read()
    assert card.index("Warning: this model is at or below chance") < card.index("## Robustness")
    with pytest.raises(RefusedPush, match="at or below chance.*--force_push"):
        push_robust_student(folder, "tester/at-chance")
    assert local_hub.requests == []
    push_robust_student(folder, "tester/at-chance", force=True)
    assert "tester/at-chance" in local_hub.repos
    learned = a_student(tiny_vit, tmp_path / "learned", report=a_report(chance_accuracy=0.1))
    with open(os.path.join(learned, "README.md")) as f:
        assert "at or below chance" not in f.read()
