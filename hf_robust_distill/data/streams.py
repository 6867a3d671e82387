"""Training data too big to copy: a ``datasets`` stream (a Hub id, or a local folder of Parquet/Arrow
shards) read as the run goes, never copied first.

- The training split is read file by file (its shards), each file in windows of ``shuffle_buffer`` rows
  shuffled by (seed, epoch, file, window): a shuffle buffer whose whole state is a position, so a
  resumed stream (``datasets``' own state, saved beside each checkpoint) continues exactly where the
  uninterrupted one would, where a ``datasets`` shuffle buffer loses its rows on a resume. Another
  epoch gives other windows' orders.
- accelerate gives each process whole shards (``prepare_data_loader`` shards a ``datasets`` stream, as
  ``split_dataset_by_node`` does, once ``dispatch_batches`` is off rather than every batch dispatched
  from process 0): the shards must divide evenly among the processes, or the ranks would run
  different numbers of steps.
- ``StreamCollator`` makes each row's training pixels in the loader's workers: the processor's path,
  or timm's transform with draws seeded by (seed, epoch, the image's bytes), since a stream has no row
  index that does not depend on the workers. 8-bit pixels out.
- The evaluation split, small, is read once from the stream into a ``Dataset``: the robustness report
  needs it whole.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
from datasets import Dataset, Features, Image as ImageFeature, IterableDataset, IterableDatasetDict

from .augmentation import AugmentationSettings, TrainingTransform, draw_seed
from .columns import LABELS, PIXELS
from .datasets import DEMO_DATASET, collate_images, load_image_dataset
from .images import ImageResizer, decode_rgb, to_uint8
from .training_set import training_pixels

SHUFFLE_BUFFER = 10_000


def load_stream(name_or_path: str | None, config_name: str | None = None) -> IterableDatasetDict:
    """The dataset as a stream: a Hub id, or a local folder of data files (Parquet, Arrow) or images."""
    if name_or_path in (None, "", DEMO_DATASET):
        raise ValueError("--streaming reads a Hub id or a local folder of Parquet/Arrow shards; the embedded digits "
                         "are not a stream: name the dataset, or drop --streaming")
    if os.path.isdir(name_or_path) and any(os.path.exists(os.path.join(name_or_path, f))
                                           for f in ("dataset_dict.json", "state.json")):
        raise ValueError(f"{name_or_path} is a dataset saved with save_to_disk, already on this disk: drop "
                         "--streaming (it is memory-mapped, not copied)")
    return load_image_dataset(name_or_path, config_name, streaming=True)


def check_shards(stream: IterableDataset, world_size: int) -> None:
    """Every process gets the same number of shards, so every rank runs the same number of steps."""
    if world_size > 1 and stream.n_shards % world_size:
        raise ValueError(f"the streamed training split has {stream.n_shards} shards, which {world_size} processes "
                         f"cannot share evenly (each rank would run a different number of steps): launch a number of "
                         f"processes that divides {stream.n_shards}, or write the data as a multiple of {world_size} "
                         "Parquet files (Dataset.to_parquet per shard)")


def read_whole(stream: IterableDataset, limit: int | None = None) -> Dataset:
    """A stream's rows (the first ``limit``) as a ``Dataset``, its features kept: the evaluation split."""
    rows = stream.take(limit) if limit else stream
    column = _image_column(rows)
    raw = rows.cast_column(column, ImageFeature(decode=False)) if column else rows
    whole = Dataset.from_list(list(raw), features=raw.features)
    return whole.cast_column(column, ImageFeature()) if column else whole


def prepare_stream(name_or_path: str, config_name: str | None, split: str, size_or_processor, image_column: str,
                   label_column: str | None, *, augmentation: AugmentationSettings | None = None, seed: int = 0,
                   shuffle_buffer: int = SHUFFLE_BUFFER, max_rows: int | None = None) -> IterableDataset:
    """The training stream of ``split``: its files' undecoded rows, each file shuffled in windows of
    ``shuffle_buffer`` rows by (seed, epoch, file, window), and, as ``.collator``, the ``StreamCollator``
    that makes their pixels in the workers (the trainer uses it; it shares the stream's epoch)."""
    files = stream_files(name_or_path, config_name, split)
    features = load_stream(name_or_path, config_name)[split].features
    columns = [c for c in (image_column, label_column) if c]
    features = Features({c: ImageFeature(decode=False) if c == image_column else features[c] for c in columns})
    epoch = torch.zeros((), dtype=torch.int64).share_memory_()
    rows = IterableDataset.from_generator(_windows, features=features, gen_kwargs=dict(
        files=files, columns=tuple(columns), seed=seed, window=max(int(shuffle_buffer), 1), epoch=epoch))
    rows = rows.take(max_rows) if max_rows else rows
    resizer = size_or_processor if isinstance(size_or_processor, ImageResizer) else ImageResizer(size_or_processor)
    rows.collator = StreamCollator(image_column, label_column, resizer, augmentation, seed, epoch=epoch)
    return rows


