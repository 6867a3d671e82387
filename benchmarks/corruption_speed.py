"""The torch corruptions against the reference ImageNet-C code, side by side in one run.

    python benchmarks/corruption_speed.py                       # CPU: 64 photos at 224 px, severity 3
    python benchmarks/corruption_speed.py --device cuda         # adds the GPU grid and ViT-B/16 bf16

Per corruption, the best of ``--repeats`` rounds, the three timed in turn within each round so that
the machine's changing speed falls on all three alike, all warmed up first (numba compiles glass
blur's kernel on its first call):

* ``bare_reference_s``: the reference as its users call it, ``imagecorruptions.corrupt`` image by
  image, numpy in, numpy out (the fair anchor of ``speedup``);
* ``reference_s``: the reference as this package's ``reference`` backend runs it
  (``ReferenceCorruptedImages``: a dataset read, PIL and uint8 conversions around each call);
* ``port_s``: the port on the same batch, as the ``torch`` backend runs it
  (``torch_corrupted_batches``: uint8 in, uint8 out).

The photos are crops of scikit-image's sample photos resized to ``--size``.

``--device cuda`` adds the whole grid (every corruption x severities 1-5) on ``--gpu_images``
images, as images/s, and the inference throughput of a ViT-B/16 in bf16 on the same images:
corrupting never slows an ImageNet-C evaluation when the grid's rate is at least 2x the model's.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch
from datasets import Dataset

from hf_robust_distill.evaluation import CorruptedSet, ReferenceCorruptedImages, torch_corrupted_batches
from hf_robust_distill.views.corruptions import CORRUPTIONS

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def real_photos(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) uint8: square crops of varied scale and place of scikit-image's photos."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min(photo.shape[:2]) // 2, min(photo.shape[:2]) + 1))
        y, x = int(rng.integers(0, photo.shape[0] - side + 1)), int(rng.integers(0, photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        out.append(torch.from_numpy(np.array(crop)).permute(2, 0, 1))
    return torch.stack(out)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_port(images: torch.Tensor, labels: torch.Tensor, corruption: str, severity: int, device, batch_size: int,
              seed: int = 0) -> float:
    entry = CorruptedSet("benchmark", corruption, severity, "torch", seed, batch_size)
    batches = [(k, images[i:i + batch_size], labels[i:i + batch_size])
               for k, i in enumerate(range(0, len(images), batch_size))]
    synchronize(device)
    begin = time.perf_counter()
    for _ in torch_corrupted_batches(batches, entry, device):
        pass
    synchronize(device)
    return time.perf_counter() - begin


def time_bare_reference(photos: list[np.ndarray], corruption: str, severity: int) -> float:
    """``imagecorruptions.corrupt`` on each (H, W, 3) uint8 photo, as its users call it."""
    from imagecorruptions import corrupt

    begin = time.perf_counter()
    for photo in photos:
        corrupt(photo, corruption_name=corruption, severity=severity)
    return time.perf_counter() - begin


def best_in_turn(repeats: int, timed: dict[str, Callable[[], float]]) -> dict[str, float]:
    """The best of ``repeats`` rounds of each timing, taken in turn within each round, so that a change
    in the machine's speed falls on all of them alike."""
    seconds = {key: [] for key in timed}
    for _ in range(repeats):
        for key, run in timed.items():
            seconds[key].append(run())
    return {key: min(values) for key, values in seconds.items()}


def time_reference(clean: Dataset, size: int, corruption: str, severity: int) -> float:
    images = ReferenceCorruptedImages(clean, (size, size), CorruptedSet("benchmark", corruption, severity,
                                                                        "reference", 0, 0))
    begin = time.perf_counter()
    for i in range(len(images)):
        images[i]
    return time.perf_counter() - begin


