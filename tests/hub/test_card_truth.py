"""The card's numbers are the user's numbers: the saved processor is the one evaluation used, and
plain ``pipeline("image-classification")`` on the saved student reproduces the card's clean
accuracy exactly; no token and no local path reaches a file the package writes."""

import json
import os

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoImageProcessor, BitImageProcessor, pipeline

from tests.conftest import load_recipe, pipeline_accuracy, recipe_argv, save_tiny_vit, write_photo_folder
from hf_robust_distill.data import load_image_dataset

TOKEN = "hf_secrettesttoken987654321"


@pytest.fixture(scope="module")
def cropping_vit(tmp_path_factory) -> str:
    """The tiny ViT with a processor that resizes the shortest edge (bicubic) and centre-crops, as
    Dinov2's and ConvNeXt's do: squashing the whole image to 32 px would see other pixels."""
    path = save_tiny_vit(tmp_path_factory.mktemp("cropping-vit"), seed=1)
    BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, resample=Image.BICUBIC,
                      image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trained(cropping_vit, tmp_path_factory):
    root = tmp_path_factory.mktemp("card-truth")
    folder = write_photo_folder(root / "photos", per_class=(12, 10), classes=("cat", "coffee", "rocket"), seed=3)
    out = root / "out"
    results = load_recipe("multilevel").main(recipe_argv(
        cropping_vit, out, root / "cache", "--dataset_name", folder, "--max_steps", "24", "--save_strategy", "steps",
        "--save_steps", "12", "--hub_token", TOKEN, "--ce_weight", "1", "--learning_rate", "2e-3"))
    return folder, out, results


def test_pipeline_on_the_saved_student_gets_the_cards_clean_accuracy_exactly(trained, cropping_vit):
    """Today training and evaluation squash-resize with bicubic while the saved processor says
    otherwise: the demo DAD student's card said 85.6 %, the pipeline gave 84.4 %."""
    folder, out, results = trained
    saved = AutoImageProcessor.from_pretrained(str(out)).to_dict()
    original = AutoImageProcessor.from_pretrained(cropping_vit).to_dict()
    assert {k: saved[k] for k in ("resample", "size", "crop_size", "do_center_crop")} == \
        {k: original[k] for k in ("resample", "size", "crop_size", "do_center_crop")}

    accuracy, predictions = pipeline_accuracy(str(out), folder)

    report = json.loads((out / "robustness_report.json").read_text())
    assert report["clean_accuracy"] == accuracy > report["chance_accuracy"] and len(set(predictions)) > 1
    card = ModelCard.load(str(out / "README.md"))
    clean = [r.metric_value for r in card.data.eval_results if r.metric_name == "Top-1 accuracy (clean)"]
    assert clean == [round(100 * accuracy, 2)]


def test_the_pipeline_sees_the_pixels_evaluation_saw(trained):
    """Per image, the pipeline's class probabilities equal those of the evaluated student."""
    folder, out, results = trained
    from hf_robust_distill.data import collate_images, prepare_dataset
    from hf_robust_distill.models import PixelPreprocessor

    processor = AutoImageProcessor.from_pretrained(str(out))
    test = load_image_dataset(folder)["test"]
    batch = collate_images([prepare_dataset(test, processor)[i] for i in range(6)])
    student = results["trainer"].model.eval()
    with torch.no_grad():
        ours = student(pixel_values=PixelPreprocessor.from_image_processor(processor)(batch["pixel_values"]))
    ours = ours.logits.softmax(-1)
    classify = pipeline("image-classification", model=str(out), device="cpu")
    for i, row in enumerate(test.cast_column("image", test.features["image"].__class__(decode=False)).select(range(6))):
        scores = {s["label"]: s["score"] for s in classify(row["image"]["path"], top_k=None)}
        theirs = torch.tensor([scores[student.config.id2label[c]] for c in range(ours.shape[1])])
        torch.testing.assert_close(theirs, ours[i], atol=1e-5, rtol=1e-4)


def test_no_token_in_any_file_the_run_wrote(trained):
    """Today training_args.bin, beside the weights and in every checkpoint, holds --hub_token."""
    _, out, _ = trained
    written = [os.path.join(root, name) for root, _, names in os.walk(out) for name in names]
    assert any(name.endswith("training_args.bin") for name in written)
    for path in written:
        with open(path, "rb") as f:
            assert TOKEN.encode() not in f.read(), path
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType
    from transformers.trainer_pt_utils import AcceleratorConfig
    from transformers.trainer_utils import HubStrategy, IntervalStrategy, SaveStrategy, SchedulerType
    from transformers.training_args import OptimizerNames

    from hf_robust_distill import DistillationConfig

    allowed = [DistillationConfig, IntervalStrategy, SaveStrategy, PartialState, AcceleratorConfig, OptimizerNames,
               SchedulerType, HubStrategy, DistributedType]  # what Trainer pickles into training_args.bin
    with torch.serialization.safe_globals(allowed):
        args = torch.load(out / "training_args.bin", weights_only=True)
    assert args.hub_token is None and args.learning_rate > 0


def test_evaluate_recipe_names_local_models_by_folder_only(cropping_vit, tmp_path):
    """Today recipes/evaluate_robustness.py writes absolute paths into its report and plot title."""
    from hf_robust_distill.data import demo_digits

    data = str(tmp_path / "my-digits")
    demo_digits()["test"].select(range(16)).save_to_disk(data)
    out = tmp_path / "report"
    report = load_recipe("evaluate_robustness").main([
        "--model_name_or_path", cropping_vit, "--dataset_name", data, "--output_dir", str(out),
        "--robustness_corruptions", "gaussian_noise", "--robustness_severities", "2", "--robustness_baseline", "none",
        "--corruption_cache_dir", str(tmp_path / "cache"), "--device", "cpu", "--max_bad_image_fraction", "0"])
    text = (out / "robustness_report.json").read_text()
    assert report.model_name == os.path.basename(cropping_vit) and report.dataset_name == "my-digits"
    assert os.path.dirname(cropping_vit) not in text and str(tmp_path) not in text
