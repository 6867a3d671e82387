"""The sweep behind ``recipes/dad.py``'s method defaults (``DAD_DEFAULTS``), in the style of
``multilevel_defaults.py``: one setting changed at a time around the defaults (the attack's eps,
step and random start, its steps, the loss weights, temperature, learning rate, schedule, epochs),
each trained by the recipe itself (``--plain_kd_baseline --dad_mode online``: the DAD student and
the plain-KD student side by side, the same optimisation) on the embedded digits, over two seeds or
more. The teacher is robust there: the demo ViT's architecture trained on digits under the paper's
distortions (mask, noise, blur); the students start from the demo zoo's ViT (trained on clean
digits, as an ImageNet-pretrained student starts). Both are scored on clean images and on ImageNet-C
corruptions at severity 3 that neither the teacher's nor the students' training contains.

Prints JSON: per setting, per student, the mean top-1 accuracy over the held-out corruptions (the
score) and on each of them (a gain that lands on one corruption shows there), clean accuracy, and
DAD's gain over plain KD, with each seed's; then a table on stderr.

    python benchmarks/dad_defaults.py                      # every setting, two seeds: about an hour on two CPU cores
    python benchmarks/dad_defaults.py --seeds 0 --settings defaults attack_eps=0.5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))

HELD_OUT = ("gaussian_noise:3,shot_noise:3,defocus_blur:3,motion_blur:3,contrast:3,fog:3,brightness:3,"
            "elastic_transform:3,pixelate:3,jpeg_compression:3")
"""ImageNet-C corruptions at severity 3: none is in the teacher's training distortions (pixel masks,
Gaussian noise of the paper's kind, Gaussian blur) nor in the students' (clean and DAD images)."""
TEACHER_DISTORTIONS = "clean,pixel_mask:0.3-0.7,noise:0.1-0.4,blur:1-3"
VARIANTS = {
    "attack_eps": ["0", "0.05", "0.25", "0.5", "1.0"],
    "attack_step_size": ["0.01", "0.25", "0.5", "1.0"],
    "attack_random_start": ["0", "1"],
    "attack_steps": ["3"],
    "kd_weight": ["0.25", "1.0"],
    "dad_kd_weight": ["1.0", "0.25"],
    "ce_weight": ["1.0", "0.5", "0"],
    "dad_ce_weight": ["0.5"],
    "temperature": ["1", "2"],
    "learning_rate": ["1e-4", "1e-3", "2e-3", "5e-3"],
    "lr_scheduler_type": ["linear", "constant_with_warmup"],
    "num_train_epochs": ["2", "8"],
}
"""Values tried around the defaults (a value equal to the default is skipped)."""
TOGETHER = {
    "attack_eps=step=0.25": {"attack_eps": "0.25", "attack_step_size": "0.25"},
    "attack_eps=step=0.5": {"attack_eps": "0.5", "attack_step_size": "0.5"},
    "attack_eps=step=1.0": {"attack_eps": "1.0", "attack_step_size": "1.0"},
    "attack_eps=step=2.0": {"attack_eps": "2.0", "attack_step_size": "2.0"},
    "attack_eps=step=4.0": {"attack_eps": "4.0", "attack_step_size": "4.0"},
    "attack_eps=step=8.0": {"attack_eps": "8.0", "attack_step_size": "8.0"},
    "attack_eps=step=16.0": {"attack_eps": "16.0", "attack_step_size": "16.0"},
    "attack_eps=step=32.0": {"attack_eps": "32.0", "attack_step_size": "32.0"},
    "attack_eps=step=64.0": {"attack_eps": "64.0", "attack_step_size": "64.0"},
    "dad_objective=official": {"dad_objective": "official"},
    "dad_objective=official,kd_weight=1.0,ce_weight=1.0": {"dad_objective": "official", "ce_weight": "1.0",
                                                          "kd_weight": "1.0"},
    "dad_objective=official,kd_weight=1.0,ce_weight=0": {"dad_objective": "official", "ce_weight": "0",
                                                        "kd_weight": "1.0"},
}
"""Settings that move together: the whole budget taken in one step, and the official script's objective."""


def robust_teacher(zoo: str, epochs: int, image_size: int = 32) -> str:
    """The demo ViT's architecture trained from scratch under the paper's distortions: a teacher that is
    robust on the digits (built once at each size, kept beside the zoo)."""
    from hf_robust_distill.cli.demo import build_demo_vit

    path = os.path.join(zoo, f"robust-vit-{epochs}ep" + ("" if image_size == 32 else f"-{image_size}px"))
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        build_demo_vit(path, epochs=epochs, seed=42, image_size=image_size, distortions=TEACHER_DISTORTIONS)
    return path


def zoo_model(zoo: str, kind: str, image_size: int = 32) -> str:
    """The demo zoo's ``vit`` (the students' start) or ``vq`` at 32 px; at another size, the same
    model trained at that size (the ViT's patches scale with it), built once beside the zoo."""
    from hf_robust_distill.cli import demo_model
    from hf_robust_distill.cli.demo import DEMO_BUILDERS

    if image_size == 32:
        return demo_model(kind, zoo_dir=zoo, seed=42)
    path = os.path.join(zoo, f"{kind}-{image_size}px")
    if not os.path.isfile(os.path.join(path, "config.json")):
        DEMO_BUILDERS[kind](path, seed=42, image_size=image_size)
    return path


