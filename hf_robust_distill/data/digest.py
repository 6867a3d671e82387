"""``images_digest``: which images a split holds, as one hash of their encoded files and labels, so two
robustness reports can say whether they scored the same images, whatever the models' processors."""

from __future__ import annotations

import hashlib

import numpy as np
from datasets import Dataset, Image as ImageFeature

_DIGESTS: dict[tuple, str] = {}
"""Digests already taken, by the dataset's fingerprint and columns (a recipe takes one before its
work and the evaluation again)."""


def images_digest(dataset: Dataset, image_column: str, label_column: str | None = None,
                  batch_size: int = 256) -> str:
    """sha256 over the split's images in row order, each as its encoded bytes (or its file's bytes,
    for an image stored as a path), and its labels; no image is decoded."""
    key = (dataset._fingerprint, image_column, label_column)
    if key in _DIGESTS:
        return _DIGESTS[key]
    digest = hashlib.sha256()
    columns = [image_column] + ([label_column] if label_column else [])
    rows = dataset.select_columns(columns)
    if isinstance(rows.features[image_column], ImageFeature):
        rows = rows.cast_column(image_column, ImageFeature(decode=False))
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        for image in batch[image_column]:
            digest.update(hashlib.sha256(_image_bytes(image)).digest())
        if label_column:
            labels = np.asarray(batch[label_column])
            digest.update(labels.astype(np.int64).tobytes() if labels.dtype.kind in "biu"
                          else "\x1f".join(map(str, labels)).encode())
    _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _image_bytes(image) -> bytes:
    if isinstance(image, dict):  # an Image feature read undecoded: its bytes, or its file
        if image.get("bytes") is not None:
            return image["bytes"]
        with open(image["path"], "rb") as f:
            return f.read()
    if hasattr(image, "tobytes"):  # a PIL image or an array
        return image.tobytes() + str(getattr(image, "size", np.shape(image))).encode()
    return repr(image).encode()
