"""Evaluation shared by two CPU processes over gloo (``run_in_two_processes``): each corrupts and scores
every other batch, and the counts added up are the one-process counts; each set is written once, as one
shard per process, the two shards together the one-process set, no image twice."""

import json
import os

import numpy as np
import pytest
import torch
from datasets import Dataset, load_dataset
from transformers import ViTConfig, ViTForImageClassification

from tests.conftest import TINY_BLOCKS, load_recipe, run_in_two_processes, write_photo_folder

from hf_robust_distill.cli.demo import demo_image_processor
from hf_robust_distill.evaluation import RobustnessReport, evaluate_robustness
from hf_robust_distill.evaluation.sharding import Shard

SETTINGS = [
    dict(corruptions=["gaussian_noise", "contrast"], severities=(1, 3), protocol="model-resolution"),
    dict(corruptions=["impulse_noise"], severities=(2,), protocol="imagenet-c", backend="reference"),
]


def evaluate_and_write(model_path, folder, cache_dir, out_dir):
    shard = Shard.of_this_process()
    model = ViTForImageClassification.from_pretrained(model_path).eval()
    data = load_dataset("imagefolder", data_dir=folder)["test"]
    for k, settings in enumerate(SETTINGS):
        report = evaluate_robustness(model, data, batch_size=3, seed=2, cache_dir=cache_dir, progress=False,
                                     natural_shifts=[f"photos={folder}:test"], **settings)
        report.save(os.path.join(out_dir, f"rank{shard.index}-of-{shard.count}-{k}.json"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_photo_folder(tmp_path_factory.mktemp("photos"), per_class=(1, 7))  # 14 images: 5 batches of 3


@pytest.fixture(scope="module")
def photo_vit(tmp_path_factory) -> str:
    """A tiny ViT predicting the photo folder's two classes, saved with its processor."""
    path = str(tmp_path_factory.mktemp("photo-vit"))
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(**TINY_BLOCKS, num_labels=2, id2label={0: "cat", 1: "coffee"},
                                        label2id={"cat": 0, "coffee": 1})).save_pretrained(path)
    demo_image_processor().save_pretrained(path)
    return path


def shard_files(cache_dir) -> dict[str, list[str]]:
    """The cache's Arrow files by the set they hold (corruption and severity)."""
    sets = {}
    for name in sorted(os.listdir(cache_dir)):
        if name.endswith(".arrow"):
            sets.setdefault(name.rsplit("-", 1)[0], []).append(os.path.join(cache_dir, name))
    return sets


def rows(paths) -> list[bytes]:
    """Every stored image of the files, as bytes, sorted."""
    out = []
    for path in paths:
        data = Dataset.from_file(path)
        column = "pixels" if "pixels" in data.column_names else "image"
        for cell in data.with_format("numpy" if column == "pixels" else None)[column]:
            out.append(np.asarray(cell).tobytes() if column == "pixels" else cell["bytes"] if isinstance(cell, dict)
                       else cell.tobytes())
    return sorted(out)


def test_two_processes_give_the_one_process_report_and_write_each_set_once(photo_vit, folder, tmp_path):
    os.makedirs(tmp_path / "one")
    os.makedirs(tmp_path / "two")
    evaluate_and_write(photo_vit, folder, str(tmp_path / "cache-one"), str(tmp_path / "one"))
    run_in_two_processes(evaluate_and_write, photo_vit, folder, str(tmp_path / "cache-two"), str(tmp_path / "two"))
    for k in range(len(SETTINGS)):
        one = RobustnessReport.load(str(tmp_path / "one" / f"rank0-of-1-{k}.json"))
        two = [RobustnessReport.load(str(tmp_path / "two" / f"rank{r}-of-2-{k}.json")) for r in (0, 1)]
        for report in two:  # both processes hold the whole report
            assert report.num_examples == one.num_examples == 14
            assert report.clean_accuracy == one.clean_accuracy and report.accuracy == one.accuracy
            assert report.natural_shifts == one.natural_shifts and report.protocol == one.protocol
            assert _close(report.calibration, one.calibration)  # sums of floats, added in another order
    single, sharded = shard_files(tmp_path / "cache-one"), shard_files(tmp_path / "cache-two")
    clean = sorted(os.path.basename(p) for name in sharded if name.startswith("clean") for p in sharded[name])
    # The decoded evaluation set (at the model's input, and ImageNet-C's crop): each written once, by the
    # main process, under the name a single process gives it.
    assert len(clean) == 2 and clean == sorted(os.path.basename(p) for name in single if name.startswith("clean")
                                                 for p in single[name])
    corrupted = {name: paths for name, paths in sharded.items() if not name.startswith("clean")}
    assert set(corrupted) == {"gaussian_noise-1", "gaussian_noise-3", "contrast-1", "contrast-3", "impulse_noise-2"}
    for name, paths in corrupted.items():  # a shard per process, together the one-process set, no image twice
        assert len(paths) == 2 and len(single[name]) == 1
        assert rows(paths) == rows(single[name]), name


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_the_evaluation_recipe_runs_in_two_processes(photo_vit, folder, tmp_path):
    run_in_two_processes(_recipe_in_a_process, photo_vit, folder, str(tmp_path))
    written = json.loads((tmp_path / "out" / "robustness_report.json").read_text())
    by_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert by_rank[0] == by_rank[1] == {"world": 2, "accuracy": written["accuracy"]}
    assert sorted(os.listdir(tmp_path / "out")) == [  # written once, with the model beside its card
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json", "robustness.png",
        "robustness_report.json"]


def _recipe_in_a_process(model, folder, tmp):
    report = load_recipe("evaluate_robustness").main([
        "--model_name_or_path", model, "--dataset_name", folder, "--eval_split", "test", "--output_dir",
        os.path.join(tmp, "out"), "--robustness_corruptions", "contrast", "--robustness_severities", "2",
        "--robustness_batch_size", "3", "--corruption_cache_dir", os.path.join(tmp, "cache")])
    with open(os.path.join(tmp, f"rank{Shard.of_this_process().index}.json"), "w") as f:
        json.dump({"world": Shard.of_this_process().count,
                   "accuracy": {c: {str(s): a for s, a in row.items()} for c, row in report.accuracy.items()}}, f)