def run(recipe, models: dict, overrides: dict, seed: int, work: str) -> dict:
    """One recipe run: the DAD and plain-KD students' rows (clean, each held-out corruption)."""
    argv = ["--teacher_name_or_path", models["teacher"], "--student_name_or_path", models["student"],
            "--vq_name_or_path", models["vq"], "--dad_mode", "online", "--plain_kd_baseline",
            "--output_dir", os.path.join(work, f"run-{time.time_ns()}"), "--num_train_epochs", "4",
            "--per_device_train_batch_size", "32", "--seed", str(seed), "--logging_steps", "1000",
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--eval_distortions", HELD_OUT,
            "--robustness_corruptions", "contrast", "--robustness_severities", "3",
            "--corruption_cache_dir", os.path.join(work, "cache"), "--use_cpu", "--force_push"]
    for key, value in overrides.items():
        argv += [f"--{key}", value]
    table = recipe.main(argv)["table"]
    rows = {}
    for name, row in (("dad", table["DAD student"]), ("kd", table["plain-KD student"]), ("teacher", table["teacher"])):
        held_out = {k: 100 * v for k, v in row.items() if k != "clean"}
        rows[name] = {"score": statistics.fmean(held_out.values()), "clean": 100 * row["clean"], "held_out": held_out}
    return rows


def _same(default, value: str) -> bool:
    try:
        return float(default) == float(value)
    except (TypeError, ValueError):
        return str(default) == value


def summary(runs: list[dict]) -> dict:
    """Means over seeds, DAD's gain over plain KD, and each seed's gain (their spread is the noise)."""
    def mean(student, key):
        return round(statistics.fmean(r[student][key] for r in runs), 2)

    def per_corruption(student):
        return {name: round(statistics.fmean(r[student]["held_out"][name] for r in runs), 2)
                for name in runs[0][student]["held_out"]}

    gains = [round(r["dad"]["score"] - r["kd"]["score"], 2) for r in runs]
    return {"dad_score": mean("dad", "score"), "kd_score": mean("kd", "score"), "dad_clean": mean("dad", "clean"),
            "kd_clean": mean("kd", "clean"), "gain": round(statistics.fmean(gains), 2), "gain_per_seed": gains,
            "dad_score_per_seed": [round(r["dad"]["score"], 2) for r in runs],
            "kd_score_per_seed": [round(r["kd"]["score"], 2) for r in runs],
            "teacher_score": mean("teacher", "score"), "teacher_clean": mean("teacher", "clean"),
            "dad_per_corruption": per_corruption("dad"), "kd_per_corruption": per_corruption("kd")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--teacher_epochs", type=int, default=20)
    parser.add_argument("--image_size", type=int, default=32,
                        help="train and score at this size: the student, VQ model and teacher trained at it")
    parser.add_argument("--settings", nargs="+", default=None,
                        help="run only these, e.g. defaults attack_eps=0.5 (default: every setting)")
    parser.add_argument("--around", nargs="+", default=[], metavar="FLAG=VALUE",
                        help="move the centre of the sweep first, e.g. learning_rate=1e-3 (a second round)")
    opts = parser.parse_args()
    centre = dict(item.split("=", 1) for item in opts.around)
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.disable(logging.WARNING)
    import dad

    zoo = os.path.join(ROOT, "demo_output", "zoo")
    with contextlib.redirect_stdout(sys.stderr):  # the builders' logs
        models = {"student": zoo_model(zoo, "vit", opts.image_size), "vq": zoo_model(zoo, "vq", opts.image_size),
                  "teacher": robust_teacher(zoo, opts.teacher_epochs, opts.image_size)}
    defaults = {**dad.DAD_DEFAULTS, "num_train_epochs": 4, "attack_step_size": 0.1, **centre}  # online: step 0.1
    settings = [("defaults", {})] + [(f"{k}={v}", {k: v}) for k, values in VARIANTS.items() for v in values
                                     if not _same(defaults.get(k), v)] + list(TOGETHER.items())
    settings = [(name, {**centre, **overrides}) for name, overrides in settings]
    if opts.settings:
        settings = [(name, overrides) for name, overrides in settings if name in opts.settings]
    results = {"defaults": {k: str(v) for k, v in defaults.items()}, "around": centre, "seeds": opts.seeds,
               "image_size": opts.image_size,
               "held_out": HELD_OUT, "settings": {}}
    with tempfile.TemporaryDirectory() as work, contextlib.redirect_stdout(sys.stderr):  # the recipe's tables
        for name, overrides in settings:
            results["settings"][name] = summary([run(dad, models, overrides, seed, work) for seed in opts.seeds])
            line = results["settings"][name]
            print(f"{name}: DAD {line['dad_score']:.2f} / KD {line['kd_score']:.2f} (gain {line['gain']:+.2f}, "
                  f"seeds {line['gain_per_seed']}), clean {line['dad_clean']:.2f} / {line['kd_clean']:.2f}",
                  file=sys.stderr, flush=True)
    results["ranking_dad"] = sorted(results["settings"], key=lambda n: -results["settings"][n]["dad_score"])
    results["ranking_kd"] = sorted(results["settings"], key=lambda n: -results["settings"][n]["kd_score"])
    print(table(results["settings"]), file=sys.stderr)
    print(json.dumps(results, indent=1))


def table(settings: dict) -> str:
    """The settings as docs/flags.md shows them: scores, gain (per seed) and clean accuracy, in %."""
    lines = ["| setting | DAD | plain KD | gain | clean (DAD / KD) |", "|---|---|---|---|---|"]
    for name, line in settings.items():
        seeds = ", ".join(f"{g:+.1f}" for g in line["gain_per_seed"])
        lines.append(f"| {name} | {line['dad_score']:.1f} | {line['kd_score']:.1f} | {line['gain']:+.1f} ({seeds}) | "
                     f"{line['dad_clean']:.1f} / {line['kd_clean']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
