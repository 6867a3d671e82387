import math
import os
import sys

import evaluate
import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import ClassLabel, Dataset
from transformers import AutoImageProcessor, ViTForImageClassification

from tests.conftest import save_tiny_vit

from hf_robust_distill import RobustnessReport, corrupt, evaluate_robustness
from hf_robust_distill.data import demo_digits, prepare_dataset
from hf_robust_distill.evaluation import NaturalShift, to_uint8
from hf_robust_distill.metrics.corruption_robustness import corruption_robustness as metric_module
from hf_robust_distill.metrics.corruption_robustness.corruption_robustness import (ALEXNET_ERRORS,
                                                                                   IMAGENET_C_CORRUPTIONS, summarize)
from hf_robust_distill.views.corruptions import CORRUPTIONS

METRIC_PATH = os.path.dirname(metric_module.__file__)


@pytest.fixture(scope="module")
def eval_digits():
    return demo_digits()["test"].select(range(24))


@pytest.fixture(scope="module")
def vit(tiny_vit):
    return ViTForImageClassification.from_pretrained(tiny_vit).eval()


def hand_accuracy(model, processor, pixels: torch.Tensor, labels: torch.Tensor, subset=None) -> float:
    """Top-1 accuracy the long way: the processor's mean and std by hand, one image at a time."""
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    correct = 0
    with torch.no_grad():
        for image, label in zip(pixels, labels):
            logits = model(pixel_values=((image - mean) / std)[None]).logits[0]
            if subset is not None:
                logits = logits[list(subset)]
            correct += int(logits.argmax().item() == label)
    return correct / len(labels)


def test_report_equals_a_hand_computation(tiny_vit, vit, eval_digits, tmp_path):
    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    report = evaluate_robustness(vit, eval_digits, ["gaussian_noise", "contrast"], severities=(1, 4), batch_size=8,
                                 seed=3, cache_dir=str(tmp_path), progress=False)

    prepared = prepare_dataset(eval_digits, processor)  # decoded as the model's own processor decodes
    clean = torch.stack([prepared[i]["pixel_values"] for i in range(len(prepared))])
    labels = torch.tensor(eval_digits["label"])
    assert report.clean_accuracy == pytest.approx(hand_accuracy(vit, processor, clean, labels))
    for corruption in ["gaussian_noise", "contrast"]:
        for severity in (1, 4):
            # The documented draws: a CPU generator per batch of 8, seeded by (seed, corruption, severity, batch).
            index = CORRUPTIONS.index(corruption)
            batches = []
            for b in range(3):
                seed = int(np.random.SeedSequence([3, index, severity, b]).generate_state(1)[0])
                batches.append(corrupt(clean[8 * b : 8 * b + 8], corruption, severity, torch.Generator().manual_seed(seed)))
            corrupted = to_uint8(torch.cat(batches)).float() / 255
            expected = hand_accuracy(vit, processor, corrupted, labels)
            assert report.accuracy[corruption][severity] == pytest.approx(expected)
    cells = [a for row in report.accuracy.values() for a in row.values()]
    assert report.mean_corrupted_accuracy == pytest.approx(sum(cells) / 4)
    assert report.mce is None and report.backends == {"gaussian_noise": "torch", "contrast": "torch"}
    assert report.num_examples == 24 and report.image_size == (32, 32)


