"""The teacher's outputs computed once (``--cache_teacher``) and read back in every epoch.

When the teacher's view is fixed (the clean image: no random augmentation reaches it), what the
losses read of it (logits, the final [CLS] embedding, the distilled layers' tokens and attention
maps) is the same in every epoch. ``build_teacher_cache`` computes it in one pass over the
training set into a ``datasets`` cache keyed by (teacher, data fingerprint, layers, input size,
dtype), written in shards that appear only when complete, so an interrupted build resumes.
``CachedTeacherDataset`` puts each row's outputs beside its image, and the trainer reads them
instead of running the teacher.
"""

from __future__ import annotations

import hashlib
import json
import os

import datasets
import torch

PREFIX = "teacher_"
COMPLETE = "teacher_cache.json"


def cache_key(teacher: torch.nn.Module, fingerprint: str, token_layers, attention_layers, rows: str,
              size: tuple[int, int], dtype: torch.dtype) -> str:
    """A digest of everything the cached outputs depend on, the teacher's weights included."""
    digest = hashlib.sha256()
    config = getattr(teacher, "config", None)
    digest.update((config.to_json_string() if config is not None else type(teacher).__name__).encode())
    with torch.no_grad():
        for name, p in sorted(teacher.state_dict().items()):
            digest.update(name.encode())
            digest.update(f"{float(p.double().sum()):.10e}".encode())
    digest.update(json.dumps([fingerprint, list(token_layers), list(attention_layers), rows, list(size),
                              str(dtype)]).encode())
    return digest.hexdigest()[:16]


def _columns(features, token_layers, attention_layers) -> dict[str, torch.Tensor]:
    columns = {}
    if features.logits is not None:
        columns[f"{PREFIX}logits"] = features.logits
    if features.cls is not None:
        columns[f"{PREFIX}cls"] = features.cls
    for i in token_layers:
        columns[f"{PREFIX}tokens_{i}"] = features.tokens[i]
    for i in attention_layers:
        columns[f"{PREFIX}attention_{i}"] = features.attentions[i]
    return columns


def _feature(shape: tuple[int, ...]):
    """A fixed-shape float32 column, which Arrow stores flat and reads back as one array (nested
    lists of arbitrary length would be decoded element by element)."""
    if len(shape) == 1:
        return datasets.Sequence(datasets.Value("float32"), length=shape[0])
    return getattr(datasets, f"Array{len(shape)}D")(shape=tuple(shape), dtype="float32")


def build_teacher_cache(run_teacher, dataset, folder: str, token_layers, attention_layers, batch_size: int = 64,
                        shard_size: int = 1024, device=None) -> datasets.Dataset:
    """``run_teacher(pixels) -> Features`` over ``dataset`` in order, written to ``folder`` in
    shards; shards already complete are kept, so a build stopped half-way resumes."""
    os.makedirs(folder, exist_ok=True)
    shards = []
    for start in range(0, len(dataset), shard_size):
        path = os.path.join(folder, f"shard-{start // shard_size:05d}")
        if not os.path.isfile(os.path.join(path, "dataset_info.json")):
            rows: list[dict | None] = []  # None: an image that does not decode (never read in training)
            for first in range(start, min(start + shard_size, len(dataset)), batch_size):
                batch = [dataset[i] for i in range(first, min(first + batch_size, start + shard_size, len(dataset)))]
                good = [row for row in batch if "pixel_values" in row]
                outputs = iter(())
                if good:
                    pixels = torch.stack([row["pixel_values"] for row in good]).to(device)
                    with torch.no_grad():
                        columns = _columns(run_teacher(pixels), token_layers, attention_layers)
                    outputs = iter([{k: v[j].float().cpu().numpy() for k, v in columns.items()}
                                    for j in range(len(good))])
                rows.extend(next(outputs) if "pixel_values" in row else None for row in batch)
            known = next((row for row in rows if row is not None), None)
            if known is None:
                raise ValueError(f"no image of rows {start}..{start + len(rows) - 1} decodes: nothing to cache")
            filled = [row if row is not None else {k: v * 0 for k, v in known.items()} for row in rows]
            features = datasets.Features({k: _feature(v.shape) for k, v in known.items()})
            datasets.Dataset.from_dict({k: [row[k] for row in filled] for k in known}, features=features).save_to_disk(
                path + ".tmp")
            os.replace(path + ".tmp", path)
        shards.append(datasets.load_from_disk(path))
    cache = datasets.concatenate_datasets(shards).with_format("torch")
    with open(os.path.join(folder, COMPLETE), "w") as f:
        json.dump({"rows": len(cache), "columns": cache.column_names}, f)
    return cache


ROW = "teacher_cache_row"


class CachedTeacherDataset(torch.utils.data.Dataset):
    """The training set with each row's index in the teacher cache beside its image: the trainer
    reads a whole batch's outputs at once (``read_rows``), one Arrow slice per step."""

    def __init__(self, dataset, cache: datasets.Dataset):
        if len(dataset) != len(cache):
            raise ValueError(f"the teacher cache has {len(cache)} rows for {len(dataset)} training images")
        self.dataset, self.cache = dataset, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], ROW: torch.tensor(index)}

    @property
    def column_names(self) -> list[str]:
        return list(getattr(self.dataset, "column_names", [])) + [ROW]


def read_rows(cache: datasets.Dataset, rows: torch.Tensor, device) -> dict[str, torch.Tensor]:
    """The cached outputs of a batch's rows, on ``device``."""
    values = cache[rows.tolist()]
    return {name: value.to(device, non_blocking=True) for name, value in values.items()}
