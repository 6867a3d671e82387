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
    return {"seconds": round(end - start, 2), "setup_seconds": None if watcher.at is None else round(watcher.at - start, 2),
            "before_first_step": watcher.at is None, "files_written": written, "error": error}


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.basicConfig(level=logging.ERROR)
    import dad
    import multilevel
    from datasets import ClassLabel, Dataset, DatasetDict, Image as ImageFeature

    from hf_robust_distill.data import demo_digits
    from hf_robust_distill.demo import DEMO_CAPTIONS, build_word_tokenizer, demo_clip_config, demo_clip_image_processor, demo_vq_model
    from hf_robust_distill.discretize import VQDiscretizer
    from tests.conftest import DIGIT_NAMES, save_tiny_vit, truncate, write_photo_folder
    from transformers import CLIPModel

    work = tempfile.mkdtemp(prefix="bad-inputs-")
    vit = save_tiny_vit(os.path.join(work, "vit"))
    clip = os.path.join(work, "clip")
    tokenizer = build_word_tokenizer([t.format(n) for n in DIGIT_NAMES for t in DEMO_CAPTIONS])
    CLIPModel(demo_clip_config(tokenizer, hidden_size=32, vision_layers=2, text_layers=2, heads=2)).save_pretrained(clip)
    tokenizer.save_pretrained(clip)
    demo_clip_image_processor().save_pretrained(clip)
    vq = os.path.join(work, "vq")
    VQDiscretizer(demo_vq_model(num_codes=64), input_range="[-1,1]").save_pretrained(vq)
    photos = write_photo_folder(os.path.join(work, "photos"))
    bad_photos = shutil.copytree(photos, os.path.join(work, "bad-photos"))
    truncate(os.path.join(bad_photos, "test", "coffee", "1.jpg"))
    bad_train = shutil.copytree(photos, os.path.join(work, "bad-train"))
    truncate(os.path.join(bad_train, "train", "cat", "3.jpg"))
    digits = demo_digits()
    labels = ClassLabel(names=DIGIT_NAMES)

    def saved(name, splits):
        parts = {}
        for split, (rows, values, feature) in splits.items():
            part = Dataset.from_dict({"image": rows["image"], "label": values}).cast_column("image", ImageFeature())
            parts[split] = part.cast_column("label", feature) if feature is not None else part
        DatasetDict(parts).save_to_disk(os.path.join(work, name))
        return os.path.join(work, name)

    train, test = digits["train"].select(range(48)), digits["test"].select(range(16))
    unlabelled = saved("unlabelled", {"train": (train, train["label"], labels), "test": (test, [-1] * 16, labels)})
    integers = saved("integers", {"train": (train, train["label"], None), "test": (test, test["label"], None)})
    one = ClassLabel(names=["cat"])
    one_class = saved("one-class", {"train": (train, [0] * 48, one), "test": (test, [0] * 16, one)})
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

    cases = [
        ("multilevel", "good run (reference)", multilevel, lambda out: multilevel_argv(out)),
        ("multilevel", "typo in --eval_distortions", multilevel, lambda out: multilevel_argv(out, "--eval_distortions", "gausian_noise:3")),
        ("multilevel", "typo in --robustness_corruptions", multilevel, lambda out: multilevel_argv(out, "--robustness_corruptions", "glass_blurr")),
        ("multilevel", "--robustness_corruptions snow (no torch port)", multilevel, lambda out: multilevel_argv(out, "--robustness_corruptions", "snow")),
        ("multilevel", "--robustness_severities 6", multilevel, lambda out: multilevel_argv(out, "--robustness_severities", "6")),
        ("multilevel", "--robustness_baseline teachr", multilevel, lambda out: multilevel_argv(out, "--robustness_baseline", "teachr")),
        ("multilevel", "--natural_shifts imagenet-r (no dataset)", multilevel, lambda out: multilevel_argv(out, "--natural_shifts", "imagenet-r")),
        ("multilevel", "--natural_shifts on an unreachable dataset", multilevel, lambda out: multilevel_argv(out, "--natural_shifts", "r=nobody/nothing:test")),
        ("multilevel", "--probe_label_fraction 0", multilevel, lambda out: multilevel_argv(out, "--probe_label_fraction", "0")),
        ("multilevel", "--hub_model_id 'me/my model!!'", multilevel, lambda out: multilevel_argv(out, "--push_to_hub", "--hub_model_id", "me/my model!!")),
        ("multilevel", "YAML typo (learning_rte:)", multilevel, lambda out: ["--config", typo, *multilevel_argv(out)]),
        ("multilevel", "unknown flag --learnig_rate", multilevel, lambda out: multilevel_argv(out, "--learnig_rate", "1e-4")),
        ("multilevel", "truncated JPEG in the evaluation split", multilevel, lambda out: multilevel_argv(out, data=bad_photos)),
        ("multilevel", "explicit eval split of -1 labels", multilevel, lambda out: multilevel_argv(out, "--eval_split", "test", data=unlabelled)),
        ("multilevel", "KD teacher of other classes", multilevel, lambda out: multilevel_argv(out, "--kd_weight", "1")),
        ("multilevel", "one-class data with --push_to_hub", multilevel, lambda out: multilevel_argv(out, "--push_to_hub", "--hub_model_id", "me/one", data=one_class)),
        ("multilevel", "truncated JPEG in the training split (skipped)", multilevel, lambda out: multilevel_argv(out, "--max_bad_image_fraction", "0.05", data=bad_train)),
        ("multilevel", "--learning_rate 1e6 (diverges)", multilevel, lambda out: multilevel_argv(out, "--learning_rate", "1e6", "--max_steps", "6")),
        ("dad", "good run (reference)", dad, lambda out: dad_argv(out)),
        ("dad", "missing --vq_name_or_path folder", dad, lambda out: dad_argv(out, "--vq_name_or_path", os.path.join(work, "no-vq"))),
        ("dad", "CLIP teacher, integer labels, no names", dad, lambda out: dad_argv(out, data=integers)),
        ("dad", "--dad_dataset that does not exist", dad, lambda out: dad_argv(out, "--dad_mode", "offline", "--dad_dataset", os.path.join(work, "no-dad"))),
    ]
    rows = []
    for recipe_name, case, recipe, argv in cases:
        out = os.path.join(work, f"out-{len(rows)}")
        row = {"recipe": recipe_name, "input": case, **attempt(recipe, argv(out), out)}
        rows.append(row)
        print(f"{case}: {row['seconds']} s, {row['error']}", file=sys.stderr, flush=True)
    setup = {r["recipe"]: r["setup_seconds"] for r in rows if r["input"].startswith("good run")}
    for row in rows:
        row["share_of_setup"] = round(row["seconds"] / setup[row["recipe"]], 2) if row["before_first_step"] else None
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"setup_seconds": setup, "rows": rows}, indent=1))
    print("\n| recipe | bad input | seconds to the error | share of setup | before the first step | files written | error |",
          file=sys.stderr)
    print("|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        share = "" if r["share_of_setup"] is None else f"{r['share_of_setup']:.2f}"
        print(f"| {r['recipe']} | {r['input']} | {r['seconds']} | {share} | {'yes' if r['before_first_step'] else 'no'} | "
              f"{'yes' if r['files_written'] else 'no'} | {r['error'] or '(none)'} |", file=sys.stderr)


if __name__ == "__main__":
    main()