def test_mce_and_relative_mce_on_known_inputs():
    # A model exactly as bad as AlexNet on every corruption has mCE 100.
    alexnet_like = {c: {s: 1 - e for s in range(1, 6)} for c, e in ALEXNET_ERRORS.items()}
    assert summarize(alexnet_like)["mce"] == pytest.approx(100.0)

    grid = {"gaussian_noise": {1: 0.6, 2: 0.5, 3: 0.4, 4: 0.3, 5: 0.2},  # mean error 0.6
            "contrast": {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.5}}  # mean error 0.3
    out = summarize(grid, clean_accuracy=0.9)
    assert out["corruption_errors"]["gaussian_noise"] == pytest.approx(100 * 0.6 / 0.886428)
    assert out["corruption_errors"]["contrast"] == pytest.approx(100 * 0.3 / 0.853204)
    assert out["mce"] == pytest.approx(50 * (0.6 / 0.886428 + 0.3 / 0.853204))
    assert out["mce_corruptions"] == ["gaussian_noise", "contrast"]  # a partial mCE says over what
    assert out["mean_corrupted_accuracy"] == pytest.approx(0.55)
    assert "relative_mce" not in out  # AlexNet's clean error is not part of its published table

    baseline = {"grid": {"gaussian_noise": {s: 0.3 for s in range(1, 6)},  # error 0.7
                         "contrast": {s: 0.5 for s in range(1, 6)}},  # error 0.5
                "clean_accuracy": 0.8}  # error 0.2
    out = summarize(grid, clean_accuracy=0.9, baseline=baseline)
    assert out["corruption_errors"] == pytest.approx({"gaussian_noise": 100 * 0.6 / 0.7, "contrast": 100 * 0.3 / 0.5})
    # relative CE: (E - E_clean) / (E_b - E_b_clean) = (0.6-0.1)/(0.7-0.2) and (0.3-0.1)/(0.5-0.2)
    assert out["relative_corruption_errors"] == pytest.approx({"gaussian_noise": 100.0, "contrast": 100 * 0.2 / 0.3})
    assert out["relative_mce"] == pytest.approx(50 * (1 + 0.2 / 0.3))

    with pytest.raises(ValueError, match="severities 1-5"):
        summarize({"gaussian_noise": {1: 0.5, 2: 0.4}})
    with pytest.raises(ValueError, match="other severities"):
        summarize({"contrast": {1: 0.5}}, baseline={"grid": {"contrast": {2: 0.4}}})


def test_metric_module_loads_offline_by_path_and_agrees_with_the_report():
    metric = evaluate.load(METRIC_PATH)
    grid = {"gaussian_noise": {1: 0.6, 2: 0.5}, "pixelate": {1: 0.7, 2: 0.65}}
    base = {"gaussian_noise": {1: 0.5, 2: 0.3}, "pixelate": {1: 0.6, 2: 0.6}}
    rows = lambda g: dict(corruption=[c for c in g for _ in g[c]], severity=[s for c in g for s in g[c]],  # noqa: E731
                          accuracy=[a for c in g for a in g[c].values()])
    out = metric.compute(**rows(grid), clean_accuracy=0.8, baseline={**rows(base), "clean_accuracy": 0.75})
    report = RobustnessReport("student", "digits", 10, (32, 32), 0.8, grid, {c: "torch" for c in grid},
                              baseline={"name": "teacher", "clean_accuracy": 0.75, "accuracy": base})
    assert out["mce"] == pytest.approx(report.mce) and out["relative_mce"] == pytest.approx(report.relative_mce)
    assert out["corruption_errors"]["pixelate"] == pytest.approx(100 * 0.325 / 0.4)


