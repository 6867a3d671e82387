"""What DAD costs: an online DAD training step against a plain KD step (same batch, student,
teacher), and offline DAD generation throughput split into VQ, attack and writing.

    python benchmarks/dad_cost.py                  # small models, CPU friendly
    python benchmarks/dad_cost.py --hidden_size 384 --layers 12 --heads 6 --image_size 224 --patch_size 16 \\
        --vq_channels 128 256 256 512 --batch_size 64 --steps 30 --generate 2048 --bf16     # on a GPU

Prints one JSON object. ``online_step_ratio`` = DAD step time / KD step time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Image as ImageFeature
from diffusers import VQModel
from PIL import Image
from step_overhead import RandomImages, StepClock
from transformers import ViTConfig, ViTForImageClassification

from hf_robust_distill import DistillationConfig, RobustDistillationTrainer, VQDiscretizer
from hf_robust_distill.cli import demo_image_processor
from hf_robust_distill.methods.dad import AttackSettings, DADGenerator
from hf_robust_distill.models import PixelPreprocessor, PixelSpaceClassifier


def make_models(opts):
    config = ViTConfig(image_size=opts.image_size, patch_size=opts.patch_size, hidden_size=opts.hidden_size,
                       num_hidden_layers=opts.layers, num_attention_heads=opts.heads,
                       intermediate_size=4 * opts.hidden_size, num_labels=10)
    torch.manual_seed(0)
    teacher, student = ViTForImageClassification(config), ViTForImageClassification(config)
    for model in (teacher, student):
        model.set_attn_implementation("eager" if opts.eager else "sdpa")
    channels = tuple(opts.vq_channels)
    vq = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(channels),
                 up_block_types=("UpDecoderBlock2D",) * len(channels), block_out_channels=channels,
                 layers_per_block=1, latent_channels=4, vq_embed_dim=4, num_vq_embeddings=opts.vq_codes,
                 norm_num_groups=min(32, channels[0]), sample_size=opts.image_size)
    return student, teacher, VQDiscretizer(vq, input_range="[-1,1]")


def step_rate(opts, data, device, dad_mode) -> float:
    """Optimizer steps per second of the trainer after warm-up."""
    student, teacher, discretizer = make_models(opts)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        args = DistillationConfig(
            output_dir=out, per_device_train_batch_size=opts.batch_size, max_steps=opts.warmup + opts.steps,
            learning_rate=1e-4, logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True,
            distortions="clean", cls_weight=0, patch_weight=0, attn_weight=0, kd_weight=0.5, ce_weight=1,
            dad_mode=dad_mode, dad_kd_weight=0.5 if dad_mode != "none" else 0.0, bf16=opts.bf16,
            use_cpu=device.type == "cpu", dataloader_pin_memory=device.type == "cuda", lr_scheduler_type="constant",
        )
        trainer = RobustDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=data,
                                            processing_class=demo_image_processor(opts.image_size),
                                            discretizer=discretizer if dad_mode != "none" else None,
                                            callbacks=[clock])
        trainer.train()
    return opts.steps / (clock.times[-1] - clock.times[opts.warmup - 1])


def generation_throughput(opts, device) -> dict:
    """Offline generation of ``opts.generate`` random images: images/s overall and per section."""
    _, teacher, discretizer = make_models(opts)
    teacher.to(device).eval().requires_grad_(False)
    discretizer.to(device)
    classifier = PixelSpaceClassifier(teacher, PixelPreprocessor.from_image_processor(
        demo_image_processor(opts.image_size)))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (opts.image_size, opts.image_size, 3), dtype=np.uint8))
              for _ in range(opts.generate)]
    dataset = Dataset.from_dict({"image": images, "label": rng.integers(0, 10, opts.generate).tolist()})
    dataset = dataset.cast_column("image", ImageFeature()).cast_column("label", ClassLabel(num_classes=10))
    with tempfile.TemporaryDirectory() as out:
        generator = DADGenerator(classifier, discretizer, dataset, out, (opts.image_size, opts.image_size),
                                 attack=AttackSettings.offline(), batch_size=opts.batch_size,
                                 shard_size=opts.batch_size * 8, num_workers=opts.workers, progress=False,
                                 autocast=torch.bfloat16 if opts.bf16 else None)  # as recipes/dad.py runs it
        start = time.perf_counter()
        generator.run()
        total = time.perf_counter() - start
    seconds = generator.stopwatch.seconds
    return {"images": opts.generate, "images_per_s": round(opts.generate / total, 2),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "images_per_s_by_section": {k: round(opts.generate / v, 2) for k, v in seconds.items() if v > 0}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--vq_channels", type=int, nargs="+", default=[32, 64, 64])
    parser.add_argument("--vq_codes", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="Alternating runs of each; medians are reported.")
    parser.add_argument("--generate", type=int, default=256, help="Images generated offline.")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--eager", action="store_true", help="Eager attention (faster than sdpa on CPUs).")
    opts = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
        opts.eager = True
    data = RandomImages(opts.batch_size * (opts.warmup + opts.steps + 1), opts.image_size)
    kd, dad = [], []
    for _ in range(opts.repeats):  # alternated, so drifting clocks or neighbours hit both alike
        kd.append(step_rate(opts, data, device, "none"))
        dad.append(step_rate(opts, data, device, "online"))
    kd_rate, dad_rate = statistics.median(kd), statistics.median(dad)
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": f"ViT h{opts.hidden_size} L{opts.layers} {opts.image_size}px/{opts.patch_size}, "
                 f"VQ {opts.vq_channels} x{opts.vq_codes} codes",
        "batch_size": opts.batch_size, "bf16": opts.bf16,
        "kd_step_s": round(1 / kd_rate, 4), "online_dad_step_s": round(1 / dad_rate, 4),
        "online_step_ratio": round(kd_rate / dad_rate, 3),
        "offline_generation": generation_throughput(opts, device),
    }))


if __name__ == "__main__":
    main()
