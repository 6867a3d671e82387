"""Accuracy of a model under distortions, and the linear-probe protocol of the paper."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data import collate_images
from .distortions import Distorter
from .models import FeatureTaps, PixelPreprocessor

View = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _batches(dataset, batch_size: int, num_workers: int = 0):
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_images,
                      num_workers=num_workers)


def _view_generator(device, seed: int, batch_index: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 100_003 + batch_index)


@torch.inference_mode()
def accuracy(model, preprocessor: PixelPreprocessor | None, dataset, view: View | str | None = None,
             batch_size: int = 128, seed: int = 0, device=None) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (``pixel_values`` in [0,1], ``labels``), each
    batch first passed through ``view`` (a ``Distorter``, its spec string, or ``None`` for clean).
    Views are drawn from generators seeded by ``seed`` and the batch index: reproducible.
    With ``preprocessor=None`` the model takes [0, 1] pixels and returns logits
    (``CLIPZeroShotClassifier``, ``PixelSpaceClassifier``)."""
    if isinstance(view, str):
        view = Distorter(view)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    for i, batch in enumerate(_batches(dataset, batch_size)):
        pixels = batch["pixel_values"].to(device)
        if view is not None:
            pixels = view(pixels, _view_generator(device, seed, i))
        logits = model(pixels) if preprocessor is None else model(pixel_values=preprocessor(pixels)).logits
        correct += (logits.argmax(-1).cpu() == batch["labels"]).sum().item()
        total += len(pixels)
    model.train(was_training)
    return correct / max(total, 1)


@torch.inference_mode()
def cls_features(model, preprocessor: PixelPreprocessor, dataset, view: View | str | None = None,
                 batch_size: int = 128, seed: int = 0, device=None) -> tuple[np.ndarray, np.ndarray]:
    """The final [CLS] embedding of every image (under ``view``) and its label."""
    if isinstance(view, str):
        view = Distorter(view)
    device = device or next(model.parameters()).device
    taps = FeatureTaps(model, need_cls=True)
    was_training = model.training
    model.eval()
    features, labels = [], []
    for i, batch in enumerate(_batches(dataset, batch_size)):
        pixels = batch["pixel_values"].to(device)
        if view is not None:
            pixels = view(pixels, _view_generator(device, seed, i))
        features.append(taps(model, preprocessor(pixels)).cls.float().cpu().numpy())
        labels.append(batch["labels"].numpy())
    model.train(was_training)
    return np.concatenate(features), np.concatenate(labels)


def label_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified ``fraction`` of the samples (at least one per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the label fraction must lie in (0, 1], got {fraction}")
    if fraction == 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, fraction: float = 1.0, seed: int = 0):
    """A logistic-regression probe on standardised frozen features, trained with ``fraction`` of
    the labels (the paper's "same amount of human supervision" protocol)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    subset = label_subset(labels, fraction, seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return probe.fit(features[subset], labels[subset])


def distortion_table(models: dict, preprocessors: dict, dataset, columns: list[str], seed: int = 0) -> dict:
    """{model name: {"clean": accuracy, column: accuracy, ...}}: each model on ``dataset``, clean
    and under each distortion spec in ``columns`` (the same draws for every model)."""
    table = {}
    for name, model in models.items():
        row = {"clean": accuracy(model, preprocessors.get(name), dataset)}
        for column in columns:
            row[column] = accuracy(model, preprocessors.get(name), dataset, view=column, seed=seed)
        table[name] = row
    return table


def report_table(table: dict, output_dir: str) -> None:
    """Writes ``distortion_accuracy.json`` into ``output_dir`` and prints the table."""
    with open(os.path.join(output_dir, "distortion_accuracy.json"), "w") as f:
        json.dump(table, f, indent=2)
    print("\nTop-1 accuracy (%) on the evaluation split, clean and under each distortion:\n")
    print(format_table(table))
    print(f"\nStudent, table and weights in {os.path.abspath(output_dir)}")


def format_table(table: dict) -> str:
    """A Markdown table of accuracies in %."""
    columns = list(next(iter(table.values())))
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[c]:.1f}" for c in columns) + " |")
    return "\n".join(lines)