def test_cached_sets_are_reused_by_the_next_evaluation(tiny_vit, vit, eval_digits, tmp_path):
    evaluate_robustness(vit, eval_digits, ["gaussian_noise"], severities=(2,), batch_size=8, cache_dir=str(tmp_path),
                        progress=False)
    names = sorted(os.listdir(tmp_path))  # the decoded evaluation set and the one corrupted set
    assert [n.split("-")[:2] for n in names] == [["clean", "0"], ["gaussian_noise", "2"]]
    assert all(n.endswith(".arrow") for n in names)
    prepared = prepare_dataset(eval_digits, AutoImageProcessor.from_pretrained(tiny_vit))
    decoded = to_uint8(torch.stack([prepared[i]["pixel_values"] for i in range(len(prepared))]))
    cached = Dataset.from_file(str(tmp_path / names[0]))
    assert torch.equal(torch.tensor(cached["pixels"], dtype=torch.uint8), decoded.reshape(24, -1))
    assert len(Dataset.from_file(str(tmp_path / names[1]))) == 24

    # Black out the cached images: the next evaluation, of another model, must read them, not
    # decode or corrupt again.
    assert cached["label"] == eval_digits["label"]
    schema = cached.data.table.schema
    del cached  # it maps the files we are about to overwrite
    black = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(24 * 3 * 32 * 32, dtype=np.uint8)), 3 * 32 * 32)
    for name in names:
        with pa.OSFile(str(tmp_path / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(pa.table([black, pa.array(eval_digits["label"], pa.int64())], schema=schema))
    other = ViTForImageClassification.from_pretrained(save_tiny_vit(tmp_path / "other", seed=1)).eval()
    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    report = evaluate_robustness(other, eval_digits, ["gaussian_noise"], severities=(2,), batch_size=8,
                                 cache_dir=str(tmp_path), image_processor=processor, progress=False)
    assert sorted(os.listdir(tmp_path)) == sorted([*names, "other"])
    labels = torch.tensor(eval_digits["label"])
    blacked = hand_accuracy(other, processor, torch.zeros(24, 3, 32, 32), labels)
    assert hand_accuracy(other, processor, decoded.float() / 255, labels) != pytest.approx(blacked)
    assert report.clean_accuracy == pytest.approx(blacked)
    assert report.accuracy["gaussian_noise"][2] == pytest.approx(blacked)


def test_reference_backend_is_deterministic_and_reported(vit, eval_digits, tmp_path):
    """impulse_noise draws from the generator its ``seed=`` argument seeds, fog from NumPy's global one:
    both must give the same images in another cache. (glass_blur, the other seeded one, is left out: its
    numba kernel compiles for half a minute in every process.)"""
    data = eval_digits.select(range(8))
    corruptions = ["impulse_noise", "fog"]
    kwargs = dict(severities=(3,), batch_size=4, progress=False)
    a = evaluate_robustness(vit, data, corruptions, backend="reference", cache_dir=str(tmp_path / "a"), **kwargs)
    b = evaluate_robustness(vit, data, corruptions, backend="reference", cache_dir=str(tmp_path / "b"), **kwargs)
    assert a.backends == {"impulse_noise": "reference", "fog": "reference"}
    for corruption in corruptions:
        [name] = [n for n in os.listdir(tmp_path / "a") if n.startswith(corruption)]
        pixels_a = Dataset.from_file(str(tmp_path / "a" / name))["pixels"]
        pixels_b = Dataset.from_file(str(tmp_path / "b" / name))["pixels"]
        assert pixels_a == pixels_b  # same seed, same images, in another cache
    assert a.accuracy == b.accuracy
    auto = evaluate_robustness(vit, data, corruptions, backend="auto", cache_dir=str(tmp_path / "c"), **kwargs)
    assert auto.backends == {"impulse_noise": "torch", "fog": "torch"}


def test_torch_backend_reports_all_of_imagenet_c_without_the_reference(vit, eval_digits, tmp_path, monkeypatch):
    """The default report (the 15 corruptions x 5 severities) with the reference code uninstallable:
    every set is made by the ports, so mCE against AlexNet is defined."""
    monkeypatch.setitem(sys.modules, "imagecorruptions", None)  # ``import imagecorruptions`` now fails
    with pytest.raises(ImportError):
        import imagecorruptions  # noqa: F401
    data = eval_digits.select(range(8))
    report = evaluate_robustness(vit, data, batch_size=8, baseline="alexnet", cache_dir=str(tmp_path), progress=False)
    assert list(report.accuracy) == list(IMAGENET_C_CORRUPTIONS)
    assert all(sorted(row) == [1, 2, 3, 4, 5] for row in report.accuracy.values())
    assert set(report.backends.values()) == {"torch"}
    assert report.mce is not None
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".arrow")]) == 1 + 15 * 5
    with pytest.raises(ImportError, match=r"hf-robust-distill\[imagenet-c\]"):
        evaluate_robustness(vit, data, ["fog"], backend="reference", cache_dir=str(tmp_path), progress=False)


