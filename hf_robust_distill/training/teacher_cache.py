"""The teacher's outputs computed once (``--cache_teacher``) and read back in every epoch.

When the teacher's view is fixed (the clean image: no random augmentation reaches it), what the
losses read of it (logits, the final [CLS] embedding, the distilled layers' tokens and attention
maps, the [CLS] rows alone with ``--attn_rows cls``) is the same in every epoch.
``build_teacher_cache`` computes it in one pass over the training set, every process writing its
share of the shards (a sharded teacher runs in step on every process), into a folder keyed by
(teacher, data fingerprint, layers, rows, input size, dtype). It is stored in the teacher's
inference dtype (bf16 as its bits), one ``.npy`` file per output and shard, written whole or not
at all, so a stopped build resumes; a build the disk cannot hold is refused before it starts.

Training reads a batch's rows in its collator (``TeacherCacheCollator``, in the data loader's
workers), one memory-mapped gather per shard, as tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil

import numpy as np
import torch
from accelerate import PartialState

from ..data.columns import PIXELS, TEACHER_CACHE_PREFIX as PREFIX
from .launchers import whole_tensors

ROW = "teacher_cache_row"
MANIFEST = "teacher_cache.json"
_STORAGE = {torch.float32: ("float32", np.float32), torch.float16: ("float16", np.float16),
            torch.bfloat16: ("bfloat16", np.uint16)}  # numpy has no bf16: its bits, as uint16


def cache_key(teacher: torch.nn.Module, fingerprint: str, token_layers, attention_layers, rows: str,
              size: tuple[int, int], dtype: torch.dtype) -> str:
    """A digest of everything the cached outputs depend on, the teacher's weights included (whole,
    whatever shards them: every process calls it)."""
    digest = hashlib.sha256()
    config = getattr(getattr(teacher, "module", teacher), "config", None)  # a DeepSpeed engine's model's
    digest.update((config.to_json_string() if hasattr(config, "to_json_string") else type(teacher).__name__).encode())
    with torch.no_grad():
        for name, p in sorted(whole_tensors(teacher), key=lambda item: item[0]):
            digest.update(name.encode())
            digest.update(f"{float(p.double().sum()):.10e}".encode())
    digest.update(json.dumps([fingerprint, list(token_layers), list(attention_layers), rows, list(size),
                              str(dtype)]).encode())
    return digest.hexdigest()[:16]


def output_columns(features, token_layers, attention_layers) -> dict[str, torch.Tensor]:
    """What the losses read of one teacher pass, by column name."""
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


def _stored(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def _layout(columns: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Each column's row shape and stored dtype."""
    layout = {}
    for name, tensor in columns.items():
        if tensor.dtype not in _STORAGE:
            raise ValueError(f"the teacher's {name} is {tensor.dtype}; the cache stores float32, float16 or bfloat16")
        layout[name] = {"shape": list(tensor.shape[1:]), "dtype": _STORAGE[tensor.dtype][0]}
    return layout


def row_bytes(layout: dict[str, dict]) -> int:
    """Bytes the cache takes per training image."""
    width = {"float32": 4, "float16": 2, "bfloat16": 2}
    return sum(math.prod(c["shape"]) * width[c["dtype"]] for c in layout.values())


def _gigabytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def check_disk(folder: str, layout: dict[str, dict], rows: int) -> None:
    """Refuses a build whose ``rows`` the disk under ``folder`` cannot hold (naming the fixes)."""
    need = row_bytes(layout) * rows
    free = shutil.disk_usage(folder).free
    if need > 0.95 * free:
        attention = [n for n in layout if "attention" in n]
        raise ValueError(
            f"--cache_teacher needs {_gigabytes(need)} for {rows} images ({row_bytes(layout) / 1e6:.3f} MB each) in "
            f"{folder}, and its disk has {_gigabytes(free)} free: give --teacher_cache_dir on a larger disk"
            + (", distil the [CLS] rows of attention alone (--attn_rows cls)" if attention else "")
            + ", run the teacher in bf16 (--teacher_dtype bfloat16), or train without --cache_teacher")


class TeacherCache:
    """A built cache: rows read by index, as tensors in the dtype they were computed in."""
    def __init__(self, folder: str):
        with open(os.path.join(folder, MANIFEST)) as f:
            manifest = json.load(f)
        self.folder, self.num_rows, self.shard_size = folder, manifest["rows"], manifest["shard_size"]
        self.layout = manifest["columns"]
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_rows

    @property
    def column_names(self) -> list[str]:
        return list(self.layout)

    def _array(self, shard: int, name: str) -> np.ndarray:
        key = (shard, name)
        if key not in self._arrays:  # opened where it is read (each data-loader worker maps its own)
            self._arrays[key] = np.load(os.path.join(_shard_folder(self.folder, shard), f"{name}.npy"), mmap_mode="r")
        return self._arrays[key]

    def rows(self, indices) -> dict[str, torch.Tensor]:
        """The cached outputs of training rows ``indices``, in their order."""
        indices = np.asarray(indices, dtype=np.int64)
        shards, offsets = np.divmod(indices, self.shard_size)
        out = {}
        for name, column in self.layout.items():
            values = np.empty((len(indices), *column["shape"]), dtype=_numpy_dtype(column["dtype"]))
            for shard in np.unique(shards):
                chosen = shards == shard
                values[chosen] = self._array(int(shard), name)[offsets[chosen]]
            tensor = torch.from_numpy(values)
            out[name] = tensor.view(torch.bfloat16) if column["dtype"] == "bfloat16" else tensor
        return out

    def __getitem__(self, name: str) -> torch.Tensor:
        """A whole column (for tests and inspection)."""
        return self.rows(np.arange(self.num_rows))[name]


