"""Top-1 accuracy under the training-style distortion views (``views.Distorter`` specs), the same draws
for every model, and the table of the teacher's and the students' accuracies a recipe ends with."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from ..data.columns import LABELS, PIXELS
from ..data.datasets import collate_images
from ..models.pixels import PixelPreprocessor, model_dtype
from ..views.distortions import Distorter
from .calibration import finite_logits

View = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def view_batches(dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A prepared set's batches in order (``pixel_values`` in [0, 1], ``labels``)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_images,
                      num_workers=num_workers)


def view_generator(device, seed: int, batch_index: int) -> torch.Generator:
    """The generator a batch's view draws from: every model sees the same distorted images."""
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
    for i, batch in enumerate(view_batches(dataset, batch_size)):
        pixels = batch[PIXELS].to(device)
        if view is not None:
            pixels = view(pixels, view_generator(device, seed, i))
        logits = finite_logits(model(pixels) if preprocessor is None
                         else model(pixel_values=preprocessor(pixels, model_dtype(model))).logits)
        correct += (logits.argmax(-1).cpu() == batch[LABELS]).sum().item()
        total += len(pixels)
    model.train(was_training)
    return correct / max(total, 1)


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