def test_natural_shift_restricts_logits_to_the_class_subset(tiny_vit, vit, eval_digits, tmp_path):
    keep = [i for i, y in enumerate(eval_digits["label"]) if y in (1, 3, 7)]
    subset_data = eval_digits.select(keep)
    in_subset = subset_data.map(lambda e: {"label": [1, 3, 7].index(e["label"])})
    in_subset = in_subset.cast_column("label", ClassLabel(names=["1", "3", "7"]))
    in_subset.save_to_disk(str(tmp_path / "shift-subset"))
    full_space = subset_data  # labels stay model indices (ClassLabel of 10 names)
    full_space.save_to_disk(str(tmp_path / "shift-full"))

    report = evaluate_robustness(vit, eval_digits, [], natural_shifts=[
        NaturalShift("positions", str(tmp_path / "shift-subset"), split="train", class_subset=(1, 3, 7)),
        NaturalShift("indices", str(tmp_path / "shift-full"), split="train", class_subset=(1, 3, 7)),
        NaturalShift("unrestricted", str(tmp_path / "shift-full"), split="train"),
    ], cache_dir=str(tmp_path / "cache"), progress=False)

    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    prepared = prepare_dataset(subset_data, processor)
    pixels = torch.stack([prepared[i]["pixel_values"] for i in range(len(prepared))])
    positions = torch.tensor(in_subset["label"])
    restricted = hand_accuracy(vit, processor, pixels, positions, subset=(1, 3, 7))
    assert report.natural_shifts["positions"] == pytest.approx(restricted)
    assert report.natural_shifts["indices"] == pytest.approx(restricted)
    assert report.natural_shifts["unrestricted"] == pytest.approx(
        hand_accuracy(vit, processor, pixels, torch.tensor(subset_data["label"])))
    assert NaturalShift.parse("imagenet-r=axiong/imagenet-r:test").subset()[:3] == (1, 2, 4)


