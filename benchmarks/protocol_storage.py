"""What each corruption protocol stores per image, and what ImageNet-C's 75 sets come to.

    python benchmarks/protocol_storage.py                 # 32 real 224 px photos, all 15 x 5 sets

Each photo is corrupted by the torch ports at every severity of the 15 ImageNet-C corruptions and
stored as each protocol stores it: ``imagenet-c`` truncates to 8 bits and saves a JPEG at quality 85
(``optimize=True``); ``model-resolution`` keeps 3 x H x W bytes. Prints one JSON object: bytes per image
(mean, least and most over the sets), the ratio, the totals for 50,000 images x 75 sets, and the JPEG
encoding time per image on one thread.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from corruption_speed import real_photos

from hf_robust_distill.evaluation.protocols import jpeg_bytes, truncate_to_uint8
from hf_robust_distill.metrics.corruption_robustness.corruption_robustness import IMAGENET_C_CORRUPTIONS
from hf_robust_distill.views.corruptions import corrupt_uint8

IMAGENET_C_IMAGES = 50_000 * len(IMAGENET_C_CORRUPTIONS) * 5


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    opts = parser.parse_args()
    torch.set_num_threads(1)
    photos = real_photos(opts.images, opts.size)
    sizes, seconds = {}, []
    for corruption in IMAGENET_C_CORRUPTIONS:
        for severity in range(1, 6):
            images = corrupt_uint8(photos, corruption, severity, torch.Generator().manual_seed(severity),
                                   truncate_to_uint8)
            begin = time.perf_counter()
            encoded = [jpeg_bytes(image) for image in images]
            seconds.append((time.perf_counter() - begin) / len(images))
            sizes[f"{corruption}-{severity}"] = float(np.mean([len(b) for b in encoded]))
    jpeg = float(np.mean(list(sizes.values())))
    pixels = 3 * opts.size * opts.size
    print(json.dumps({
        "images": opts.images, "size": opts.size,
        "imagenet-c": {"bytes_per_image": round(jpeg), "least": [min(sizes, key=sizes.get), round(min(sizes.values()))],
                       "most": [max(sizes, key=sizes.get), round(max(sizes.values()))],
                       "imagenet_c_total_gb": round(jpeg * IMAGENET_C_IMAGES / 1e9, 1),
                       "jpeg_encode_ms_per_image": round(1000 * float(np.mean(seconds)), 2)},
        "model-resolution": {"bytes_per_image": pixels, "imagenet_c_total_gb": round(pixels * IMAGENET_C_IMAGES / 1e9, 1)},
        "ratio": round(pixels / jpeg, 1),
    }))


if __name__ == "__main__":
    main()
