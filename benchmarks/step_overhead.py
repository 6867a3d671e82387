"""Images/s of a RobustDistillationTrainer training step against a bare PyTorch loop doing the
identical computation (same student, teacher, batch, distortions, losses, AdamW, grad clipping).

    python benchmarks/step_overhead.py                       # small ViT, CPU friendly
    python benchmarks/step_overhead.py --hidden_size 384 --layers 12 --heads 6 --image_size 224 \\
        --patch_size 16 --batch_size 128 --steps 50 --bf16     # ViT-S/16 on a GPU

Prints one JSON object; ratio = trainer / bare (1.0 means no overhead), from the medians of
``--repeats`` alternating runs of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import TrainerCallback, ViTConfig, ViTForImageClassification

from hf_robust_distill import DistillationConfig, Distorter, RobustDistillationTrainer
from hf_robust_distill.data import collate_images
from hf_robust_distill.demo import demo_image_processor
from hf_robust_distill.losses import attention_loss, cls_loss, patch_loss
from hf_robust_distill.models import FeatureTaps, PixelPreprocessor


class RandomImages(Dataset):
    def __init__(self, n, size, num_labels=10):
        g = torch.Generator().manual_seed(0)
        self.pixels = torch.rand(n, 3, size, size, generator=g)
        self.labels = torch.randint(num_labels, (n,), generator=g)

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixels[i], "labels": int(self.labels[i])}


class StepClock(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def make_models(opts):
    config = ViTConfig(image_size=opts.image_size, patch_size=opts.patch_size, hidden_size=opts.hidden_size,
                       num_hidden_layers=opts.layers, num_attention_heads=opts.heads,
                       intermediate_size=4 * opts.hidden_size, num_labels=10)
    torch.manual_seed(0)
    teacher = ViTForImageClassification(config)
    student = ViTForImageClassification(config)
    student.load_state_dict(teacher.state_dict())
    for m in (teacher, student):
        m.set_attn_implementation("eager")
    return student, teacher


def run_trainer(opts, data, device):
    student, teacher = make_models(opts)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        args = DistillationConfig(
            output_dir=out, per_device_train_batch_size=opts.batch_size, max_steps=opts.warmup + opts.steps,
            learning_rate=1e-4, logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True,
            distortions=opts.distortions, bf16=opts.bf16, use_cpu=device.type == "cpu",
            dataloader_num_workers=opts.workers, dataloader_pin_memory=device.type == "cuda",
            lr_scheduler_type="constant",
        )
        trainer = RobustDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=data,
                                            processing_class=demo_image_processor(opts.image_size),
                                            callbacks=[clock])
        trainer.train()
    span = clock.times[-1] - clock.times[opts.warmup - 1]
    return opts.steps * opts.batch_size / span


def run_bare(opts, data, device):
    student, teacher = make_models(opts)
    student.to(device).train()
    teacher.to(device).eval().requires_grad_(False)
    pre = PixelPreprocessor.from_image_processor(demo_image_processor(opts.image_size))
    distorter = Distorter(opts.distortions, patch_size=opts.patch_size)
    s_taps = FeatureTaps(student, token_layers=[-1], attention_layers=[-1])
    t_taps = FeatureTaps(teacher, token_layers=[-1], attention_layers=[-1])
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.0)
    generator = torch.Generator(device=device)
    loader = DataLoader(data, batch_size=opts.batch_size, shuffle=True, collate_fn=collate_images,
                        num_workers=opts.workers, pin_memory=device.type == "cuda", drop_last=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.bf16)
    times, step = [], 0
    while step < opts.warmup + opts.steps:
        for batch in loader:
            pixels = batch["pixel_values"].to(device, non_blocking=True)
            with autocast:
                with torch.no_grad():
                    view = distorter(pixels, generator.manual_seed(step))
                    t = t_taps(teacher, pre(pixels))
                s = s_taps(student, pre(view))
                last = s_taps.depth - 1
                loss = (cls_loss(s.cls, t.cls) + patch_loss([s.patch_tokens(last)], [t.patch_tokens(last)])
                        + 0.1 * attention_loss([s.attentions[last]], [t.attentions[last]]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            step += 1
            if step == opts.warmup + opts.steps:
                break
    span = times[-1] - times[opts.warmup - 1]
    return opts.steps * opts.batch_size / span


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden_size", type=int, default=96)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="Alternating runs of each; medians are reported.")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--distortions", default="pixel_mask:0.5-0.9,noise:0.1-0.5,blur:1-2")
    parser.add_argument("--bf16", action="store_true")
    opts = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    data = RandomImages(opts.batch_size * (opts.warmup + opts.steps + 1), opts.image_size)
    bare_runs, trainer_runs = [], []
    for _ in range(opts.repeats):  # alternated, so drifting clocks or neighbours hit both alike
        bare_runs.append(run_bare(opts, data, device))
        trainer_runs.append(run_trainer(opts, data, device))
    bare, trainer = statistics.median(bare_runs), statistics.median(trainer_runs)
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": f"ViT h{opts.hidden_size} L{opts.layers} {opts.image_size}px/{opts.patch_size}",
        "batch_size": opts.batch_size, "steps": opts.steps, "bf16": opts.bf16,
        "trainer_images_per_s": round(trainer, 2), "bare_images_per_s": round(bare, 2),
        "ratio": round(trainer / bare, 3), "repeats": opts.repeats,
    }))


if __name__ == "__main__":
    main()
