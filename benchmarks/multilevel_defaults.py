"""The sweep behind ``recipes/multilevel.py``'s method defaults (``METHOD_DEFAULTS``): one setting
changed at a time around them (optimiser, learning rate, schedule, warm-up, weight decay,
distortion mix), each trained by the recipe itself on the embedded digits with the demo zoo's
ViT as teacher and student initialisation, over two seeds. Prints JSON: per setting, the mean
top-1 accuracy over clean images and eight distortions the training mixes do not all contain
(the score), clean accuracy, and the per-column means.

    python benchmarks/multilevel_defaults.py                 # about 10 minutes on two CPU cores
    python benchmarks/multilevel_defaults.py --seeds 0 --epochs 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))

COLUMNS = "pixel_mask:0.7,noise:0.3,blur:2,gaussian_noise:3,defocus_blur:3,contrast:3,jpeg_compression:3"
VARIANTS = {
    "learning_rate": ["1e-4", "2e-4", "5e-4", "1e-3", "2e-3"],
    "lr_scheduler_type": ["linear", "constant_with_warmup"],
    "warmup_steps": ["0", "0.05", "0.1"],
    "weight_decay": ["0", "1e-4", "0.1"],
    "optim": ["sgd"],
    "distortions": ["pixel_mask:0.5-0.9,noise:0.1-0.5,blur:1-4", "pixel_mask:0.5-0.8,noise:0.2-0.5,blur:2-3",
                    "clean,pixel_mask:0.5-0.9,noise:0.1-0.5,blur:1-4", "patch_mask:0.5-0.9,noise:0.1-0.5,blur:1-4"],
}


def run(recipe, teacher: str, overrides: dict, seed: int, epochs: int, work: str) -> dict:
    argv = ["--teacher_name_or_path", teacher, "--output_dir", os.path.join(work, f"run-{time.time_ns()}"),
            "--num_train_epochs", str(epochs), "--per_device_train_batch_size", "32", "--seed", str(seed),
            "--logging_steps", "1000", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
            "--eval_distortions", COLUMNS, "--robustness_corruptions", "contrast", "--robustness_severities", "3",
            "--corruption_cache_dir", os.path.join(work, "cache"), "--use_cpu", "--force_push"]
    for key, value in overrides.items():
        argv += [f"--{key}", value]
    row = recipe.main(argv)["table"]["student"]
    return {"score": sum(row.values()) / len(row), "clean": row["clean"], **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--settings", nargs="+", default=None,
                        help="run only these, e.g. defaults learning_rate=2e-3 (default: every setting)")
    opts = parser.parse_args()
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.disable(logging.WARNING)
    import multilevel

    from hf_robust_distill.cli import demo_model

    teacher = demo_model("vit", zoo_dir=os.path.join(ROOT, "demo_output", "zoo"), seed=42)  # the demo's seed
    settings = [("defaults", {})] + [(f"{k}={v}", {k: v, **({"learning_rate": "1e-2"} if v == "sgd" else {})})
                                     for k, values in VARIANTS.items() for v in values
                                     if str(multilevel.METHOD_DEFAULTS.get(k)) != v]
    if opts.settings:
        settings = [(name, overrides) for name, overrides in settings if name in opts.settings]
    results = {"defaults": {k: str(v) for k, v in multilevel.METHOD_DEFAULTS.items()}, "epochs": opts.epochs,
               "seeds": opts.seeds, "settings": {}}
    with tempfile.TemporaryDirectory() as work, contextlib.redirect_stdout(sys.stderr):  # the recipe's tables
        for name, overrides in settings:
            runs = [run(multilevel, teacher, overrides, seed, opts.epochs, work) for seed in opts.seeds]
            mean = {k: round(100 * sum(r[k] for r in runs) / len(runs), 2) for k in runs[0]}
            results["settings"][name] = mean
            print(f"{name}: score {mean['score']:.2f}, clean {mean['clean']:.2f}", file=sys.stderr, flush=True)
    ranked = sorted(results["settings"].items(), key=lambda kv: -kv[1]["score"])
    results["ranking"] = [name for name, _ in ranked]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
