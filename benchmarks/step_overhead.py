"""Training throughput of ``RobustDistillationTrainer`` against a bare PyTorch loop doing the same
computation: same student, teacher, batches, distortions, losses, optimizer and clipping.

    python benchmarks/step_overhead.py                       # small ViT, CPU friendly
    python benchmarks/step_overhead.py --hidden_size 384 --layers 12 --heads 6 --image_size 224 \\
        --patch_size 16 --batch_size 128 --steps 100 --bf16     # ViT-S/16 on a GPU

Before any timing it checks that the two loops are the same computation: the bare loop's loss on
a batch equals ``compute_loss`` (same view generator), and its optimizer is the class and settings
the trainer builds (``Trainer.get_optimizer_cls_and_kwargs``), with the same clipping and data
loader settings. Then ``--repeats`` alternating runs of each loop time ``--steps`` steps after
``--warmup`` steps, with the thread count pinned. The figure is the median over repeats of
(trainer images/s) / (bare images/s) of adjacent runs, with the per-repeat ratios and their spread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainerCallback, ViTConfig, ViTForImageClassification

from hf_robust_distill import DistillationConfig, Distorter, RobustDistillationTrainer
from hf_robust_distill.cli import demo_image_processor
from hf_robust_distill.data import collate_images
from hf_robust_distill.methods import attention_loss, cls_loss, patch_loss
from hf_robust_distill.models import FeatureTaps, PixelPreprocessor, read_attention_maps
from hf_robust_distill.training import inference_dtype


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
    return student, teacher


def training_args(opts, out, device) -> DistillationConfig:
    return DistillationConfig(
        output_dir=out, per_device_train_batch_size=opts.batch_size, max_steps=opts.warmup + opts.steps,
        learning_rate=1e-4, logging_steps=50, save_strategy="no", report_to="none", disable_tqdm=True,
        distortions=opts.distortions, bf16=opts.bf16, use_cpu=device.type == "cpu", head_ce_weight=0.0,
        dataloader_num_workers=opts.workers, dataloader_pin_memory=device.type == "cuda",
        lr_scheduler_type="constant", seed=0)


def make_trainer(opts, data, device, out, callbacks=()):
    student, teacher = make_models(opts)
    return RobustDistillationTrainer(model=student, teacher=teacher, args=training_args(opts, out, device),
                                     train_dataset=data, processing_class=demo_image_processor(opts.image_size),
                                     callbacks=list(callbacks))


def view_seed(step: int) -> int:
    """The trainer's per-step view seed (seed 0, micro-batch 0, rank 0): ``_view_generator``'s formula."""
    return int(np.random.SeedSequence([0, 0, step, 0, 0]).generate_state(1, dtype=np.uint64)[0] >> 1)


class BareLoop:
    """The distillation step written out with plain PyTorch, as a user without the trainer would."""

    def __init__(self, opts, device, optimizer_cls, optimizer_kwargs, max_grad_norm):
        self.student, self.teacher = make_models(opts)
        self.student.to(device).train()
        # the trainer's frozen teacher: its inference dtype (bf16 on a GPU under --bf16), no autocast
        teacher_dtype = inference_dtype("auto", mixed_precision=opts.bf16, device=device)
        self.teacher.to(device, dtype=teacher_dtype).eval().requires_grad_(False)
        self.pre = PixelPreprocessor.from_image_processor(demo_image_processor(opts.image_size))
        self.distorter = Distorter(opts.distortions, patch_size=opts.patch_size)
        self.s_taps = FeatureTaps(self.student, token_layers=[-1], attention_layers=[-1])
        self.t_taps = FeatureTaps(self.teacher, token_layers=[-1], attention_layers=[-1])
        for model, taps in ((self.student, self.s_taps), (self.teacher, self.t_taps)):  # as the trainer does
            read_attention_maps(model, taps.attention_modules, taps.attention_layers)
        self.optimizer = optimizer_cls(self.student.parameters(), **optimizer_kwargs)
        self.max_grad_norm = max_grad_norm
        self.generator = torch.Generator(device=device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.bf16)
        self.device = device

    def loss(self, pixels, step):
        with torch.no_grad():
            view = self.distorter(pixels, self.generator.manual_seed(view_seed(step)))
            t = self.t_taps(self.teacher, self.pre(pixels))
        with self.autocast:  # what accelerate wraps around the prepared student's forward, and nothing else
            s = self.s_taps(self.student, self.pre(view))
        last = self.s_taps.depth - 1
        return (cls_loss(s.cls, t.cls) + patch_loss([s.patch_tokens(last)], [t.patch_tokens(last)])
                + 0.1 * attention_loss([s.attentions[last]], [t.attentions[last]]))

    def run(self, opts, data):
        loader = DataLoader(data, batch_size=opts.batch_size, shuffle=True, collate_fn=collate_images,
                            num_workers=opts.workers, pin_memory=self.device.type == "cuda")
        times, step = [], 0
        while step < opts.warmup + opts.steps:
            for batch in loader:
                pixels = batch["pixel_values"].to(self.device, non_blocking=True)
                self.loss(pixels, step).backward()
                torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter())
                step += 1
                if step == opts.warmup + opts.steps:
                    break
        return opts.steps * opts.batch_size / (times[-1] - times[opts.warmup - 1])


def check_same_computation(opts, data, device) -> dict:
    """Fails unless the bare loop computes the trainer's loss and uses its optimizer and clipping."""
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(opts, data, device, out)
        args = trainer.args
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, trainer.model)
        bare = BareLoop(opts, device, optimizer_cls, optimizer_kwargs, args.max_grad_norm)
        built = trainer.create_optimizer()
        if type(built) is not optimizer_cls or any(built.defaults[k] != v for k, v in optimizer_kwargs.items()):
            raise AssertionError(f"the trainer built {type(built).__name__} {built.defaults}, the bare loop "
                                 f"{optimizer_cls.__name__} {optimizer_kwargs}")
        if args.weight_decay != 0 or args.gradient_accumulation_steps != 1 or args.dataloader_drop_last:
            raise AssertionError("the bare loop assumes no weight decay, accumulation or dropped last batch")
        batch = collate_images([data[i] for i in range(opts.batch_size)])
        pixels = batch["pixel_values"].to(device)
        model = trainer.accelerator.prepare_model(trainer.model)  # as Trainer.train prepares it (autocast under --bf16)
        model.train()
        trainer.views.seeds.restart()
        with trainer.compute_loss_context_manager():
            expected = float(trainer.compute_loss(model, {"pixel_values": pixels}).detach())
        got = float(bare.loss(pixels, 0).detach())
        if not math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-5):
            raise AssertionError(f"the bare loop's loss {got} differs from the trainer's {expected}")
    return {"optimizer": f"{optimizer_cls.__name__} {optimizer_kwargs}", "max_grad_norm": args.max_grad_norm,
            "loss_checked": round(expected, 6)}


