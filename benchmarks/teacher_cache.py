"""Three epochs with the live teacher against three with ``--cache_teacher`` (same models, data and
settings): images/s over all three (the cache's build included) and over epochs 2-3 alone.

    python benchmarks/teacher_cache.py                          # small ViTs, CPU friendly
    python benchmarks/teacher_cache.py --hidden_size 768 --layers 12 --heads 12 --image_size 224 \\
        --patch_size 16 --batch_size 64 --images 4096 --bf16      # ViT-B/16 on a GPU

Teacher and student are the same size, distilling [CLS], last-layer patch tokens and attention.
Prints one JSON object; ratio = cached / live images/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time

import torch
from step_overhead import RandomImages, add_vit_arguments, make_models  # this folder's sibling script
from transformers import TrainerCallback

from hf_robust_distill import DistillationConfig, RobustDistillationTrainer
from hf_robust_distill.cli import demo_image_processor


class EpochClock(TrainerCallback):
    def __init__(self):
        self.marks = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter())

    def on_epoch_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.marks.append(time.perf_counter())


def run(opts, data, cache: bool) -> dict:
    student, teacher = make_models(opts)
    clock = EpochClock()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(sys.stderr):
        args = DistillationConfig(output_dir=out, per_device_train_batch_size=opts.batch_size,
                                  per_device_eval_batch_size=opts.batch_size, num_train_epochs=3, save_strategy="no",
                                  report_to="none", disable_tqdm=True, logging_steps=50, use_cpu=device == "cpu",
                                  bf16=opts.bf16, cache_teacher=cache, head_ce_weight=0.0,
                                  distortions="noise:0.1-0.3", dataloader_pin_memory=device == "cuda")
        trainer = RobustDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=data,
                                            processing_class=demo_image_processor(opts.image_size), callbacks=[clock])
        begin = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - begin  # the cache's build included
    later = clock.marks[-1] - clock.marks[1]  # epochs 2 and 3
    return {"all_epochs_images_per_s": 3 * len(data) / total, "epochs_2_3_images_per_s": 2 * len(data) / later}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_vit_arguments(parser)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)
    data = RandomImages(opts.images, opts.image_size)
    live, cached = run(opts, data, cache=False), run(opts, data, cache=True)
    print(json.dumps({
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "model": f"ViT h{opts.hidden_size} L{opts.layers} {opts.image_size}px/{opts.patch_size} (teacher = student)",
        "images": opts.images, "batch_size": opts.batch_size, "bf16": opts.bf16,
        "live": {k: round(v, 2) for k, v in live.items()}, "cached": {k: round(v, 2) for k, v in cached.items()},
        "ratio_all_epochs": round(cached["all_epochs_images_per_s"] / live["all_epochs_images_per_s"], 3),
        "ratio_epochs_2_3": round(cached["epochs_2_3_images_per_s"] / live["epochs_2_3_images_per_s"], 3),
    }))


if __name__ == "__main__":
    main()
