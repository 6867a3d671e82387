"""The paper's linear-probe protocol: a logistic regression on frozen [CLS] features of distorted images,
trained with a share of the labels, scored clean and under each distortion."""

from __future__ import annotations

import numpy as np
import torch

from ..data.columns import LABELS, PIXELS
from ..models.pixels import PixelPreprocessor
from ..models.taps import FeatureTaps
from ..views.distortions import Distorter
from .distortion_table import View, view_batches, view_generator


@torch.inference_mode()
def cls_features(model, preprocessor: PixelPreprocessor, dataset, view: View | str | None = None,
                 batch_size: int = 128, seed: int = 0, device=None) -> tuple[np.ndarray, np.ndarray]:
    """The final [CLS] embedding of every image (under ``view``) and its label."""
    if isinstance(view, str):
        view = Distorter(view)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    features, labels = [], []
    with FeatureTaps(model, need_cls=True) as taps:
        for i, batch in enumerate(view_batches(dataset, batch_size)):
            pixels = batch[PIXELS].to(device)
            if view is not None:
                pixels = view(pixels, view_generator(device, seed, i))
            features.append(taps(model, preprocessor(pixels)).cls.float().cpu().numpy())
            labels.append(batch[LABELS].numpy())
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
