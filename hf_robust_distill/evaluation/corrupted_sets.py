"""Corrupted evaluation sets: each (corruption, severity) of an evaluation set made once, from a
seed, and kept in a memory-mapped Arrow file that ``datasets`` opens, as its protocol stores it
(``protocols``): 8-bit pixels at the model's input (model-resolution), or the JPEGs ImageNet-C's
pipeline saves (imagenet-c).

Two backends make them:

* ``"torch"``: the package's batched ports of all 19 corruptions (``corruptions.corrupt``) on the
  model's device, with random numbers drawn there by a generator seeded by (seed, corruption,
  severity, batch); a set is keyed by the device type it was drawn on;
* ``"reference"``: the reference ImageNet-C code (``imagecorruptions``, the
  ``imagecorruptions-imaug`` fork, an optional extra), image by image in data-loader workers,
  NumPy seeded by (seed, corruption, severity, image index).

``"auto"`` takes the torch port where there is one (now every corruption). The evaluation set
itself is decoded once, as its protocol crops it, into the same cache (corruption ``"clean"``), and
every corrupted set is made from that copy. Under ``accelerate launch`` each process makes and stores
its share of the batches (``sharding.Shard``), each batch drawn as one process would draw it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, Features, Image as ImageFeature, Value
from torch.utils.data import DataLoader

from ..data.columns import BAD_IMAGES, LABELS, PIXELS
from ..data.datasets import collate_images, prepare_dataset
from ..data.images import BadImage, ImageResizer, to_uint8
from ..views.corruptions import CORRUPTIONS, corrupt_uint8
from .protocols import IMAGENET_C, MODEL_RESOLUTION, jpeg_bytes, truncate_to_uint8
from .sharding import Shard

BACKENDS = ("torch", "reference", "auto")
FORMAT_VERSION = 2  # 2: all 19 ported, draws on the device, CPU pieces of 8
CLEAN = "clean"
JPEG_FEATURES = Features({"image": ImageFeature(), "label": Value("int64")})
"""The columns of a set stored as JPEGs; their ``datasets`` types travel in the file's schema."""


def reference_corruptions() -> tuple[str, ...]:
    """Every corruption of the reference code (the 15 of ImageNet-C and the 4 held-out ones)."""
    return tuple(_imagecorruptions().get_corruption_names("all"))


def _imagecorruptions():
    try:
        import imagecorruptions
    except ImportError as error:
        raise ImportError("the reference ImageNet-C backend needs imagecorruptions: pip install "
                          "'hf-robust-distill[imagenet-c]' (the imagecorruptions-imaug fork)") from error
    return imagecorruptions


