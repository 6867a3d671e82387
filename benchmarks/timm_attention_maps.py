"""What reading a timm ViT's attention maps costs a training step: forward and backward of a timm
ViT student whose last block's maps are read the package's way (computed from the block's ``qkv``
output beside timm's fused kernel, ``models.timm_models``), against no maps at all (the fused kernel
alone) and against timm's own unfused attention on every block (the other way to see the maps).

    python benchmarks/timm_attention_maps.py                                  # CPU: ViT-S/16, batch 8
    python benchmarks/timm_attention_maps.py --batch_size 64 --bf16 --steps 20  # a GPU

Variants alternate step by step; prints one JSON line with the median step times and the ratios
to the fused kernel alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def build(opts):
    import timm
    import torch
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    from hf_robust_distill.models import FeatureTaps, read_attention_maps

    config = TimmWrapperConfig(architecture=opts.architecture, num_labels=1000,
                               model_args={"img_size": opts.image_size})
    model = TimmWrapperForImageClassification(config).to(opts.device, opts.dtype).train()
    taps = FeatureTaps(model, attention_layers=[-1], need_cls=False)
    read_attention_maps(model, taps.attention_modules, taps.attention_layers, opts.rows)
    assert isinstance(model.timm_model, timm.models.VisionTransformer)
    pixels = torch.randn(opts.batch_size, 3, opts.image_size, opts.image_size, device=opts.device, dtype=opts.dtype)
    return model, taps, pixels


def step(model, taps, pixels, variant: str, device: str) -> float:
    import torch

    for block in model.timm_model.blocks:
        block.attn.fused_attn = variant != "timm unfused"
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if variant == "maps from qkv":
        features = taps(model, pixels)
        loss = features.logits.float().mean() + features.attentions[taps.depth - 1].float().mean()
    else:
        loss = model(pixel_values=pixels).logits.float().mean()
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


if __name__ == "__main__":
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", default="vit_small_patch16_224")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", default="all", choices=["all", "cls"])
    parser.add_argument("--bf16", action="store_true")
    opts = parser.parse_args()
    opts.device = "cuda" if torch.cuda.is_available() else "cpu"
    opts.dtype = torch.bfloat16 if opts.bf16 else torch.float32
    model, taps, pixels = build(opts)
    variants = ("fused, no maps", "maps from qkv", "timm unfused")
    times = {v: [] for v in variants}
    for i in range(opts.steps + 1):
        for variant in variants:
            elapsed = step(model, taps, pixels, variant, opts.device)
            model.zero_grad(set_to_none=True)
            if i:  # the first round warms up
                times[variant].append(elapsed)
    medians = {v: statistics.median(t) for v, t in times.items()}
    base = medians["fused, no maps"]
    print(json.dumps({"device": torch.cuda.get_device_name() if opts.device == "cuda" else "cpu",
                      "architecture": opts.architecture, "batch_size": opts.batch_size, "rows": opts.rows,
                      "dtype": str(opts.dtype), "median_step_s": medians,
                      "step_time_vs_fused": {v: medians[v] / base for v in variants}}))
