"""The released ImageNet-C images (Hendrycks & Dietterich), the sets RobustBench and easyrobust score:
a folder in the release's layout, ``<corruption>/<severity>/<wnid>/<name>.JPEG`` (the corruption
folders may sit one level down, in the tarballs' ``noise/``, ``blur/``, ``weather/`` and ``digital/``),
or a dataset with corruption, severity, image and label columns (a Hub copy, an imagefolder, a saved
dataset). Every corruption and severity found is read; classes are matched to ImageNet-1k's by name.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
from datasets import Dataset, Features, Image as ImageFeature, Value

from ..data.datasets import class_names, find_columns, load_image_dataset
from ..data.imagenet_classes import imagenet_indices
from ..views.corruptions import CORRUPTIONS

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
FEATURES = Features({"image": ImageFeature(), "label": Value("int64")})
"""A released set as ``evaluate_robustness`` reads it: the image and its ImageNet-1k class index."""


def read_released(source: str) -> dict[tuple[str, int], Dataset]:
    """``{(corruption, severity): Dataset(image, label)}`` of every set in ``source``, a folder in the
    release's layout or a dataset with corruption, severity, image and label columns; labels are
    ImageNet-1k class indices."""
    if os.path.isdir(source) and _corruption_folders(source):
        return _read_folder(source)
    return _read_dataset(source)


def _corruption_folders(root: str) -> dict[str, str]:
    """``{corruption: folder}`` at the top of ``root`` or one level down."""
    found = {}
    for top in sorted(os.scandir(root), key=lambda e: e.name):
        if not top.is_dir():
            continue
        if top.name in CORRUPTIONS:
            found[top.name] = top.path
            continue
        for inner in os.scandir(top.path):
            if inner.is_dir() and inner.name in CORRUPTIONS:
                found.setdefault(inner.name, inner.path)
    return found


def _read_folder(root: str) -> dict[tuple[str, int], Dataset]:
    sets = {}
    for corruption, folder in _corruption_folders(root).items():
        for severity in sorted(e.name for e in os.scandir(folder) if e.is_dir() and e.name.isdigit()):
            classes = sorted(e.name for e in os.scandir(os.path.join(folder, severity)) if e.is_dir())
            indices = imagenet_indices(classes)
            if indices is None:
                unknown = [c for c in classes if imagenet_indices([c]) is None]
                raise ValueError(f"{os.path.join(folder, severity)} holds folders that are not ImageNet-1k WordNet ids "
                                 f"({', '.join(unknown[:5])}): the release's layout is "
                                 "<corruption>/<severity>/<wnid>/<name>.JPEG")
            paths, labels = [], []
            for wnid, index in zip(classes, indices):
                directory = os.path.join(folder, severity, wnid)
                names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS))
                paths += [os.path.join(directory, n) for n in names]
                labels += [index] * len(names)
            if paths:
                sets[corruption, int(severity)] = Dataset.from_dict({"image": paths, "label": labels},
                                                                    features=FEATURES)
    if not sets:
        raise ValueError(f"no images in {root}: the release's layout is <corruption>/<severity>/<wnid>/<name>.JPEG")
    return sets


def _read_dataset(source: str) -> dict[tuple[str, int], Dataset]:
    splits = load_image_dataset(source)
    data = splits[next(iter(splits))] if len(splits) == 1 else _only_split(splits, source)
    missing = [c for c in ("corruption", "severity") if c not in data.column_names]
    image_column, label_column = find_columns(data)
    if missing or label_column is None:
        raise ValueError(f"{source} is neither a folder in the release's layout (<corruption>/<severity>/<wnid>/"
                         f"<name>.JPEG) nor a dataset with corruption, severity, image and label columns "
                         f"(it has {', '.join(data.column_names)})")
    names = class_names(data, label_column)
    indices = imagenet_indices(names) if names is not None else None
    if names is not None and indices is None:
        raise ValueError(f"the labels of {source} are not ImageNet-1k's classes (by WordNet id or name)")
    columns = data.select_columns(["corruption", "severity"]).with_format("numpy")
    groups = defaultdict(list)
    for row, (corruption, severity) in enumerate(zip(columns["corruption"], columns["severity"])):
        groups[str(corruption), int(severity)].append(row)
    unknown = sorted({c for c, _ in groups if c not in CORRUPTIONS})
    if unknown:
        raise ValueError(f"{source} names corruptions that ImageNet-C does not: {', '.join(unknown)}")
    to_imagenet = np.asarray(indices) if indices is not None else None
    sets = {}
    for key, rows in sorted(groups.items()):
        part = data.select(rows).select_columns([image_column, label_column])
        if image_column != "image":
            part = part.rename_column(image_column, "image")
        if label_column != "label":
            part = part.rename_column(label_column, "label")
        if to_imagenet is not None:
            part = part.cast_column("label", Value("int64")).map(
                lambda batch: {"label": to_imagenet[np.asarray(batch["label"])].tolist()}, batched=True)
        sets[key] = part
    return sets


def _only_split(splits, source: str) -> Dataset:
    for name in ("test", "validation", "train"):
        if name in splits:
            return splits[name]
    raise ValueError(f"{source} has several splits ({', '.join(splits)}); none is test, validation or train")