def vit_images_per_s(images: torch.Tensor, device, batch_size: int) -> float:
    """Inference of a ViT-B/16 (random weights: the speed is the architecture's) in bf16, sdpa."""
    from transformers import ViTConfig, ViTForImageClassification

    model = ViTForImageClassification(ViTConfig(num_labels=1000, attn_implementation="sdpa"))
    model = model.to(device, torch.bfloat16).eval()
    x = images.to(device)
    with torch.inference_mode():
        for _ in range(3):
            model(pixel_values=x[:batch_size].to(torch.bfloat16) / 255)
        synchronize(device)
        begin = time.perf_counter()
        for i in range(0, len(x), batch_size):
            model(pixel_values=x[i:i + batch_size].to(torch.bfloat16) / 255)
        synchronize(device)
    return len(x) / (time.perf_counter() - begin)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--corruptions", default=None, help="comma-separated; default: all 19")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no_reference", action="store_true", help="time the ports alone")
    parser.add_argument("--repeats", type=int, default=5, help="each timing is the best of this many rounds")
    parser.add_argument("--gpu_images", type=int, default=1000)
    parser.add_argument("--gpu_batch_size", type=int, default=250)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    names = opts.corruptions.split(",") if opts.corruptions else list(CORRUPTIONS)
    photos = real_photos(opts.images, opts.size)
    labels = torch.zeros(len(photos), dtype=torch.long)
    clean = Dataset.from_dict({"pixels": photos.reshape(len(photos), -1).numpy(), "label": labels.numpy()})

    arrays = [np.ascontiguousarray(photo.permute(1, 2, 0).numpy()) for photo in photos]
    rows = {}
    for name in names:
        time_port(photos[:2], labels[:2], name, opts.severity, device, opts.images)  # warm-up
        timed = {"port_s": lambda: time_port(photos, labels, name, opts.severity, device, opts.images)}
        if not opts.no_reference:
            time_bare_reference(arrays[:1], name, opts.severity)  # warm-up (numba compiles)
            time_reference(clean.select(range(1)), opts.size, name, opts.severity)
            timed["bare_reference_s"] = lambda: time_bare_reference(arrays, name, opts.severity)
            timed["reference_s"] = lambda: time_reference(clean, opts.size, name, opts.severity)
        row = {key: round(seconds, 4) for key, seconds in best_in_turn(opts.repeats, timed).items()}
        if not opts.no_reference:
            row["speedup"] = round(row["bare_reference_s"] / row["port_s"], 2)
            row["speedup_vs_backend"] = round(row["reference_s"] / row["port_s"], 2)
        rows[name] = row
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {opts.threads} threads",
              "images": opts.images, "size": opts.size, "severity": opts.severity, "corruptions": rows}
    if not opts.no_reference:
        port, bare, reference = (sum(r[key] for r in rows.values()) for key in ("port_s", "bare_reference_s",
                                                                              "reference_s"))
        result["total"] = {"corruptions": len(rows), "port_s": round(port, 3), "bare_reference_s": round(bare, 3),
                           "reference_s": round(reference, 3), "speedup": round(bare / port, 2),
                           "speedup_vs_backend": round(reference / port, 2),
                           "slowest_speedup": min((r["speedup"], n) for n, r in rows.items()),
                           "slower_than_the_reference": sorted(n for n, r in rows.items() if r["speedup"] < 1)}
    if device.type == "cuda":
        grid_images = real_photos(opts.gpu_images, opts.size, seed=1)
        grid_labels = torch.zeros(len(grid_images), dtype=torch.long)
        for name in names:
            time_port(grid_images[:opts.gpu_batch_size], grid_labels[:opts.gpu_batch_size], name, 1, device,
                      opts.gpu_batch_size)
        per_corruption, seconds = {}, 0.0
        for name in names:
            spent = sum(time_port(grid_images, grid_labels, name, s, device, opts.gpu_batch_size) for s in range(1, 6))
            per_corruption[name] = round(5 * len(grid_images) / spent, 1)
            seconds += spent
        grid_rate = len(names) * 5 * len(grid_images) / seconds
        vit_rate = vit_images_per_s(grid_images, device, opts.gpu_batch_size)
        result["gpu_grid"] = {"images": opts.gpu_images, "batch_size": opts.gpu_batch_size,
                              "corruptions": len(names), "seconds": round(seconds, 2),
                              "images_per_s": round(grid_rate, 1), "per_corruption_images_per_s": per_corruption,
                              "vit_b16_bf16_images_per_s": round(vit_rate, 1),
                              "corruption_over_inference": round(grid_rate / vit_rate, 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