def run_trainer(opts, data, device):
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(sys.stderr):  # the JSON stays alone on stdout
        make_trainer(opts, data, device, out, callbacks=[clock]).train()
    return opts.steps * opts.batch_size / (clock.times[-1] - clock.times[opts.warmup - 1])


def run_bare(opts, data, device):
    with tempfile.TemporaryDirectory() as out:
        args = training_args(opts, out, device)
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    return BareLoop(opts, device, optimizer_cls, optimizer_kwargs, args.max_grad_norm).run(opts, data)


def add_vit_arguments(parser: argparse.ArgumentParser) -> None:
    """The shape of the benchmark's ViT (teacher and student alike) and its batch size."""
    parser.add_argument("--hidden_size", type=int, default=96)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_vit_arguments(parser)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="Alternating runs of each loop.")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, pinned for both loops.")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--distortions", default="pixel_mask:0.5-0.9,noise:0.1-0.5,blur:1-2")
    parser.add_argument("--bf16", action="store_true")
    opts = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(opts.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    data = RandomImages(opts.batch_size * (opts.warmup + opts.steps + 1), opts.image_size)
    same = check_same_computation(opts, data, device)
    bare_runs, trainer_runs = [], []
    for repeat in range(opts.repeats):  # alternated (and the order flipped), so drift hits both alike
        first, second = (run_bare, run_trainer) if repeat % 2 == 0 else (run_trainer, run_bare)
        a, b = first(opts, data, device), second(opts, data, device)
        bare, trainer = (a, b) if first is run_bare else (b, a)
        bare_runs.append(bare)
        trainer_runs.append(trainer)
    ratios = [t / b for t, b in zip(trainer_runs, bare_runs)]
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": f"ViT h{opts.hidden_size} L{opts.layers} {opts.image_size}px/{opts.patch_size}",
        "batch_size": opts.batch_size, "steps": opts.steps, "warmup": opts.warmup, "threads": opts.threads,
        "bf16": opts.bf16, "same_computation": same,
        "trainer_images_per_s": round(statistics.median(trainer_runs), 2),
        "bare_images_per_s": round(statistics.median(bare_runs), 2),
        "ratio": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3), "ratios": [round(r, 3) for r in ratios], "repeats": opts.repeats,
    }))


if __name__ == "__main__":
    main()
