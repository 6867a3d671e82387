"""How fast each bad input fails, and whether anything is written first.

Each row runs a training recipe in this process (imports paid once) on tiny models and small real
image folders, with one bad input, and records the seconds until the error, whether the first
training step had started, and whether anything was written to ``output_dir``. The reference rows
are good runs of each recipe, timed to the start of training (their setup). Prints JSON and a
Markdown table.

    python benchmarks/bad_inputs.py
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "recipes"))


class TrainingStart(logging.Handler):
    """Notes when ``Trainer`` logs the start of training."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.at = None

    def emit(self, record):
        if self.at is None and "Running training" in record.getMessage():
            self.at = time.perf_counter()


def attempt(recipe, argv: list[str], output_dir: str) -> dict:
    watcher = TrainingStart()
    trainer_logger = logging.getLogger("transformers.trainer")
    trainer_logger.addHandler(watcher)
    level = trainer_logger.level
    trainer_logger.setLevel(logging.INFO)
    start = time.perf_counter()
    error = None
    try:
        recipe.main(argv)
    except Exception as raised:  # the row records whatever the recipe raised
        error = f"{type(raised).__name__}: {str(raised).splitlines()[-1].strip()[:160]}"
        if not isinstance(raised, (ValueError, FloatingPointError, RuntimeError)):
            traceback.print_exc()
    finally:
        trainer_logger.removeHandler(watcher)
        trainer_logger.setLevel(level)
    end = time.perf_counter()
    written = os.path.isdir(output_dir) and any(os.scandir(output_dir))
    setup = None if watcher.at is None else round(watcher.at - start, 2)
    return {"seconds": round(end - start, 2), "setup_seconds": setup, "before_first_step": watcher.at is None,
            "files_written": written, "error": error}


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.basicConfig(level=logging.ERROR)
    import dad
    import multilevel
    from datasets import ClassLabel

    from tests.conftest import (DIGIT_NAMES, save_image_dataset, save_tiny_clip, save_tiny_vit, save_tiny_vq, truncate,
                                write_photo_folder)

    from hf_robust_distill.data import demo_digits

    work = tempfile.mkdtemp(prefix="bad-inputs-")
    vit = save_tiny_vit(os.path.join(work, "vit"))
    clip = save_tiny_clip(os.path.join(work, "clip"))
    vq = save_tiny_vq(os.path.join(work, "vq"))
    photos = write_photo_folder(os.path.join(work, "photos"))
    bad_photos = shutil.copytree(photos, os.path.join(work, "bad-photos"))
    truncate(os.path.join(bad_photos, "test", "coffee", "1.jpg"))
    bad_train = shutil.copytree(photos, os.path.join(work, "bad-train"))
    truncate(os.path.join(bad_train, "train", "cat", "3.jpg"))
    digits = demo_digits()
    labels = ClassLabel(names=DIGIT_NAMES)

    train, test = digits["train"].select(range(48)), digits["test"].select(range(16))
    unlabelled = save_image_dataset(os.path.join(work, "unlabelled"), {
        "train": (train["image"], train["label"], labels), "test": (test["image"], [-1] * 16, labels)})
    integers = save_image_dataset(os.path.join(work, "integers"), {
        "train": (train["image"], train["label"], None), "test": (test["image"], test["label"], None)})
    one = ClassLabel(names=["cat"])
    one_class = save_image_dataset(os.path.join(work, "one-class"), {
        "train": (train["image"], [0] * 48, one), "test": (test["image"], [0] * 16, one)})
    typo = os.path.join(work, "typo.yaml")
    with open(typo, "w") as f:
        f.write("learning_rte: 0.1\n")

    def multilevel_argv(out, *extra, data=photos):
        return ["--teacher_name_or_path", vit, "--dataset_name", data, "--output_dir", out, "--max_steps", "2",
                "--per_device_train_batch_size", "8", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
                "--disable_tqdm", "true", "--robustness_corruptions", "contrast", "--robustness_severities", "2",
                "--corruption_cache_dir", os.path.join(work, "cache"), "--force_push", *extra]

    def dad_argv(out, *extra, data=None):
        return ["--teacher_name_or_path", clip, "--prompt_templates", "short", "--vq_name_or_path", vq,
                "--student_name_or_path", vit, "--output_dir", out, "--max_train_samples", "16",
                "--max_eval_samples", "16", "--max_steps", "2", "--per_device_train_batch_size", "8", "--use_cpu",
                "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--eval_distortions",
                "contrast:2", "--robustness_corruptions", "contrast", "--robustness_severities", "2",
                "--corruption_cache_dir", os.path.join(work, "cache"), "--force_push",
                *(["--dataset_name", data] if data else []), *extra]

    cases = [  # (recipe, the bad input, its flags, its data)
        ("multilevel", "good run (reference)", [], photos),
        ("multilevel", "typo in --eval_distortions", ["--eval_distortions", "gausian_noise:3"], photos),
        ("multilevel", "typo in --robustness_corruptions", ["--robustness_corruptions", "glass_blurr"], photos),
        ("multilevel", "--robustness_severities 6", ["--robustness_severities", "6"], photos),
        ("multilevel", "--robustness_baseline teachr", ["--robustness_baseline", "teachr"], photos),
        ("multilevel", "--natural_shifts imagenet-r (no dataset)", ["--natural_shifts", "imagenet-r"], photos),
        ("multilevel", "--natural_shifts on an unreachable dataset", ["--natural_shifts", "r=nobody/nothing:test"],
         photos),
        ("multilevel", "--probe_label_fraction 0", ["--probe_label_fraction", "0"], photos),
        ("multilevel", "--hub_model_id 'me/my model!!'", ["--push_to_hub", "--hub_model_id", "me/my model!!"], photos),
        ("multilevel", "YAML typo (learning_rte:)", ["--config", typo], photos),
        ("multilevel", "unknown flag --learnig_rate", ["--learnig_rate", "1e-4"], photos),
        ("multilevel", "truncated JPEG in the evaluation split", [], bad_photos),
        ("multilevel", "explicit eval split of -1 labels", ["--eval_split", "test"], unlabelled),
        ("multilevel", "KD teacher of other classes", ["--kd_weight", "1"], photos),
        ("multilevel", "one-class data with --push_to_hub", ["--push_to_hub", "--hub_model_id", "me/one"], one_class),
        ("multilevel", "truncated JPEG in the training split (skipped)", ["--max_bad_image_fraction", "0.05"],
         bad_train),
        ("multilevel", "--learning_rate 1e6 (diverges)", ["--learning_rate", "1e6", "--max_steps", "6"], photos),
        ("dad", "good run (reference)", [], None),
        ("dad", "missing --vq_name_or_path folder", ["--vq_name_or_path", os.path.join(work, "no-vq")], None),
        ("dad", "CLIP teacher, integer labels, no names", [], integers),
        ("dad", "--dad_dataset that does not exist",
         ["--dad_mode", "offline", "--dad_dataset", os.path.join(work, "no-dad")], None),
    ]
    recipes = {"multilevel": (multilevel, multilevel_argv), "dad": (dad, dad_argv)}
    rows = []
    for recipe_name, case, flags, data in cases:
        out = os.path.join(work, f"out-{len(rows)}")
        recipe, argv = recipes[recipe_name]
        row = {"recipe": recipe_name, "input": case, **attempt(recipe, argv(out, *flags, data=data), out)}
        rows.append(row)
        print(f"{case}: {row['seconds']} s, {row['error']}", file=sys.stderr, flush=True)
    setup = {r["recipe"]: r["setup_seconds"] for r in rows if r["input"].startswith("good run")}
    for row in rows:
        row["share_of_setup"] = round(row["seconds"] / setup[row["recipe"]], 2) if row["before_first_step"] else None
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"setup_seconds": setup, "rows": rows}, indent=1))
    print("\n| recipe | bad input | seconds to the error | share of setup | before the first step | files written "
          "| error |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        share = "" if r["share_of_setup"] is None else f"{r['share_of_setup']:.2f}"
        before, written = ("yes" if r[k] else "no" for k in ("before_first_step", "files_written"))
        print(f"| {r['recipe']} | {r['input']} | {r['seconds']} | {share} | {before} | {written} | "
              f"{r['error'] or '(none)'} |", file=sys.stderr)


if __name__ == "__main__":
    main()
