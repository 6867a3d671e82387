"""The training loader's images per second per worker process, against timm's own loader, in one run.

    python benchmarks/data_throughput.py                      # 256 photos as 500 x 375 JPEGs, 224 px out
    python benchmarks/data_throughput.py --workers 2 --rounds 5

The photos are crops of scikit-image's sample photos of varied place and scale, re-encoded as
ImageNet-sized JPEGs (500 x 375, quality 90) in a ``datasets`` Parquet image column, as a Hub copy of
ImageNet holds them. Both loaders run DeiT's settings (RandomResizedCrop, flip, RandAugment
``rand-m9-mstd0.5-inc1``, random erasing 0.25, bicubic) with ``--workers`` worker processes:

* ``ours``: ``prepare_dataset(..., augmentation=...)`` and ``collate_images``: decode, timm's transform,
  erasing in pixel space, uint8 (3, H, W) out;
* ``timm``: a DataLoader over ``timm.data.create_transform(is_training=True)`` on the same rows (decoded
  by ``datasets``), normalised float32 out, erasing included, timm's default loader on a CPU;
* ``timm_uint8``: the same with ``use_prefetcher=True`` (uint8 out; timm then normalises and erases on
  the GPU), the lighter work timm's GPU loader leaves to its workers.

timm's two are given the guard against Pillow 13's 0-bit posterize that ours has (without it timm's own
loader raises within a few hundred images). The three are timed in turn within each round, best of ``--rounds``, so the machine's changing speed
falls on all alike. Also: the share of ``ours``' time spent decoding the JPEGs, and the CPU cores one
H100 needs at the ViT-B/16 DeiT step rate (the arithmetic is in the output). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset, Features, Image as ImageFeature, Value, load_dataset
from PIL import Image
from torch.utils.data import DataLoader

from hf_robust_distill.data import AugmentationSettings, collate_images, prepare_dataset
from hf_robust_distill.data.augmentation import guard_posterize

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "motorcycle_left", "cat", "colorwheel")
DEIT = AugmentationSettings(random_resized_crop=True, hflip=0.5, rand_augment="rand-m9-mstd0.5-inc1",
                            color_jitter=0.4, random_erasing=0.25, interpolation="bicubic")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VIT_B16_TRAINING_GFLOPS = 3 * 17.6  # forward 17.6 GFLOPs at 224 px (DeiT's table); backward about twice that
H100_BF16_DENSE_TFLOPS = 989.0
ASSUMED_MFU = 0.4


def imagenet_sized_jpegs(count: int, folder: str, seed: int = 0) -> Dataset:
    """``count`` crops of scikit-image's photos as 500 x 375 JPEGs (quality 90) in a Parquet file."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        try:
            photo = getattr(skimage.data, name)()
        except Exception:  # a sample that needs a download (pooch): left out
            continue
        if photo.ndim == 3 and photo.shape[2] >= 3 and min(photo.shape[:2]) >= 200:
            photos.append(photo[..., :3])
    rows = {"image": [], "label": []}
    for i in range(count):
        photo = photos[i % len(photos)]
        h = int(rng.integers(min(photo.shape[0], photo.shape[1] * 3 // 4) // 2, min(photo.shape[0], photo.shape[1] * 3 // 4) + 1))
        w = h * 4 // 3
        y, x = int(rng.integers(0, photo.shape[0] - h + 1)), int(rng.integers(0, photo.shape[1] - w + 1))
        buffer = io.BytesIO()
        Image.fromarray(photo[y:y + h, x:x + w]).resize((500, 375), Image.BICUBIC).save(buffer, "JPEG", quality=90)
        rows["image"].append({"bytes": buffer.getvalue(), "path": None})
        rows["label"].append(i % len(photos))
    path = os.path.join(folder, "train.parquet")
    Dataset.from_dict(rows, features=Features({"image": ImageFeature(), "label": Value("int64")})).to_parquet(path)
    return load_dataset("parquet", data_files={"train": path})["train"]


class TimmRows(torch.utils.data.Dataset):
    """The rows as timm's ImageFolder-style dataset gives them to its transform: a decoded RGB image."""

    def __init__(self, rows: Dataset, transform):
        self.rows, self.transform = rows.cast_column("image", ImageFeature(decode=False)), transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        image = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
        return self.transform(image), row["label"]


def loaders(rows: Dataset, size: int, workers: int, batch_size: int) -> dict[str, DataLoader]:
    from timm.data import create_transform
    from timm.data.loader import fast_collate

    timm_args = dict(is_training=True, scale=DEIT.crop_scale, hflip=DEIT.hflip, color_jitter=DEIT.color_jitter,
                     auto_augment=DEIT.rand_augment, interpolation=DEIT.interpolation, mean=MEAN, std=STD)
    common = dict(batch_size=batch_size, num_workers=workers, shuffle=False, drop_last=False)
    ours = prepare_dataset(rows, (size, size), augmentation=DEIT, pixel_dtype=torch.uint8)
    timm_float = create_transform(size, re_prob=DEIT.random_erasing, re_mode="pixel", **timm_args)
    timm_uint8 = create_transform(size, use_prefetcher=True, **timm_args)
    for transform in (timm_float, timm_uint8):  # timm's own loader dies of Pillow 13's 0-bit posterize otherwise
        guard_posterize(transform)
    return {
        "ours": DataLoader(ours, collate_fn=collate_images, **common),
        "timm": DataLoader(TimmRows(rows, timm_float), **common),
        "timm_uint8": DataLoader(TimmRows(rows, timm_uint8), collate_fn=fast_collate, **common),
    }


def images_per_second(loader: DataLoader) -> float:
    start, seen = time.perf_counter(), 0
    for batch in loader:
        first = batch["pixel_values"] if isinstance(batch, dict) else batch[0]
        seen += len(first)
    return seen / (time.perf_counter() - start)


def decode_share(rows: Dataset, ours_rate: float) -> dict:
    """Seconds per image of the JPEG decode alone (as ours decodes: PIL, to RGB), and its share of ours."""
    raw = rows.cast_column("image", ImageFeature(decode=False))["image"]
    start = time.perf_counter()
    for cell in raw:
        Image.open(io.BytesIO(cell["bytes"])).convert("RGB").load()
    per_image = (time.perf_counter() - start) / len(raw)
    return {"decode_ms_per_image": 1000 * per_image, "decode_share_of_ours": per_image * ours_rate}


def cores_per_h100(per_core: float) -> dict:
    step_rate = H100_BF16_DENSE_TFLOPS * 1e12 * ASSUMED_MFU / (VIT_B16_TRAINING_GFLOPS * 1e9)
    return {"vit_b16_training_gflops_per_image": VIT_B16_TRAINING_GFLOPS,
            "h100_bf16_dense_tflops": H100_BF16_DENSE_TFLOPS, "assumed_mfu": ASSUMED_MFU,
            "h100_images_per_second": round(step_rate), "ours_images_per_second_per_core": round(per_core, 1),
            "cores_per_h100": round(step_rate / per_core, 1),
            "arithmetic": f"{H100_BF16_DENSE_TFLOPS} TFLOPs x {ASSUMED_MFU} / {VIT_B16_TRAINING_GFLOPS:.1f} GFLOPs = "
                          f"{step_rate:.0f} images/s; / {per_core:.1f} images/s per core"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core per worker, as the workers have
    with tempfile.TemporaryDirectory() as folder:
        rows = imagenet_sized_jpegs(args.images, folder)
        timed = loaders(rows, args.size, args.workers, args.batch_size)
        best = {name: 0.0 for name in timed}
        for name, loader in timed.items():  # warm up: imports, worker start, timm's transforms built
            images_per_second(loader)
        for _ in range(args.rounds):
            for name, loader in timed.items():
                best[name] = max(best[name], images_per_second(loader))
        per_worker = {name: rate / max(args.workers, 1) for name, rate in best.items()}
        result = {
            "images": args.images, "size": args.size, "workers": args.workers, "rounds": args.rounds,
            "images_per_second_per_worker": {k: round(v, 1) for k, v in per_worker.items()},
            "ours_vs_timm": round(per_worker["ours"] / per_worker["timm"], 3),
            "ours_vs_timm_uint8": round(per_worker["ours"] / per_worker["timm_uint8"], 3),
            **decode_share(rows, per_worker["ours"]),
            "h100": cores_per_h100(per_worker["ours"]),
        }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
