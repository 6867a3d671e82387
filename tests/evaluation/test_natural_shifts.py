"""Natural shifts as their releases lay them out: ImageNet-Sketch's class folders named by WordNet
id, ImageNet-V2's named by class index ("0" to "999"); an ImageNet-1k classifier reads their classes
by name, and the card's model-index names each shift's dataset by its Hub id, config and split."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from hf_robust_distill.data.imagenet_classes import imagenet_classes
from hf_robust_distill.evaluation import NaturalShift, RobustnessReport, natural_shift_scores
from hf_robust_distill.hub.card import eval_results

COLOURS = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}
ANSWERS = {"red": 0, "green": 1, "blue": 10}  # the ImageNet-1k class each colour is


class ColourClassifier(torch.nn.Module):
    """A 1000-way classifier of [0, 1] pixels that answers class 0 for red images, 1 for green, 10 for blue."""

    num_labels = 1000

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, pixels):
        logits = torch.zeros(len(pixels), 1000)
        for channel, index in zip(range(3), ANSWERS.values()):
            logits[:, index] = self.scale * pixels[:, channel].mean(dim=(1, 2))
        return logits


def write_layout(root, folders: dict[str, str], per_class: int = 3, suffix: str = ".JPEG") -> str:
    """``root/<folder>/<i><suffix>`` holding ``per_class`` images of each folder's colour."""
    for folder, colour in folders.items():
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for i in range(per_class):
            pixels = np.full((40 + 4 * i, 36, 3), COLOURS[colour], dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, folder, f"{i}{suffix}"), quality=95)
    return str(root)


@pytest.mark.parametrize("layout", ["imagenet-sketch", "imagenet-v2"])
def test_release_layouts_are_read_by_class_name(tmp_path, layout):
    wnids = [row[0] for row in imagenet_classes()]
    if layout == "imagenet-sketch":  # sketch/<wnid>/<name>.JPEG
        folders = {wnids[ANSWERS[colour]]: colour for colour in COLOURS}
        root = write_layout(tmp_path / "sketch", folders)
    else:  # imagenetv2-matched-frequency-format-val/<index>/<hash>.jpeg: folders "0", "1", "10" sort as text
        folders = {str(ANSWERS[colour]): colour for colour in COLOURS}
        root = write_layout(tmp_path / "imagenetv2-matched-frequency-format-val", folders, suffix=".jpeg")
    scores = natural_shift_scores(ColourClassifier(), NaturalShift(layout, root, split="train"), (32, 32))
    assert scores.total == 9 and scores.accuracy == 1.0  # positions among 3 folders would score blue as class 2
    assert 0 <= scores.ece <= 1 and scores.mean_nll > 0


def test_model_index_names_each_shift_by_its_hub_id_config_and_split():
    report = RobustnessReport("m", "imagenet-1k", 10, (224, 224), 0.8, {}, {},
                              natural_shifts={"imagenet-r": 0.4, "mine": 0.5},
                              natural_shift_datasets={
                                  "imagenet-r": {"dataset": "axiong/imagenet-r", "config": None, "split": "test"},
                                  "mine": {"dataset": "/data/my-shift", "config": "v1", "split": "validation"}})
    shifts = {r.dataset_name: r for r in eval_results(report, "imagenet-1k") if r.dataset_name in ("imagenet-r", "mine")}
    assert (shifts["imagenet-r"].dataset_type, shifts["imagenet-r"].dataset_split) == ("axiong/imagenet-r", "test")
    assert (shifts["mine"].dataset_type, shifts["mine"].dataset_config) == ("my-shift", "v1")  # a folder: its name only
