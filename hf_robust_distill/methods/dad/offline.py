"""Offline DAD: ``generate_dad_dataset`` makes the DAD images of a whole dataset once and writes a
``datasets`` dataset in Parquet shards (``data/train-XXXXX-of-YYYYY.parquet``): resumable shard by
shard, one writer per shard across processes, labels copied from the source row, never re-derived.
``pair_with_dad`` joins them to the training set row by row."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict

import numpy as np
import torch
from accelerate import PartialState
from datasets import (ClassLabel, Dataset, Features, Image as ImageFeature, List, Value, concatenate_datasets,
                      load_dataset)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ...data.columns import (BAD_IMAGES, DAD_IMAGE, LABELS, PIXELS, STORED_TEACHER_LOGITS, TEACHER_LOGITS_CLEAN,
                             TEACHER_LOGITS_DAD)
from ...data.datasets import collate_images, find_columns, load_image_dataset, prepare_dataset
from ...data.images import ImageResizer, to_uint8
from .attacks import classifier_logits
from .online import AttackSettings, Stopwatch, dad_images

logger = logging.getLogger(__name__)


MANIFEST = "dad_generation.json"


def _seeded(device: torch.device, *entropy: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] to (B, H, W, 3) 8-bit, the form the Image feature stores losslessly (PNG)."""
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


def shard_file(output_dir: str, shard: int, num_shards: int) -> str:
    return os.path.join(output_dir, "data", f"train-{shard:05d}-of-{num_shards:05d}.parquet")


class _WithRowIndex(torch.utils.data.Dataset):
    """Rows of a prepared dataset with their index, so rows whose image did not decode can be skipped."""
    def __init__(self, dataset, rows: range):
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[self.rows[i]], "row_index": torch.tensor(self.rows[i])}