def _numpy_dtype(name: str):
    return {storage: numpy for storage, numpy in _STORAGE.values()}[name]


def _shard_folder(folder: str, shard: int) -> str:
    return os.path.join(folder, f"shard-{shard:05d}")


def _complete(folder: str, shard: int) -> bool:
    return os.path.isfile(os.path.join(_shard_folder(folder, shard), "complete"))


def build_teacher_cache(run_teacher, dataset, folder: str, token_layers, attention_layers, *, batch_size: int = 64,
                        shard_size: int = 256, device=None, state=None, lockstep: bool = False) -> TeacherCache:
    """``run_teacher(pixels) -> Features`` over ``dataset``, written to ``folder``: each process
    writes its share of the shards (every ``num_processes``-th), and shards already complete are
    kept, so a build stopped half-way resumes. With ``lockstep`` (a sharded teacher, whose forward
    needs every process) each process runs the teacher as often as the busiest one. Every process
    calls it."""
    state = state or PartialState()
    os.makedirs(folder, exist_ok=True)
    num_shards = max(1, math.ceil(len(dataset) / shard_size))
    ranges = [range(s * shard_size, min(len(dataset), (s + 1) * shard_size)) for s in range(num_shards)]
    todo = [[s for s in range(p, num_shards, state.num_processes) if not _complete(folder, s)]
            for p in range(state.num_processes)]
    calls = [sum(math.ceil(len(ranges[s]) / batch_size) for s in shards) for shards in todo]
    first = _first_image(dataset)
    device = device if device is not None else first.device
    with torch.no_grad():
        layout = _layout(output_columns(run_teacher(first.to(device)), token_layers, attention_layers))
    check_disk(folder, layout, sum(len(ranges[s]) for shards in todo for s in shards))
    for shard in todo[state.process_index]:
        _write_shard(run_teacher, dataset, folder, shard, ranges[shard], layout, token_layers=token_layers,
                     attention_layers=attention_layers, batch_size=batch_size, device=device, first=first,
                     lockstep=lockstep)
    if lockstep:  # the busiest process's count of sharded forwards, on every process
        with torch.no_grad():
            for _ in range(max(calls) - calls[state.process_index]):
                run_teacher(first.to(device))
    state.wait_for_everyone()
    if state.is_main_process:
        with open(os.path.join(folder, MANIFEST), "w") as f:
            json.dump({"rows": len(dataset), "shard_size": shard_size, "columns": layout}, f, indent=2)
    state.wait_for_everyone()
    return TeacherCache(folder)


def _first_image(dataset) -> torch.Tensor:
    for i in range(len(dataset)):
        row = dataset[i]
        if PIXELS in row and row[PIXELS] is not None:
            return row[PIXELS].unsqueeze(0)
    raise ValueError("no image of the training set decodes: nothing to cache")


def _write_shard(run_teacher, dataset, folder, shard, rows, layout, *, token_layers, attention_layers, batch_size,
                 device, first, lockstep) -> None:
    """One shard's outputs, in memory-mapped files of a temporary folder renamed when complete.
    Rows whose image does not decode hold zeros (they are never read: the collator drops them)."""
    final = _shard_folder(folder, shard)
    tmp = f"{final}.tmp-{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    arrays = {name: np.lib.format.open_memmap(os.path.join(tmp, f"{name}.npy"), mode="w+",
                                              dtype=_numpy_dtype(column["dtype"]), shape=(len(rows), *column["shape"]))
              for name, column in layout.items()}
    for start in range(0, len(rows), batch_size):
        batch = [dataset[i] for i in rows[start : start + batch_size]]
        good = [j for j, row in enumerate(batch) if row.get(PIXELS) is not None]
        with torch.no_grad():
            if good:
                pixels = torch.stack([batch[j][PIXELS] for j in good]).to(device)
                columns = output_columns(run_teacher(pixels), token_layers, attention_layers)
                for name, values in columns.items():
                    arrays[name][[start + j for j in good]] = _stored(values)
            elif lockstep:  # a sharded teacher's forward needs every process, even for nothing
                run_teacher(first.to(device))
    for array in arrays.values():
        array.flush()
    open(os.path.join(tmp, "complete"), "w").close()
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


class CachedTeacherDataset(torch.utils.data.Dataset):
    """The training set with each row's index in the teacher cache beside its image."""
    def __init__(self, dataset, cache: TeacherCache):
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


class TeacherCacheCollator:
    """``collate``, then the batch's cached teacher outputs beside its images, read as tensors in
    the data loader's workers (one gather per shard, no Python lists)."""
    def __init__(self, collate, cache: TeacherCache):
        self.collate, self.cache = collate, cache

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collate(examples)
        rows = batch.pop(ROW, None)
        if rows is not None:
            batch.update(self.cache.rows(rows.numpy()))
        return batch


def check_cache_flags(args, problems) -> None:
    """``--cache_teacher`` only where the teacher's view is the same in every epoch."""
    if not args.cache_teacher:
        return
    conflicts = (
        (args.augmentation.active, "cache_teacher stores the teacher's outputs on unaugmented images, and the "
                                   "training augmentation changes every batch: drop one of them"),
        (args.mixing.mixes, "cache_teacher stores the teacher's outputs on unmixed images, and mixup/cutmix change "
                            "every batch: drop one of them"),
        (args.dad_mode == "online", "cache_teacher stores the teacher's outputs on clean images, and online DAD "
                                    "attacks the teacher every step: use dad_mode='offline' (its dataset stores the "
                                    "teacher's logits)"),
        (args.dad_objective == "official", "cache_teacher stores the teacher's outputs on clean images only, and the "
                                           "official objective's batch joins DAD images to them: drop one of them"),
    )
    for conflict, message in conflicts:
        if conflict:
            problems.add("--cache_teacher", message)
