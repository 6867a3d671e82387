"""Images/s and peak memory of one training step with selective attention capture (sdpa on every
layer but the distilled one) against all-eager attention, distilling the last layer's attention
(with the default [CLS] and patch terms) of a ViT-B/16 student from a ViT-B/16 teacher.

    python benchmarks/attention_capture.py                      # CPU: batch 8, 224 px
    python benchmarks/attention_capture.py --batch_size 64 --bf16 --steps 20   # a GPU

Each (variant, repeat) runs in its own process, alternating. Memory is read two ways: the bytes
autograd keeps for the backward pass of one step (every tensor saved by the forward, counted once
per storage: exact, and the same on any device), and on a GPU the step's peak
``max_memory_allocated`` above the memory held before it. Prints one JSON object; the ratios are
selective / eager (speed) and 1 - selective / eager (memory saved), from the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


class SavedForBackward:
    """Counts the bytes of the tensors autograd saves for backward (each storage once)."""

    def __init__(self):
        self.storages = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        self.storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
        return tensor

    def hooks(self):
        import torch

        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def one_run(opts) -> dict:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from hf_robust_distill import DistillationConfig, RobustDistillationTrainer
    from hf_robust_distill.cli import demo_image_processor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
        torch.set_num_threads(opts.threads or torch.get_num_threads())
    config = ViTConfig(image_size=opts.image_size, patch_size=16, hidden_size=opts.hidden_size,
                       num_hidden_layers=opts.layers, num_attention_heads=opts.heads,
                       intermediate_size=4 * opts.hidden_size, num_labels=10)
    torch.manual_seed(0)
    teacher, student = ViTForImageClassification(config), ViTForImageClassification(config)
    with tempfile.TemporaryDirectory() as out:
        args = DistillationConfig(output_dir=out, use_cpu=device.type == "cpu", bf16=opts.bf16, report_to="none",
                                  attn_rows=opts.rows, distortions="noise:0.1-0.3", head_ce_weight=0.0,
                                  teacher_dtype=opts.teacher_dtype)
        trainer = RobustDistillationTrainer(model=student, teacher=teacher, args=args,
                                            processing_class=demo_image_processor(opts.image_size))
    if opts.attention == "eager":
        for model in (student, teacher):
            model.set_attn_implementation("eager")
    if opts.checkpointing:
        student.activation_checkpointing_enable()
    # As Trainer.train prepares it: under --bf16 accelerate autocasts the student's forward, and only
    # it (the teacher runs in its own dtype, the views and losses in float32).
    model = trainer.accelerator.prepare_model(student)
    model.train()
    batch = {"pixel_values": torch.rand(opts.batch_size, 3, opts.image_size, opts.image_size, device=device)}

    def step(saved=None):
        with saved.hooks() if saved is not None else contextlib.nullcontext():
            loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(opts.warmup):
        step()
    saved = SavedForBackward()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    step(saved)
    peak = torch.cuda.max_memory_allocated() - before if device.type == "cuda" else None
    start = time.perf_counter()
    for _ in range(opts.steps):
        step()
    seconds = time.perf_counter() - start
    return {"images_per_s": opts.steps * opts.batch_size / seconds, "saved_bytes": saved.bytes, "peak_bytes": peak,
            "teacher_bytes": sum(p.numel() * p.element_size() for p in trainer.teacher.model.parameters()),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def parser_of(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--hidden_size", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--rows", default="all", choices=["all", "cls"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="Alternating processes of each variant.")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default).")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--attention", default="selective", choices=["selective", "eager"])
    parser.add_argument("--teacher_dtype", default="auto")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def run_variants(variants: dict[str, list[str]], repeats: int, script: str = __file__) -> dict[str, list[dict]]:
    """Each variant (extra flags on top of this command line's) in its own process of ``script``, alternating."""
    runs = {name: [] for name in variants}
    for _ in range(repeats):
        for name, extra in variants.items():
            done = subprocess.run([sys.executable, script, *sys.argv[1:], *extra, "--child"], check=True,
                                  capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def main():
    opts = parser_of(__doc__.splitlines()[0]).parse_args()
    if opts.child:
        print(json.dumps(one_run(opts)))
        return
    runs = run_variants({"selective": ["--attention", "selective"], "eager": ["--attention", "eager"]}, opts.repeats)
    print(json.dumps({
        "device": runs["eager"][0]["device"], "model": f"ViT h{opts.hidden_size} L{opts.layers} {opts.image_size}px/16",
        "batch_size": opts.batch_size, "attn_rows": opts.rows, "bf16": opts.bf16, "steps": opts.steps,
        "repeats": opts.repeats, **compare(runs, "selective", "eager")}))


def compare(runs: dict, new: str, old: str) -> dict:
    """Medians of each variant and the ratios of ``new`` to ``old``."""
    def median(variant, key):
        values = [r[key] for r in runs[variant] if r[key] is not None]
        return statistics.median(values) if values else None

    figures = {}
    for variant in (new, old):
        figures[f"{variant}_images_per_s"] = round(median(variant, "images_per_s"), 2)
        figures[f"{variant}_saved_for_backward_mib"] = round(median(variant, "saved_bytes") / 2**20, 1)
        if median(variant, "peak_bytes") is not None:
            figures[f"{variant}_peak_mib"] = round(median(variant, "peak_bytes") / 2**20, 1)
    figures["speedup"] = round(median(new, "images_per_s") / median(old, "images_per_s"), 3)
    figures["saved_for_backward_reduction"] = round(1 - median(new, "saved_bytes") / median(old, "saved_bytes"), 3)
    if median(old, "peak_bytes"):
        figures["peak_memory_reduction"] = round(1 - median(new, "peak_bytes") / median(old, "peak_bytes"), 3)
    figures["images_per_s_runs"] = {v: [round(r["images_per_s"], 2) for r in runs[v]] for v in (new, old)}
    return figures


if __name__ == "__main__":
    main()