def stream_files(name_or_path: str, config_name: str | None, split: str) -> list[str]:
    """The data files of ``split`` (local paths, or the Hub's), as ``datasets`` resolves them."""
    from datasets import load_dataset_builder

    files = load_dataset_builder(name_or_path, config_name).config.data_files or {}
    if split not in files or not files[split]:
        raise ValueError(f"{name_or_path} has no data files for its {split!r} split (it has {list(files)})")
    found = list(files[split])
    unread = [f for f in found if not f.endswith((".parquet", ".arrow"))]
    if unread:
        raise ValueError(f"--streaming reads Parquet or Arrow shards; {unread[0]} is neither")
    return found


def _windows(files: list[str], columns: tuple[str, ...], seed: int, window: int, epoch: torch.Tensor):
    """Each file's rows, ``window`` at a time, each window in the order (seed, epoch, file, window) draws;
    ``files`` is the one list among the arguments, which ``datasets`` shards the stream by."""
    for path in files:
        name = int.from_bytes(hashlib.sha1(os.path.basename(path).encode()).digest()[:4], "little")
        for number, rows in enumerate(_file_windows(path, columns, window)):
            order = np.random.default_rng([seed, int(epoch), name, number]).permutation(len(rows))
            yield from (rows[i] for i in order)


def _file_windows(path: str, columns: tuple[str, ...], window: int):
    """The file's rows as lists of ``window`` dicts (the last one shorter), read without decoding images."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as f:
        if path.endswith(".parquet"):
            batches = pq.ParquetFile(f).iter_batches(batch_size=window, columns=list(columns))
        else:
            batches = pa.ipc.open_stream(f)
        pending: list[dict] = []
        for batch in batches:
            pending += batch.select(list(columns)).to_pylist()
            while len(pending) >= window:
                yield pending[:window]
                pending = pending[window:]
        if pending:
            yield pending


class StreamCollator:
    """A batch of undecoded stream rows as the trainer reads it, made in the loader's workers: each
    image decoded as the pipeline decodes it, then the processor's resize and crop, or timm's training
    transform with draws seeded by (seed, epoch, a hash of the image's bytes). ``set_epoch`` reaches
    the workers through shared memory."""

    def __init__(self, image_column: str, label_column: str | None, resizer: ImageResizer,
                 augmentation: AugmentationSettings | None, seed: int, epoch: torch.Tensor | None = None):
        self.image_column, self.label_column, self.resizer, self.seed = image_column, label_column, resizer, seed
        active = augmentation is not None and augmentation.active
        self.transform = TrainingTransform.for_resizer(augmentation, resizer) if active else None
        self._epoch = epoch if epoch is not None else torch.zeros((), dtype=torch.int64).share_memory_()
        self.decoded = torch.zeros((), dtype=torch.int64).share_memory_()  # images made so far, all workers

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __call__(self, rows: list[dict]) -> dict:
        return collate_images([self._example(row) for row in rows])

    def _example(self, row: dict) -> dict:
        cell = row[self.image_column]
        image, bad = decode_rgb(cell)
        example = {"bad_image": bad, PIXELS: None if bad else self._pixels(image, cell)}
        if self.label_column is not None:
            example[LABELS] = row[self.label_column]
        self.decoded.add_(1)
        return example

    def _pixels(self, image, cell) -> torch.Tensor:
        if self.transform is not None:
            key = int.from_bytes(hashlib.sha1(_bytes_of(cell)).digest()[:8], "little")
            return training_pixels(image, self.transform, self.resizer, draw_seed(self.seed, int(self._epoch), key),
                                   in_frame=not self.transform.settings.random_resized_crop)
        return to_uint8(self.resizer([image])[0])


def _bytes_of(cell) -> bytes:
    if isinstance(cell, dict):
        if cell.get("bytes") is not None:
            return cell["bytes"]
        return str(cell.get("path")).encode()
    return cell.tobytes() if hasattr(cell, "tobytes") else repr(cell).encode()


def _image_column(stream) -> str | None:
    features = stream.features or {}
    return next((name for name, feature in features.items() if isinstance(feature, ImageFeature)), None)
