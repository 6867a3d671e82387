"""What each training view costs a step: the operations that would make the host wait for a GPU
(counted at torch's dispatcher by ``hf_robust_distill.utils.SyncCounter``, on a GPU also by
``torch.cuda.set_sync_debug_mode``), and its time against one training step of the student.

    python benchmarks/view_cost.py                               # small ViT, CPU
    python benchmarks/view_cost.py --hidden_size 768 --layers 12 --heads 12 --image_size 224 \\
        --patch_size 16 --batch_size 64 --bf16                   # ViT-B/16 on a GPU

Views: the multi-level recipe's default distortions, each paper distortion, the ImageNet-C
corruptions as training views (severities 1-5), mixup/cutmix and the online DAD view (the training
augmentation runs in the loader's workers: ``benchmarks/data_throughput.py``) (a teacher of the student's size and a small VQ model). The student step is
forward and backward of the student through its door, as ``compute_loss`` runs it (accelerate's
autocast around the student alone under ``--bf16``). Prints one JSON object per view.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
from step_overhead import add_vit_arguments  # this folder's sibling script


def clock(fn, device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_syncs(fn, device) -> dict:
    from hf_robust_distill.utils import SyncCounter

    with SyncCounter() as counter:
        fn()
    counts = {"syncs": counter.total, "ops": dict(counter.counts)}
    if device.type == "cuda":  # also host reads the dispatcher cannot see (.cpu(), .tolist())
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts["cuda_syncs"] = sum("synchroniz" in str(w.message) for w in caught)
    return counts


def views(opts, device, labels):
    from transformers import ViTForImageClassification

    from hf_robust_distill import Distorter, VQDiscretizer
    from hf_robust_distill.cli import demo_image_processor, demo_vq_model
    from hf_robust_distill.methods.dad import dad_images
    from hf_robust_distill.models import PixelPreprocessor, PixelSpaceClassifier
    from hf_robust_distill.views import MixingSettings, mix_batch
    from hf_robust_distill.views.corruptions import CORRUPTIONS

    made = {spec: Distorter(spec, patch_size=opts.patch_size) for spec in (
        "clean,pixel_mask:0.5-0.9,noise:0.1-0.5,blur:1-4", "noise:0.1-0.5", "blur:1-4", "blur:1-9",
        "pixel_mask:0.5-0.9", "patch_mask:0.5-0.9")}
    made.update({f"{name}:1-5": Distorter(f"{name}:1-5") for name in CORRUPTIONS})
    mixing = MixingSettings(0.8, 1.0, label_smoothing=0.1)
    made["mixup/cutmix"] = lambda x, g: mix_batch([x], labels, 10, mixing, g)[0][0]
    teacher = ViTForImageClassification(student_config(opts)).to(device).eval().requires_grad_(False)
    classifier = PixelSpaceClassifier(teacher, PixelPreprocessor.from_image_processor(
        demo_image_processor(opts.image_size)))
    discretizer = VQDiscretizer(demo_vq_model(opts.image_size), input_range="[-1,1]").to(device)
    made["dad (online)"] = lambda x, g: dad_images(classifier, discretizer, x, labels, generator=g)
    return made


def student_config(opts):
    from transformers import ViTConfig

    return ViTConfig(image_size=opts.image_size, patch_size=opts.patch_size, hidden_size=opts.hidden_size,
                     num_hidden_layers=opts.layers, num_attention_heads=opts.heads,
                     intermediate_size=4 * opts.hidden_size, num_labels=10)


def student_step(opts, device, pixels):
    """One forward and backward of the student through its door, as training runs it."""
    import tempfile

    from transformers import ViTForImageClassification

    from hf_robust_distill import DistillationConfig, RobustDistillationTrainer
    from hf_robust_distill.cli import demo_image_processor

    torch.manual_seed(0)
    student = ViTForImageClassification(student_config(opts))
    with tempfile.TemporaryDirectory() as out:
        args = DistillationConfig(output_dir=out, use_cpu=device.type == "cpu", bf16=opts.bf16, report_to="none",
                                  cls_weight=0, patch_weight=0, attn_weight=0, ce_weight=1.0, distortions="clean")
        trainer = RobustDistillationTrainer(model=student, teacher=None, args=args,
                                            processing_class=demo_image_processor(opts.image_size))
    model = trainer.accelerator.prepare_model(student)
    model.train()
    labels = torch.randint(10, (len(pixels),), device=device)

    def step():
        loss = trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels})
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_vit_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--only", default=None, help="View names to run, separated by ';' (default: all).")
    opts = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(opts.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    generator = torch.Generator(device=device)
    pixels = torch.rand(opts.batch_size, 3, opts.image_size, opts.image_size, device=device)
    labels = torch.randint(10, (opts.batch_size,), device=device)
    step_seconds = clock(student_step(opts, device, pixels), device, opts.repeats)
    model = f"ViT h{opts.hidden_size} L{opts.layers} {opts.image_size}px/{opts.patch_size}"
    only = set(opts.only.split(";")) if opts.only else None
    for name, view in views(opts, device, labels).items():
        if only is not None and name not in only:
            continue

        def run(view=view):
            with torch.no_grad():
                view(pixels, generator.manual_seed(0))

        seconds = clock(run, device, opts.repeats)
        print(json.dumps({"view": name, **count_syncs(run, device), "ms": round(1000 * seconds, 3),
                          "student_step_ms": round(1000 * step_seconds, 3),
                          "view_per_student_step": round(seconds / step_seconds, 4), "batch_size": opts.batch_size,
                          "student": model, "bf16": opts.bf16,
                          "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}), flush=True)


if __name__ == "__main__":
    main()