def test_report_saves_loads_and_plots(tmp_path):
    grid = {"gaussian_noise": {1: 0.6, 2: 0.5}, "contrast": {1: 0.9, 2: 0.7}, "pixelate": {1: 0.8, 2: 0.8}}
    report = RobustnessReport("student", "digits", 10, (32, 32), 0.95, grid, {c: "torch" for c in grid},
                              natural_shifts={"imagenet-r": 0.4},
                              baseline={"name": "teacher", "clean_accuracy": 0.97,
                                        "accuracy": {c: {s: a - 0.1 for s, a in r.items()} for c, r in grid.items()}})
    path = report.save(str(tmp_path))
    loaded = RobustnessReport.load(path)
    assert loaded == report and loaded.mce == pytest.approx(report.mce) and not math.isnan(loaded.mce)
    teacher = RobustnessReport("teacher", "digits", 10, (32, 32), 0.97, report.baseline["accuracy"],
                               {c: "torch" for c in grid})
    figure = loaded.plot(str(tmp_path), reference=teacher)
    severity_axis, corruption_axis = figure.axes
    student_line, teacher_line = severity_axis.get_lines()  # mean over corruptions against severity, 0 = clean
    assert list(student_line.get_xdata()) == [0, 1, 2]
    assert list(student_line.get_ydata()) == pytest.approx([95.0, 100 * (0.6 + 0.9 + 0.8) / 3, 100 * 2.0 / 3])
    assert list(teacher_line.get_ydata()) == pytest.approx([97.0, 100 * (0.5 + 0.8 + 0.7) / 3, 100 * 1.7 / 3])
    assert len(corruption_axis.patches) == 2 * len(grid)  # a bar per corruption for each model
    assert "teacher" in " ".join(t.get_text() for t in severity_axis.get_legend().get_texts())
    with open(tmp_path / "robustness.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = loaded.to_markdown()
    assert "| gaussian_noise | 60.0 | 50.0 | 55.0 |" in table and "| clean |" in table
    beside = loaded.to_markdown(reference=teacher)
    assert "| corruption | s1 | s2 | mean | teacher | Δ | CE |" in beside
    assert "| gaussian_noise | 60.0 | 50.0 | 55.0 | 45.0 | +10.0 |" in beside and "| 97.0 | -2.0 |" in beside


def test_evaluate_recipe_writes_report_and_plot(tiny_vit, tmp_path):
    from tests.conftest import load_recipe

    recipe = load_recipe("evaluate_robustness")
    report = recipe.main(["--model_name_or_path", tiny_vit, "--max_eval_samples", "16", "--output_dir",
                          str(tmp_path / "out"), "--robustness_corruptions", "gaussian_noise,pixelate",
                          "--robustness_severities", "1,5", "--robustness_baseline", "none", "--corruption_cache_dir",
                          str(tmp_path / "cache"), "--device", "cpu"])
    assert RobustnessReport.load(str(tmp_path / "out")) == report
    assert set(report.accuracy) == {"gaussian_noise", "pixelate"} and report.severities == [1, 5]
    assert os.path.isfile(tmp_path / "out" / "robustness.png")


def test_an_unreachable_natural_shift_is_named_before_the_first_image(vit, eval_digits, tmp_path):
    """It used to score every corrupted set first and then die in datasets' ConnectionError."""
    with pytest.raises(ValueError) as error:
        evaluate_robustness(vit, eval_digits, ["contrast"], severities=(1,), cache_dir=str(tmp_path / "cache"),
                            natural_shifts=["imagenet-r=axiong/imagenet-r:test",
                                            NaturalShift("mine", str(tmp_path / "no-such-folder")),
                                            NaturalShift("sub", str(tmp_path), class_subset="imagenet-z")],
                            progress=False)
    message = str(error.value)
    assert "axiong/imagenet-r" in message and "no-such-folder" in message and "imagenet-z" in message
    assert not os.path.exists(tmp_path / "cache")  # nothing decoded, nothing corrupted


def test_a_report_saves_and_plots_into_a_folder_it_makes(vit, eval_digits, tmp_path):
    report = evaluate_robustness(vit, eval_digits.select(range(8)), ["contrast"], severities=(1,), batch_size=8,
                                 cache_dir=str(tmp_path / "cache"), progress=False)
    saved = report.save(str(tmp_path / "out") + "/")
    assert saved == str(tmp_path / "out" / "robustness_report.json")
    assert RobustnessReport.load(str(tmp_path / "out")) == report
    report.plot(str(tmp_path / "plots"))
    assert os.path.isfile(tmp_path / "plots" / "robustness.png")
    assert report.save(str(tmp_path / "deep" / "named.json")).endswith("named.json")


def test_an_mce_against_alexnet_at_fewer_severities_is_refused_before_any_work(vit, eval_digits, tmp_path):
    """AlexNet's published errors average over severities 1-5: it used to fail in the summary, after
    every corrupted set was scored."""
    with pytest.raises(ValueError, match="needs all five severities"):
        evaluate_robustness(vit, eval_digits, ["contrast"], severities=(1, 3), baseline="alexnet",
                            cache_dir=str(tmp_path / "cache"), progress=False)
    assert not os.path.exists(tmp_path / "cache")
    from hf_robust_distill.cli import RobustnessArguments
    from hf_robust_distill.utils import Problems

    problems = Problems()
    RobustnessArguments(robustness_baseline="alexnet", robustness_severities="1,3").check(problems)
    assert [where for where, _ in problems.found] == ["--robustness_severities"]
