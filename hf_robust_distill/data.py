"""Image-classification data: a Hub id, a local imagefolder, or the embedded demo digits.

Every image leaves here as a float (3, H, W) tensor in [0, 1] at the size the models are fed;
normalisation happens later, at each model's own door (``models.PixelPreprocessor``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Image as ImageFeature, load_dataset
from PIL import Image

DEMO_DATASET = "sklearn-digits"
"""The name that selects the embedded demo data: scikit-learn's handwritten digits (8x8 px)."""


def demo_digits(test_size: float = 0.25, seed: int = 0) -> DatasetDict:
    """scikit-learn's 1,797 handwritten digits as an image dataset with train and test splits.

    The 8x8 images (ink 0-16) become 8-bit greyscale PIL images with white ink on black, so
    the pipeline's real decoding path (greyscale to RGB, resizing) runs on them.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    dataset = Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": digits.target.tolist()}
    )
    dataset = dataset.cast_column("image", ImageFeature())
    dataset = dataset.cast_column("label", ClassLabel(names=[str(i) for i in range(10)]))
    return dataset.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")


def load_image_dataset(name_or_path: str | None = None, config_name: str | None = None,
                       cache_dir: str | None = None, seed: int = 0) -> DatasetDict:
    """Loads a dataset by Hub id, local imagefolder path, or the embedded demo (``None``)."""
    if name_or_path in (None, "", DEMO_DATASET):
        return demo_digits(seed=seed)
    if os.path.isdir(name_or_path) and not _is_saved_dataset(name_or_path):
        dataset = load_dataset("imagefolder", data_dir=name_or_path, cache_dir=cache_dir)
    elif os.path.isdir(name_or_path):
        from datasets import load_from_disk

        dataset = load_from_disk(name_or_path)
    else:
        dataset = load_dataset(name_or_path, config_name, cache_dir=cache_dir)
    if isinstance(dataset, Dataset):
        dataset = DatasetDict({"train": dataset})
    return dataset


def _is_saved_dataset(path: str) -> bool:
    return os.path.exists(os.path.join(path, "dataset_dict.json")) or os.path.exists(
        os.path.join(path, "dataset_info.json"))


def split_train_eval(dataset: DatasetDict, train_split: str = "train", eval_split: str | None = None,
                     eval_fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The training split and an evaluation split: the named one, the usual names, or a held-out
    ``eval_fraction`` of the training split."""
    if train_split not in dataset:
        raise ValueError(f"no split {train_split!r} in the dataset; it has {list(dataset)}")
    if eval_split is not None:
        if eval_split not in dataset:
            raise ValueError(f"no split {eval_split!r} in the dataset; it has {list(dataset)}")
        return dataset[train_split], dataset[eval_split]
    for name in ("validation", "valid", "val", "test"):
        if name in dataset and name != train_split:
            return dataset[train_split], dataset[name]
    parts = dataset[train_split].train_test_split(test_size=eval_fraction, seed=seed)
    return parts["train"], parts["test"]


def find_columns(dataset: Dataset, image_column: str | None = None,
                 label_column: str | None = None) -> tuple[str, str | None]:
    """The image column (an ``Image`` feature) and the label column (a ``ClassLabel``), found
    by type unless named."""
    features = dataset.features
    if image_column is None:
        images = [k for k, f in features.items() if isinstance(f, ImageFeature)]
        if not images:
            raise ValueError(f"no Image column among {list(features)}; pass --image_column")
        image_column = images[0]
    elif image_column not in features:
        raise ValueError(f"no column {image_column!r}; the dataset has {list(features)}")
    if label_column is None:
        labels = [k for k, f in features.items() if isinstance(f, ClassLabel)]
        label_column = labels[0] if labels else ("label" if "label" in features else None)
    elif label_column not in features:
        raise ValueError(f"no column {label_column!r}; the dataset has {list(features)}")
    return image_column, label_column


def class_names(dataset: Dataset, label_column: str | None) -> list[str] | None:
    feature = dataset.features.get(label_column) if label_column else None
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def to_rgb(image) -> Image.Image:
    """Any decoded image as 8-bit RGB: greyscale and palette images are expanded, transparency
    is laid over white, high-bit-depth greyscale is rescaled."""
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"cannot read an image array of shape {array.shape} as RGB; "
                             "expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
        image = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a decoded image, got {type(image).__name__}")
    if image.mode in ("I", "I;16", "I;16B", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.max() > 0 else 1.0
        image = Image.fromarray(np.round(array / top * 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def _to_pixels(image, size: tuple[int, int], resample: int) -> torch.Tensor:
    rgb = to_rgb(image).resize((size[1], size[0]), resample)
    array = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"an image is not 3-channel after decoding: shape {tuple(array.shape)}")
    return array.permute(2, 0, 1).float().div_(255)


@dataclass
class ImageTransform:
    """``datasets`` on-the-fly transform: decoded images to (3, size, size) floats in [0, 1].

    ``image_column`` becomes ``pixel_values`` and ``label_column`` ``labels``; ``extra_images``
    maps further image columns to output names (an offline DAD image beside its clean one), and
    ``extra_columns`` are passed on as tensors (stored teacher logits).
    """

    image_column: str
    label_column: str | None
    size: tuple[int, int]
    resample: int = Image.BICUBIC
    extra_images: dict[str, str] | None = None
    extra_columns: tuple[str, ...] = ()

    def __call__(self, batch: dict) -> dict:
        out = {"pixel_values": [_to_pixels(im, self.size, self.resample) for im in batch[self.image_column]]}
        for column, name in (self.extra_images or {}).items():
            out[name] = [_to_pixels(im, self.size, self.resample) for im in batch[column]]
        for column in self.extra_columns:
            out[column] = [torch.as_tensor(v, dtype=torch.float32) for v in batch[column]]
        if self.label_column is not None:
            out["labels"] = batch[self.label_column]
        return out


def prepare_dataset(dataset: Dataset, size: tuple[int, int], image_column: str | None = None,
                    label_column: str | None = None, extra_images: dict[str, str] | None = None,
                    extra_columns: tuple[str, ...] = ()) -> Dataset:
    """The dataset, decoding and resizing on access, yielding ``pixel_values`` (and ``labels``,
    and the ``extra_images`` / ``extra_columns`` of ``ImageTransform``)."""
    image_column, label_column = find_columns(dataset, image_column, label_column)
    return dataset.with_transform(ImageTransform(image_column, label_column, tuple(size),
                                                 extra_images=extra_images, extra_columns=tuple(extra_columns)))


def collate_images(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stacks ``pixel_values`` (B, 3, H, W) in [0, 1] and every other tensor field; ``labels``
    become a (B,) long tensor."""
    batch = {}
    for key, value in examples[0].items():
        if key == "labels":
            batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.long)
        elif isinstance(value, torch.Tensor):
            batch[key] = torch.stack([e[key] for e in examples])
    return batch