class DADGenerator:
    """Writes the DAD image of every row of ``dataset``; see ``generate_dad_dataset``."""

    def __init__(self, teacher, discretizer, dataset: Dataset, output_dir: str, image_size, *,
                 image_column: str | None = None, label_column: str | None = None,
                 attack: AttackSettings | None = None, batch_size: int = 64, shard_size: int = 1024,
                 teacher_logits: bool = False, seed: int = 0, num_workers: int = 0, state=None,
                 progress: bool = True, autocast: torch.dtype | None = None):
        self.teacher, self.discretizer = teacher, discretizer
        self.autocast = autocast  # the teacher and the VQ model run under it (the code search stays float32)
        self.output_dir = output_dir
        self.image_column, self.label_column = find_columns(dataset, image_column, label_column)
        self.resizer = image_size if isinstance(image_size, ImageResizer) else ImageResizer(image_size)
        self.source = prepare_dataset(dataset, self.resizer, self.image_column, self.label_column)
        self.label_feature = dataset.features[self.label_column] if self.label_column else None
        self.image_size = self.resizer.size
        self.attack = attack or AttackSettings.offline()
        self.batch_size, self.shard_size, self.num_workers = batch_size, shard_size, num_workers
        self.teacher_logits, self.seed, self.progress = teacher_logits, seed, progress
        self.state = state or PartialState()
        self.num_shards = max(1, math.ceil(len(dataset) / shard_size))
        self.stopwatch = Stopwatch()
        self.images_done = 0
        self.written: list[int] = []  # shards this process wrote in this run

    # ---- what is written ----------------------------------------------------------------------

    def features(self) -> Features:
        columns = {"image": ImageFeature(), "index": Value("int64")}
        if self.label_column is not None:
            label = self.label_feature if isinstance(self.label_feature, ClassLabel) else Value("int64")
            columns["label"] = label
        if self.teacher_logits:
            columns[TEACHER_LOGITS_CLEAN] = List(Value("float32"))
            columns[TEACHER_LOGITS_DAD] = List(Value("float32"))
        return Features(columns)

    def manifest(self) -> dict:
        return {"num_rows": len(self.source), "shard_size": self.shard_size, "num_shards": self.num_shards,
                "batch_size": self.batch_size,  # randomness is drawn per (shard, batch)
                "image_size": list(self.image_size), "decoding": self.resizer.key, "attack": asdict(self.attack),
                "seed": self.seed,
                "teacher_logits": self.teacher_logits, "label_column": self.label_column}

    def _check_manifest(self) -> None:
        """A resumed run must continue the same generation, not mix two."""
        path = os.path.join(self.output_dir, MANIFEST)
        manifest = self.manifest()
        if os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f)
            if saved != manifest:
                raise ValueError(f"{self.output_dir} holds a DAD generation with other settings "
                                 f"({saved}); use another output_dir or the same settings to resume it")
            return
        if self.state.is_main_process:
            tmp = temporary_file(path)
            with open(tmp, "w") as f:
                json.dump(manifest, f, indent=2)
            os.replace(tmp, path)

    # ---- the work -------------------------------------------------------------------------------

    def my_shards(self) -> list[int]:
        """Shards of this process: every ``num_processes``-th, so no two processes share a file."""
        return list(range(self.state.process_index, self.num_shards, self.state.num_processes))

    def _rows(self, shard: int) -> range:
        return range(shard * self.shard_size, min(len(self.source), (shard + 1) * self.shard_size))

    def run(self) -> Dataset:
        os.makedirs(os.path.join(self.output_dir, "data"), exist_ok=True)
        if self.state.is_main_process:
            remove_temporary_files(self.output_dir)
        self.state.wait_for_everyone()
        self._check_manifest()
        shards = self.my_shards()
        todo = [s for s in shards if not os.path.isfile(shard_file(self.output_dir, s, self.num_shards))]
        done_rows = sum(len(self._rows(s)) for s in shards if s not in todo)
        if done_rows:
            logger.info("resuming: %d of this process's shards are already written", len(shards) - len(todo))
        total = sum(len(self._rows(s)) for s in shards)
        with tqdm(total=total, initial=done_rows, desc="DAD images", unit="img",
                  disable=not (self.progress and self.state.is_local_main_process)) as bar, \
                torch.autocast(self.discretizer.device.type, dtype=self.autocast or torch.float32,
                               enabled=self.autocast is not None):
            for shard in todo:
                self._write_shard(shard, bar)
        self.state.wait_for_everyone()
        return load_dad_dataset(self.output_dir)

    def _write_shard(self, shard: int, bar) -> None:
        rows = self._rows(shard)
        loader = DataLoader(_WithRowIndex(self.source, rows), batch_size=self.batch_size, shuffle=False,
                            collate_fn=collate_images, num_workers=self.num_workers)
        columns: dict[str, list] = {name: [] for name in self.features()}
        device = self.discretizer.device
        watch = self.stopwatch
        batches = iter(loader)
        for batch_index in range(len(loader)):
            with watch.section("load"):  # decoding and resizing happen as the batch is drawn
                batch = next(batches)
                for bad in batch.get(BAD_IMAGES, ()):
                    logger.warning("skipping a row whose image does not decode: %s", bad)
                if PIXELS not in batch:
                    continue
                images = batch[PIXELS].to(device)
                labels = batch[LABELS].to(device) if LABELS in batch else None
            generator = _seeded(device, self.seed, shard, batch_index)
            dad = dad_images(self.teacher, self.discretizer, images, labels, self.attack, generator, watch)
            if self.teacher_logits:
                with watch.section("teacher", device), torch.no_grad():
                    for column, pixels in ((TEACHER_LOGITS_CLEAN, images), (TEACHER_LOGITS_DAD, dad)):
                        columns[column].extend(classifier_logits(self.teacher, pixels).float().cpu().tolist())
            columns["image"].extend(_to_uint8(dad))
            columns["index"].extend(batch["row_index"].tolist())
            if labels is not None:
                columns["label"].extend(batch[LABELS].tolist())
            self.images_done += len(images)
            bar.update(len(images))
        with watch.section("write"):
            path = shard_file(self.output_dir, shard, self.num_shards)
            tmp = temporary_file(path, self.state.process_index)
            Dataset.from_dict(columns, features=self.features()).to_parquet(tmp)
            os.replace(tmp, path)  # a shard appears whole or not at all
        self.written.append(shard)


