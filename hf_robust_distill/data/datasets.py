"""Image-classification data: a Hub id, a local imagefolder, or the embedded demo digits.

Every image leaves here as a float (3, H, W) tensor in [0, 1] at the size the models are fed,
made by the model's own image processor without its normalisation (``images.ImageResizer``);
normalisation happens later, at each model's own door (``models.PixelPreprocessor``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Image as ImageFeature, Value, load_dataset
from PIL import Image

from .augmentation import TrainingTransform
from .columns import BAD_IMAGES, LABELS, PIXELS
from .images import BadImage, ImageResizer, decode_rgb, to_uint8
from .training_set import AugmentedImages

logger = logging.getLogger(__name__)

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


SPLIT_SEED = 42
"""The seed of every evaluation split a recipe draws (the 10% held out of a dataset without one, the
demo digits' test split): the same for training and evaluation, so both score the same images.
TrainingArguments' default seed, which drew them before they had a seed of their own."""


def load_image_dataset(name_or_path: str | None = None, config_name: str | None = None,
                       cache_dir: str | None = None, seed: int = SPLIT_SEED, streaming: bool = False) -> DatasetDict:
    """Loads a dataset by Hub id, local folder (of images, or of data files such as a generated
    DAD dataset's Parquet shards), saved dataset (``save_to_disk``), or the embedded demo (``None``,
    its test split drawn with ``seed``); ``streaming``: a Hub id or a local folder as a stream
    (``data.streams.load_stream`` checks which may)."""
    if name_or_path in (None, "", DEMO_DATASET):
        return demo_digits(seed=seed)
    if os.path.isdir(name_or_path) and _is_saved_dataset(name_or_path):
        from datasets import load_from_disk

        dataset = load_from_disk(name_or_path)
    elif os.path.isdir(name_or_path) and not _holds_data_files(name_or_path):
        dataset = load_dataset("imagefolder", data_dir=name_or_path, cache_dir=cache_dir, streaming=streaming)
    else:  # a Hub id, or a folder of Parquet/Arrow/CSV/JSON files (temporary, hidden files are ignored)
        dataset = load_dataset(name_or_path, config_name, cache_dir=cache_dir, streaming=streaming)
    if isinstance(dataset, Dataset):
        dataset = DatasetDict({"train": dataset})
    return dataset


DATA_FILE_EXTENSIONS = (".parquet", ".arrow", ".csv", ".json", ".jsonl")


def _holds_data_files(path: str) -> bool:
    """Whether a folder holds tabular data files (in it or its ``data/``) rather than images."""
    for folder in (path, os.path.join(path, "data")):
        if os.path.isdir(folder) and any(not name.startswith(".") and name.endswith(DATA_FILE_EXTENSIONS)
                                         and name != "metadata.csv" and name != "metadata.jsonl"
                                         for name in os.listdir(folder)):
            return True
    return False


def _is_saved_dataset(path: str) -> bool:
    return os.path.exists(os.path.join(path, "dataset_dict.json")) or os.path.exists(
        os.path.join(path, "state.json"))


UNLABELLED = -1
"""The label ``datasets`` (and the Hub's test splits) give an image without one."""
IGNORED_LABEL = -100
"""What an unlabelled image's label becomes in a batch: the index cross-entropy ignores."""

def label_values(dataset: Dataset, label_column: str) -> np.ndarray:
    """The label column as an array, read from Arrow without decoding any image."""
    return np.asarray(dataset.select_columns([label_column]).with_format("numpy")[label_column])


def unlabelled_rows(dataset: Dataset, label_column: str) -> int:
    values = label_values(dataset, label_column)
    return int((values == UNLABELLED).sum()) if values.dtype.kind in "iu" else 0


def encode_string_labels(splits: list[Dataset], label_column: str | None) -> list[Dataset]:
    """Splits whose labels are strings, with a ``ClassLabel`` of the sorted names of all of them
    (the same ids in every split); other splits as they are."""
    if label_column is None or not splits or label_column not in splits[0].features:
        return splits
    feature = splits[0].features[label_column]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        return splits
    names = sorted({str(v) for split in splits for v in split.unique(label_column)})
    logger.info("labels are strings: encoded as %d classes in sorted order", len(names))
    return [split.cast_column(label_column, ClassLabel(names=names)) for split in splits]


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


@dataclass
class ImageTransform:
    """``datasets`` on-the-fly transform: image cells to (3, H, W) floats in [0, 1] at the model's
    input (``images.ImageResizer``: the model's processor without normalisation, or a size).

    ``image_column`` becomes ``pixel_values`` and ``label_column`` ``labels``; ``extra_images``
    maps further image columns to output names (an offline DAD image beside its clean one), and
    ``extra_columns`` are passed on as tensors (stored teacher logits). A row whose image does
    not decode gets ``pixel_values=None`` and a ``bad_image``; ``collate_images`` leaves it out.
    The image columns must be undecoded (``prepare_dataset`` casts them).
    """
    image_column: str
    label_column: str | None
    resizer: ImageResizer
    extra_images: dict[str, str] | None = None
    extra_columns: tuple[str, ...] = ()
    pixel_dtype: torch.dtype = torch.float32

    def __call__(self, batch: dict) -> dict:
        columns = {self.image_column: PIXELS, **(self.extra_images or {})}
        rows = len(batch[self.image_column])
        bad: list[BadImage | None] = [None] * rows
        decoded = {}
        for column, name in columns.items():
            images = []
            for i, cell in enumerate(batch[column]):
                image, problem = decode_rgb(cell)
                images.append(image)
                bad[i] = bad[i] or problem
            decoded[name] = images
        good = [i for i in range(rows) if bad[i] is None]
        out = {}
        for name, images in decoded.items():
            resized = self.resizer([images[i] for i in good])
            pixels = iter(to_uint8(p) for p in resized) if self.pixel_dtype == torch.uint8 else iter(resized)
            out[name] = [next(pixels) if bad[i] is None else None for i in range(rows)]
        out["bad_image"] = bad
        for column in self.extra_columns:
            out[column] = [torch.as_tensor(v, dtype=torch.float32) for v in batch[column]]
        if self.label_column is not None:
            out[LABELS] = batch[self.label_column]
        return out


def prepare_dataset(dataset: Dataset, size_or_processor, image_column: str | None = None,
                    label_column: str | None = None, extra_images: dict[str, str] | None = None,
                    extra_columns: tuple[str, ...] = (), *, augmentation=None, seed: int = 0,
                    shared_draws: bool = True, pixel_dtype: torch.dtype = torch.float32):
    """The dataset, decoding on access, yielding ``pixel_values`` (and ``labels``, and the
    ``extra_images`` / ``extra_columns`` of ``ImageTransform``).

    ``size_or_processor``: the model's image processor (its resize, crop and resample, exactly
    as ``pipeline("image-classification")`` applies them) or an (H, W) size.

    With an active ``augmentation`` (``AugmentationSettings``) the rows are training images as timm
    makes them, from the original image (``AugmentedImages``: draws seeded by ``seed``, the epoch and the
    row; ``shared_draws``: an extra image, an offline DAD image, is drawn as its clean image is).
    ``pixel_dtype=torch.uint8`` gives 8-bit pixels, a quarter of the bytes across the bus; the
    trainer turns them into the processor's own floats on the device."""
    image_column, label_column = find_columns(dataset, image_column, label_column)
    for column in [image_column, *(extra_images or {})]:
        if isinstance(dataset.features.get(column), ImageFeature) and dataset.features[column].decode:
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
    resizer = size_or_processor if isinstance(size_or_processor, ImageResizer) else ImageResizer(size_or_processor)
    if augmentation is not None and augmentation.active:
        return AugmentedImages(dataset, image_column, label_column, TrainingTransform.for_resizer(augmentation, resizer),
                               frame=resizer, seed=seed,
                               extra_images=extra_images, extra_columns=tuple(extra_columns), shared=shared_draws,
                               pixel_dtype=pixel_dtype)
    return dataset.with_transform(ImageTransform(image_column, label_column, resizer, extra_images=extra_images,
                                                 extra_columns=tuple(extra_columns), pixel_dtype=pixel_dtype))


def collate_images(examples: list[dict]) -> dict:
    """Stacks ``pixel_values`` (B, 3, H, W) in [0, 1] and every other tensor field; ``labels``
    become a (B,) long tensor. Rows whose image did not decode are left out and listed under
    ``bad_images`` (after every tensor, so batch-size lookups find ``pixel_values`` first); a
    batch of bad images only holds nothing else."""
    good = [e for e in examples if e.get("bad_image") is None]
    batch = {}
    for key, value in (good[0].items() if good else ()):
        if key == LABELS:  # datasets' unlabelled -1 becomes the -100 losses ignore
            labels = torch.tensor([e[key] for e in good], dtype=torch.long)
            batch[key] = labels.masked_fill(labels == UNLABELLED, IGNORED_LABEL)
        elif isinstance(value, torch.Tensor):
            batch[key] = torch.stack([e[key] for e in good])
    bad = [e["bad_image"] for e in examples if e.get("bad_image") is not None]
    if bad:
        batch[BAD_IMAGES] = bad
    return batch


def check_dataset_reachable(name: str, config: str | None = None) -> None:
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        if not os.path.exists(os.path.expanduser(name)):
            raise ValueError(f"no folder {name!r}")
        return
    from datasets import load_dataset_builder

    try:
        load_dataset_builder(name, config)
    except Exception as error:  # datasets raises many types for an unreachable or unknown dataset
        raise ValueError(f"cannot find the dataset {name!r}: {type(error).__name__}: {str(error).splitlines()[0]}"
                         + (" (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set: only cached datasets load)"
                            if _offline() else "")) from None


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def read_class_names_file(path: str) -> list[str]:
    """Class names, one per line (or a JSON list), in label order."""
    if not os.path.isfile(path):
        raise ValueError(f"no file {path!r}")
    with open(path) as f:
        text = f.read()
    names = json.loads(text) if text.lstrip().startswith("[") else [line.strip() for line in text.splitlines()]
    names = [str(n) for n in names if str(n).strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path} names a class twice")
    if not names:
        raise ValueError(f"{path} holds no class names")
    return names


def check_labels(labels: np.ndarray, num_classes: int | None, split: str, *, for_accuracy: bool,
                 for_training: bool = False) -> str | None:
    """Labels are class ids in range; a split scored for accuracy has no unlabelled (-1) image;
    a training split a label-using loss reads is not unlabelled throughout. Returns a note for
    the user, or ``None``."""
    if labels.dtype.kind not in "iu":
        raise ValueError(f"the labels of the {split} are {labels.dtype} values, not class ids: give --label_column "
                         "a ClassLabel, integer or string column")
    unlabelled = int((labels == UNLABELLED).sum())
    if unlabelled and for_accuracy:
        raise ValueError(f"{unlabelled} of the {len(labels)} images of the {split} are unlabelled (label "
                         f"{UNLABELLED}), so its accuracy would count them as errors: choose a labelled split with "
                         "--eval_split, or leave it unset to hold out 10% of the training split")
    if unlabelled == len(labels) and for_training:
        raise ValueError(f"every image of the {split} is unlabelled (label {UNLABELLED}), but a cross-entropy term "
                         "reads labels: set ce_weight and dad_ce_weight to 0, or use labelled data")
    valid = labels[labels != UNLABELLED]
    if num_classes is not None and valid.size and (valid.min() < 0 or valid.max() >= num_classes):
        out = valid[(valid < 0) | (valid >= num_classes)]
        raise ValueError(f"the {split} has labels outside 0-{num_classes - 1} (e.g. {int(out[0])}) for its "
                         f"{num_classes} classes: fix --label_column or the class names")
    if unlabelled:
        return f"{unlabelled} of the {len(labels)} images of the {split} are unlabelled: label-using terms skip them"
    return None
