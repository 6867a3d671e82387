"""recipes/evaluate_robustness.py asks only for what an evaluation uses: one labelled split (no
training split), a baseline only where one is published, and messages that speak of evaluation."""

import pytest
from datasets import DatasetDict

from hf_robust_distill.cli import RobustnessArguments
from hf_robust_distill.cli.evaluate import EvaluateArguments, EvaluationRun, mce_baseline
from hf_robust_distill.cli.recipe_data import RecipeData
from hf_robust_distill.data import demo_digits
from hf_robust_distill.data.imagenet_classes import imagenet_classes
from hf_robust_distill.evaluation import RobustnessReport
from hf_robust_distill.utils import PreflightError
from tests.conftest import load_recipe


@pytest.mark.parametrize("split", ["test", "validation"])
def test_a_dataset_with_only_an_evaluation_split_is_scored_without_mce_off_imagenet(tiny_vit, tmp_path, split):
    data = tmp_path / "only-eval"
    DatasetDict({split: demo_digits()["test"].select(range(24))}).save_to_disk(str(data))
    report = load_recipe("evaluate_robustness").main([
        "--model_name_or_path", tiny_vit, "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
        "--robustness_corruptions", "gaussian_noise", "--robustness_severities", "1",
        "--corruption_cache_dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert report.num_examples == 24 and report.split == split and report.split_seed is None  # the split it chose
    assert report.mce is None and report.baseline is None  # digits: no published baseline, so no mCE
    assert 0 <= report.clean_accuracy <= 1
    assert set(report.calibration["corrupted"]) == {"gaussian_noise"} and 1 in report.calibration["corrupted"][
        "gaussian_noise"]
    assert 0 <= report.clean_ece <= 1 and report.calibration["clean"]["nll"] > 0


def test_several_splits_none_of_them_an_evaluation_split_are_named_and_problems_speak_of_evaluation(
        tiny_vit, tmp_path):
    digits = demo_digits()["test"].select(range(8))
    data = tmp_path / "two-splits"
    DatasetDict({"first": digits, "second": digits}).save_to_disk(str(data))
    with pytest.raises(PreflightError) as error:
        load_recipe("evaluate_robustness").main([
            "--model_name_or_path", tiny_vit, "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
            "--robustness_baseline", "teacher"])
    message = str(error.value)
    assert "before evaluation (nothing was evaluated or written)" in message and "training" not in message
    assert "--eval_split" in message and "['first', 'second']" in message
    assert "an evaluation has no teacher" in message


def test_the_automatic_baseline_is_alexnet_on_imagenet_classes_only(tmp_path):
    def baseline(names, choice="auto", report=None):
        run = EvaluationRun(EvaluateArguments(baseline_report=report), None, RobustnessArguments(robustness_baseline=choice),
                            RecipeData(None, None, "image", "label", names), processor=None)
        return mce_baseline(run)

    imagenet = [row[1] for row in imagenet_classes()]
    assert baseline(imagenet) == "alexnet"
    assert baseline([str(i) for i in range(10)]) is None
    assert baseline([str(i) for i in range(10)], choice="alexnet") == "alexnet"
    assert baseline(imagenet, choice="none") is None


CORRUPTED = ["--robustness_corruptions", "gaussian_noise,contrast", "--robustness_severities", "1,3"]


@pytest.mark.parametrize("only_train", [False, True], ids=["demo-digits", "only-a-train-split"])
def test_evaluating_a_trained_student_scores_the_images_its_card_reports(tiny_vit, tmp_path, only_train):
    """The evaluation recipe drew its held-out images with its corruption seed (0) where training drew
    them with 42: the demo student's card said 83.1 and the evaluation 81.3, partly on training images."""
    from tests.conftest import recipe_argv, save_image_dataset

    data = []
    if only_train:
        digits = demo_digits()["train"].select(range(60))
        data = ["--dataset_name", save_image_dataset(tmp_path / "data", {
            "train": (digits["image"], digits["label"], digits.features["label"])})]
    student = tmp_path / "student"
    load_recipe("multilevel").main(recipe_argv(tiny_vit, student, tmp_path / "cache", "--max_eval_samples", "40",
                                               "--force_push", *data))
    carded = RobustnessReport.load(str(student))
    evaluated = load_recipe("evaluate_robustness").main([
        "--model_name_or_path", str(student), "--output_dir", str(tmp_path / "eval"), "--max_eval_samples", "40",
        "--corruption_cache_dir", str(tmp_path / "cache"), "--device", "cpu", *CORRUPTED, *data])
    assert evaluated.images_digest == carded.images_digest is not None
    assert (evaluated.split, evaluated.held_out_fraction, evaluated.split_seed) == (
        carded.split, carded.held_out_fraction, carded.split_seed)
    assert evaluated.split_seed == 42 and (evaluated.held_out_fraction == 0.1) == only_train
    assert evaluated.clean_accuracy == carded.clean_accuracy and evaluated.accuracy == carded.accuracy
    card = (student / "README.md").read_text()
    assert carded.split_description in card and "split seed 42" in card
    # The teacher's report as the baseline of an evaluation of other images: refused before any work.
    with pytest.raises(PreflightError) as error:
        load_recipe("evaluate_robustness").main([
            "--model_name_or_path", str(student), "--output_dir", str(tmp_path / "other"), "--split_seed", "7",
            "--baseline_report", str(student / "teacher_robustness_report.json"), "--max_eval_samples", "40",
            "--corruption_cache_dir", str(tmp_path / "cache"), "--device", "cpu", *CORRUPTED, *data])
    assert "other evaluation images" in str(error.value) and not (tmp_path / "other").exists()