def temporary_file(path: str, process_index: int = 0) -> str:
    """A hidden name beside ``path`` (``datasets`` ignores files starting with a dot) for a file
    being written; renamed to ``path`` when complete."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp-{process_index}-{os.getpid()}")


def remove_temporary_files(output_dir: str) -> list[str]:
    """Deletes what an interrupted generation left half-written in ``output_dir``; returns the paths."""
    removed = []
    for folder in (output_dir, os.path.join(output_dir, "data")):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if ".tmp-" in name and (name.startswith(".") or ".parquet.tmp-" in name or ".json.tmp-" in name):
                os.remove(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
    if removed:
        logger.info("removed %d temporary file(s) an interrupted generation left", len(removed))
    return removed


def load_dad_dataset(output_dir: str) -> Dataset:
    """The generated DAD dataset, rows in source order."""
    with open(os.path.join(output_dir, MANIFEST)) as f:
        num_shards = json.load(f)["num_shards"]
    files = [shard_file(output_dir, s, num_shards) for s in range(num_shards)]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {num_shards} shards are missing (first: {missing[0]}); "
                                "run the generation again with the same settings to finish it")
    return load_dataset("parquet", data_files={"train": files}, split="train")


def load_dad_source(name_or_path: str) -> Dataset:
    """An offline DAD dataset from wherever it lies: a folder ``generate_dad_dataset`` wrote (its
    shards, in order), a dataset saved with ``save_to_disk``, a folder of its Parquet files, or a
    Hub dataset id; temporary files an interrupted run left are ignored."""
    if os.path.isfile(os.path.join(name_or_path, MANIFEST)):
        return load_dad_dataset(name_or_path)
    if os.path.exists(name_or_path) and not os.path.isdir(name_or_path):
        raise ValueError(f"--dad_dataset {name_or_path!r} is a file; give the folder generate_dad_dataset wrote, a "
                         "saved dataset or a Hub id")
    splits = load_image_dataset(name_or_path)
    if "train" not in splits:
        raise ValueError(f"{name_or_path} has no 'train' split (it has {list(splits)})")
    dad = splits["train"]
    missing = [c for c in ("image", "index") if c not in dad.column_names]
    if missing:
        raise ValueError(f"{name_or_path} is not a DAD dataset: it has no {' or '.join(missing)} column; make one with "
                         "generate_dad_dataset (recipes/dad.py --dad_mode offline without --dad_dataset)")
    return dad


def generate_dad_dataset(teacher, discretizer, dataset: Dataset, output_dir: str, image_size: tuple[int, int], *,
                         image_column: str | None = None, label_column: str | None = None,
                         attack: AttackSettings | None = None, batch_size: int = 64, shard_size: int = 1024,
                         teacher_logits: bool = False, seed: int = 0, num_workers: int = 0,
                         push_to_hub: str | None = None, token: str | None = None, state=None,
                         progress: bool = True, autocast: torch.dtype | None = None) -> Dataset:
    """DAD images of every row of ``dataset``, written to ``output_dir`` and returned as a
    ``datasets.Dataset`` with columns ``image`` (8-bit PNG), ``index`` (the source row),
    ``label`` (copied from the source, same ``ClassLabel``) and, with ``teacher_logits=True``,
    ``teacher_logits_clean`` and ``teacher_logits_dad`` so training can skip the teacher.

    ``teacher`` maps [0, 1] images to logits (``CLIPZeroShotClassifier`` or
    ``models.PixelSpaceClassifier``); ``discretizer`` is a ``VQDiscretizer`` on the device to use.
    Images are decoded at ``image_size``. The attack defaults to the official offline settings.

    Rows are written in shards of ``shard_size``; a shard file appears only when complete, so an
    interrupted run, started again with the same settings, skips finished shards and redoes
    none twice. Each shard's randomness depends only on ``seed`` and its position, so the rows
    are the same however the work was split. Under ``accelerate launch`` each process writes
    every ``num_processes``-th shard. ``load_dataset(output_dir)`` reads the result; with
    ``push_to_hub`` the main process also pushes it as a Hub dataset. ``autocast``: the dtype the
    teacher and VQ model compute in (bf16 on a GPU under mixed precision; ``None``: their own).
    """
    generator = DADGenerator(teacher, discretizer, dataset, output_dir, image_size, image_column=image_column,
                             label_column=label_column, attack=attack, batch_size=batch_size, shard_size=shard_size,
                             teacher_logits=teacher_logits, seed=seed, num_workers=num_workers, state=state,
                             progress=progress, autocast=autocast)
    result = generator.run()
    if push_to_hub and generator.state.is_main_process:
        result.push_to_hub(push_to_hub, token=token)
    return result


def pair_with_dad(train: Dataset, dad: Dataset, max_missing_fraction: float = 0.01) -> Dataset:
    """``train`` with its DAD images beside it (column ``dad_image``, plus stored teacher logits),
    matched row by row through the ``index`` column; labels must agree exactly. Rows the
    generation skipped (their image did not decode, at most ``max_missing_fraction``) are left
    out of the result."""
    if "index" not in dad.column_names:
        raise ValueError("the DAD dataset has no 'index' column; generate it with generate_dad_dataset")
    indices = np.asarray(dad.with_format("numpy")["index"], dtype=np.int64)
    if np.any(np.diff(indices) <= 0):
        raise ValueError("the DAD dataset's rows are not in source order; regenerate it")
    covered = int(np.searchsorted(indices, len(train)))  # rows of this training split
    missing = len(train) - covered
    if missing > max_missing_fraction * len(train):
        raise ValueError(f"the DAD dataset has rows for {covered} of the {len(train)} training rows; generate it from "
                         "the same training split")
    dad = dad.select(range(covered))
    if missing:
        logger.warning("%d training rows have no DAD image (their image did not decode): left out", missing)
        train = train.select(indices[:covered].tolist())
    _, label_column = find_columns(train)
    if label_column is not None and "label" in dad.column_names and dad["label"] != train[label_column]:
        raise ValueError("the DAD dataset's labels differ from the training labels: it was generated from "
                         "another split or order of the data")
    keep = [c for c in ("image", *STORED_TEACHER_LOGITS) if c in dad.column_names]
    dad = dad.select_columns(keep).rename_column("image", DAD_IMAGE)
    return concatenate_datasets([train, dad], axis=1)