def resolve_backend(corruption: str, backend: str) -> str:
    """The backend that makes ``corruption``: "torch" or "reference"."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown corruption backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; the corruptions are {', '.join(CORRUPTIONS)}")
    if backend in ("torch", "auto"):
        return "torch"
    _imagecorruptions()  # the reference backend is installed
    return "reference"


def default_cache_dir() -> str:
    """``$HF_ROBUST_DISTILL_CACHE``, else ``$HF_HOME/hf_robust_distill/corrupted``."""
    from huggingface_hub import constants

    return os.environ.get("HF_ROBUST_DISTILL_CACHE", os.path.join(constants.HF_HOME, "hf_robust_distill", "corrupted"))


@dataclass(frozen=True)
class CorruptedSet:
    """What one cached set is made from; its hash names the file. The decoded evaluation set is
    the entry ``CorruptedSet.clean(source)``."""

    source: str  # the evaluation set's fingerprint, columns and size
    corruption: str
    severity: int
    backend: str
    seed: int
    batch_size: int  # the torch backend draws random numbers per batch
    device: str = ""  # and on the device it corrupts on (its type: "cpu", "cuda")
    protocol: str = MODEL_RESOLUTION
    shard: str = ""  # the share of the batches this file holds (``Shard.key``): empty for all of them

    @classmethod
    def clean(cls, source: str) -> CorruptedSet:
        return cls(source, CLEAN, 0, "decoded", 0, 0)

    @property
    def stores_jpeg(self) -> bool:
        return self.protocol == IMAGENET_C and self.corruption != CLEAN

    @property
    def quantize(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """[0, 1] pixels to what is stored: truncated as the release truncates, else rounded."""
        return truncate_to_uint8 if self.protocol == IMAGENET_C else to_uint8

    @property
    def key(self) -> str:
        payload = json.dumps({**asdict(self), "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]


class CorruptedSetCache:
    """Arrow files ``<cache_dir>/<corruption>-<severity>-<key>.arrow`` (columns ``pixels``, flat
    uint8 (3*H*W), or ``image``, JPEG bytes, and ``label``), written to a temporary name and renamed
    when complete, so an interrupted run leaves nothing that a later one would trust."""

    def __init__(self, cache_dir: str | None = None):
        self.cache_dir = cache_dir or default_cache_dir()

    def path(self, entry: CorruptedSet) -> str:
        return os.path.join(self.cache_dir, f"{entry.corruption}-{entry.severity}-{entry.key}.arrow")

    def load(self, entry: CorruptedSet) -> Dataset | None:
        path = self.path(entry)
        return Dataset.from_file(path) if os.path.isfile(path) else None

    def metadata(self, entry: CorruptedSet) -> dict:
        """What was recorded beside a set when it was written (the decoded set's bad images)."""
        path = self.path(entry) + ".json"
        if not os.path.isfile(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def write(self, entry: CorruptedSet, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
              metadata: Callable[[], dict] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Passes ``batches`` (uint8 images, labels) through, writing them; the file appears
        when the last batch has gone through, after ``metadata()`` (when given) is saved beside it."""
        os.makedirs(self.cache_dir, exist_ok=True)
        path = self.path(entry)
        tmp = f"{path}.{os.getpid()}.tmp"
        writer = None
        try:
            with pa.OSFile(tmp, "wb") as sink:
                for images, labels in batches:
                    table = _jpeg_table(images, labels) if entry.stores_jpeg else _pixel_table(images, labels)
                    if writer is None:
                        writer = pa.ipc.new_stream(sink, table.schema)
                    writer.write_table(table)
                    yield images, labels
                if writer is not None:
                    writer.close()
            if writer is not None:
                recorded = metadata() if metadata is not None else None
                if recorded:
                    _write_json(path + ".json", recorded)
                os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def fill(self, entry: CorruptedSet, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
             metadata: Callable[[], dict] | None = None) -> Dataset:
        """Writes all of ``batches`` and returns the stored set."""
        for _ in self.write(entry, batches, metadata):
            pass
        return self.load(entry)

    def batches(self, clean: Dataset, source: str, corruption: str, severity: int, backend: str, *, seed: int,
                size: tuple[int, int], batch_size: int, num_workers: int, device: torch.device,
                shard: Shard = Shard()) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of the (uint8 pixels, labels) batches of ``clean`` under one corruption
        and severity (the model-resolution protocol): read back when this set was made before, else
        made (on ``device`` by the torch ports, per image by the reference code) and written as they
        are read."""
        entry = _entry(source, corruption, severity, backend, seed=seed, batch_size=batch_size, device=device,
                       protocol=MODEL_RESOLUTION, shard=shard)
        cached = self.load(entry)
        if cached is not None:
            return cached_batches(cached, size, batch_size)
        return self.write(entry, _made(entry, clean, size, batch_size, num_workers, device, shard))

    def stored(self, clean: Dataset, source: str, corruption: str, severity: int, backend: str, *, seed: int,
               size: tuple[int, int], batch_size: int, num_workers: int, device: torch.device, protocol: str,
               shard: Shard = Shard()) -> Dataset:
        """This process's share of ``clean`` under one corruption and severity as ``protocol`` stores it
        (imagenet-c: JPEGs in an ``image`` column, ``label`` beside it), made and written first when it
        was not made before."""
        entry = _entry(source, corruption, severity, backend, seed=seed, batch_size=batch_size, device=device,
                       protocol=protocol, shard=shard)
        cached = self.load(entry)
        if cached is not None:
            return cached
        return self.fill(entry, _made(entry, clean, size, batch_size, num_workers, device, shard))


def _entry(source: str, corruption: str, severity: int, backend: str, *, seed: int, batch_size: int, device,
           protocol: str, shard: Shard) -> CorruptedSet:
    """The set's description: the torch backend's sets also by their batch size and device type."""
    on_device = backend == "torch"
    return CorruptedSet(source, corruption, severity, backend, seed, batch_size if on_device else 0,
                        torch.device(device).type if on_device else "", protocol, shard.key)


def _made(entry: CorruptedSet, clean: Dataset, size: tuple[int, int], batch_size: int, num_workers: int, device,
          shard: Shard) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``shard``'s batches of ``clean`` corrupted as ``entry`` says, by its backend."""
    if entry.backend == "torch":
        return torch_corrupted_batches(indexed_batches(clean, size, batch_size, shard), entry, device)
    return reference_corrupted_batches(clean, size, entry, batch_size, num_workers, shard)


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def decoded_batches(loader: DataLoader, bad_images: list | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, labels) of a prepared set's loader (``pixel_values`` in [0, 1], ``labels``);
    the images that did not decode are left out and appended to ``bad_images``."""
    for batch in loader:
        if bad_images is not None:
            bad_images.extend(batch.get(BAD_IMAGES, ()))
        if PIXELS in batch:
            yield to_uint8(batch[PIXELS]), batch[LABELS]


def source_key(dataset: Dataset, image_column: str, label_column: str, resizer: ImageResizer) -> str:
    """What a decoded evaluation set is made from: the data's fingerprint, its columns, and how
    images are brought to the model's input."""
    return f"{dataset._fingerprint}:{image_column}:{label_column}:{resizer.key}"


def decode_evaluation_set(dataset: Dataset, resizer: ImageResizer, cache: CorruptedSetCache, image_column: str,
                          label_column: str, batch_size: int = 64, num_workers: int = 0
                          ) -> tuple[Dataset | None, list[BadImage]]:
    """The evaluation set decoded once into ``cache`` (uint8, at the model's input), and the
    images that did not decode (left out of it; ``None`` when none did). A second call, from any
    process, reads both back."""
    entry = CorruptedSet.clean(source_key(dataset, image_column, label_column, resizer))
    stored = cache.load(entry)
    if stored is None:
        bad: list[BadImage] = []
        loader = DataLoader(prepare_dataset(dataset, resizer, image_column, label_column), batch_size=batch_size,
                            shuffle=False, collate_fn=collate_images, num_workers=num_workers)
        stored = cache.fill(entry, decoded_batches(loader, bad),
                            metadata=lambda: {"bad_images": [[b.source, b.error] for b in bad]} if bad else {})
        if stored is None:  # no image decoded: nothing was stored, the list is all there is
            return None, bad
    return stored, [BadImage(source, error) for source, error in cache.metadata(entry).get(BAD_IMAGES, [])]


def _pixel_table(images: torch.Tensor, labels: torch.Tensor) -> pa.Table:
    flat = images.reshape(len(images), -1).numpy()
    return pa.table({"pixels": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1]),
                     "label": pa.array(labels.numpy().astype(np.int64))})


def _jpeg_table(images: torch.Tensor, labels: torch.Tensor) -> pa.Table:
    cells = [{"bytes": jpeg_bytes(image), "path": None} for image in images]
    return pa.Table.from_pydict({"image": cells, "label": labels.numpy().astype(np.int64)},
                                schema=JPEG_FEATURES.arrow_schema)


def indexed_batches(dataset: Dataset, size: tuple[int, int], batch_size: int, shard: Shard = Shard()
                    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(batch number, uint8 images (B, 3, H, W), labels) of ``shard``'s batches of a cached set of
    ``size`` (H, W) images, numbered as in the whole set."""
    table = dataset.with_format("numpy")
    for i in shard.batches(len(dataset), batch_size):
        rows = table[i * batch_size : (i + 1) * batch_size]
        yield (i, torch.from_numpy(np.asarray(rows["pixels"], dtype=np.uint8).reshape(-1, 3, *size)),
               torch.from_numpy(np.asarray(rows["label"], dtype=np.int64)))


def cached_batches(dataset: Dataset, size: tuple[int, int], batch_size: int, shard: Shard = Shard()
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images (B, 3, H, W), labels) of ``shard``'s batches of a cached set of ``size`` images."""
    for _, images, labels in indexed_batches(dataset, size, batch_size, shard):
        yield images, labels


def torch_corrupted_batches(clean: Iterable[tuple[int, torch.Tensor, torch.Tensor]], entry: CorruptedSet, device
                            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``clean`` (batch number, uint8 images, labels) corrupted on ``device``, random
    numbers drawn there from a generator seeded by the batch's number (a CPU generator would feed a
    GPU through a serial bottleneck)."""
    index = CORRUPTIONS.index(entry.corruption)
    device = torch.device(device)
    quantize = entry.quantize
    for i, images, labels in clean:
        generator = torch.Generator(device).manual_seed(int(np.random.SeedSequence(
            [entry.seed, index, entry.severity, i]).generate_state(1)[0]))
        yield corrupt_uint8(images.to(device), entry.corruption, entry.severity, generator, quantize).cpu(), labels


class ReferenceCorruptedImages(torch.utils.data.Dataset):
    """The reference code applied to each image of a stored clean set of ``size`` (H, W) images (or
    to its ``rows``), seeded per image by its row: NumPy's global generator (restored afterwards)
    and, for the corruptions that take one, their seed."""

    def __init__(self, clean: Dataset, size: tuple[int, int], entry: CorruptedSet, rows: list[int] | None = None):
        self.clean = clean.with_format("numpy")
        self.size = tuple(size)
        self.entry = entry
        self.rows = range(len(clean)) if rows is None else rows
        self.index = reference_corruptions().index(entry.corruption)
        function = _imagecorruptions().corruption_dict[entry.corruption]
        # glass_blur and impulse_noise draw from their own generator, seeded by this argument.
        self.takes_seed = "seed" in inspect.signature(function).parameters

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> dict:
        i = int(self.rows[k])
        example = self.clean[i]
        image = np.asarray(example["pixels"], dtype=np.uint8).reshape(3, *self.size).transpose(1, 2, 0)
        if min(image.shape[:2]) < 32:
            raise ValueError(f"the reference ImageNet-C code needs images of at least 32x32 px, got {image.shape[:2]}")
        seed = int(np.random.SeedSequence([self.entry.seed, self.index, self.entry.severity, i]).generate_state(1)[0])
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            out = _imagecorruptions().corrupt(image, severity=self.entry.severity, corruption_name=self.entry.corruption,
                                              **({"seed": seed} if self.takes_seed else {}))
        finally:
            np.random.set_state(state)
        out = np.clip(np.asarray(out, dtype=np.float64), 0, 255).round().astype(np.uint8)
        return {"pixels": torch.from_numpy(out).permute(2, 0, 1).contiguous(), LABELS: int(example["label"])}


def reference_corrupted_batches(clean: Dataset, size: tuple[int, int], entry: CorruptedSet, batch_size: int,
                                num_workers: int, shard: Shard = Shard()
                                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    rows = shard.rows(len(clean), batch_size)
    loader = DataLoader(ReferenceCorruptedImages(clean, size, entry, rows), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_stack)
    for batch in loader:
        yield batch["pixels"], batch[LABELS]


def _stack(examples: list[dict]) -> dict:
    return {"pixels": torch.stack([e["pixels"] for e in examples]),
            LABELS: torch.tensor([e[LABELS] for e in examples], dtype=torch.long)}
