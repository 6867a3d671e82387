"""The recipes' shared arguments: the data (``DataArguments``) and the robustness report, card and
push (``RobustnessArguments``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.datasets import DEMO_DATASET, SPLIT_SEED, check_dataset_reachable
from ..evaluation.adversarial import SUITES as ATTACK_SUITES, AttackBudget, check_installed as check_attacks_installed
from ..evaluation.checks import check_alexnet_severities, check_corruptions, check_natural_shifts, parse_severities
from ..evaluation.protocols import CHOICES as PROTOCOL_CHOICES, resolve_protocol
from ..utils.problems import Problems, check_choice
from .recipe_parser import DATA, EVALUATION, HUB


@dataclass
class DataArguments:
    _argument_group_name = DATA

    dataset_name: str | None = field(
        default=None, metadata={"help": f"Hub id, local imagefolder or saved dataset; unset or "
                                        f"'{DEMO_DATASET}': the embedded digits."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "The split the student learns from."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Defaults to the first labelled validation/test split, or 10% of train held out with --split_seed."})
    image_column: str | None = field(default=None, metadata={"help": "Found by type unless given."})
    label_column: str | None = field(default=None, metadata={"help": "Found by type unless given."})
    class_names_file: str | None = field(
        default=None, metadata={"help": "Class names in label order, one per line (or a JSON list), for labels that "
                                        "are plain integers (a CLIP teacher's zero-shot head needs names)."})
    split_seed: int = field(
        default=SPLIT_SEED, metadata={"help": "Seed of the evaluation images drawn from the data: the 10% held out of "
                                              "a dataset without a validation/test split, the demo digits' test split. "
                                              "The training recipes and the evaluation draw the same images with it; "
                                              "the report and the card record it."})
    streaming: bool = field(
        default=False, metadata={"help": "Read --dataset_name (a Hub id, or a local folder of Parquet/Arrow shards) "
                                         "as a stream, never copied: its training split shuffled in a buffer and "
                                         "shared among the processes by shards (their count a multiple of the "
                                         "processes'), --max_steps in place of epochs, resumable; its evaluation "
                                         "split, named or validation/test, read once."})
    shuffle_buffer: int = field(
        default=10_000, metadata={"help": "Rows of a stream's shuffle buffer (--streaming)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Only the first this many training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Only the first this many evaluation images."})


BASELINES = ("teacher", "alexnet", "none")


@dataclass
class RobustnessArguments:
    _argument_group_name = EVALUATION
    _flag_groups = {"card_license": HUB, "force_push": HUB}

    robustness_corruptions: str | None = field(
        default=None, metadata={"help": "Comma-separated corruptions of the robustness report; default: the 15 of "
                                        "ImageNet-C."})
    robustness_severities: str = field(default="1,2,3,4,5", metadata={"help": "Comma-separated severities."})
    robustness_backend: str = field(
        default="torch", metadata={"help": "torch (batched ports of all 19, on device), reference (the ImageNet-C "
                                           "code, per image; pip install 'hf-robust-distill[imagenet-c]') or auto "
                                           "(ports where they exist: all).",
                                   "choices": ["torch", "reference", "auto"]})
    corruption_protocol: str = field(
        default="auto", metadata={"help": "How corrupted images are made: imagenet-c (ImageNet-C's pipeline: 224 px "
                                          "crop, corruption, 8-bit truncation, JPEG q85, then the model's processor), "
                                          "released (the released images of --imagenet_c), model-resolution "
                                          "(corrupted at the model's input) or auto (released with --imagenet_c, "
                                          "imagenet-c on ImageNet-1k's classes, model-resolution elsewhere).",
                                  "choices": list(PROTOCOL_CHOICES)})
    imagenet_c: str | None = field(
        default=None, metadata={"help": "The released ImageNet-C images: a folder in the release's layout "
                                        "(<corruption>/<severity>/<wnid>/<name>.JPEG) or a dataset with corruption, "
                                        "severity, image and label columns."})
    adversarial_eval: str | None = field(
        default=None, metadata={"help": "Also the accuracy under AutoAttack at this budget, norm:eps in [0, 1] pixel "
                                        "units (linf:4/255, l2:0.5), on --adversarial_examples images (pip install "
                                        "'hf-robust-distill[adversarial]')."})
    adversarial_examples: int = field(default=1000, metadata={"help": "Images attacked by --adversarial_eval."})
    adversarial_suite: str = field(
        default="standard", metadata={"help": "standard (AutoAttack: APGD-CE, APGD-DLR, DeepFool, Square) or apgd "
                                              "(its two APGD attacks, a cheaper screen).",
                                      "choices": list(ATTACK_SUITES)})
    robustness_baseline: str = field(
        default="teacher", metadata={"help": "What mCE is normalised by: teacher (relative to the teacher's report), "
                                             "alexnet (ImageNet-scale runs) or none. recipes/evaluate_robustness.py: "
                                             "auto (its default: alexnet on ImageNet-1k's classes, else none) or a "
                                             "--baseline_report."})
    natural_shifts: str | None = field(
        default=None, metadata={"help": "Comma-separated name=dataset[:split], e.g. imagenet-r=axiong/imagenet-r:test "
                                        "(imagenet-r and imagenet-a bring their 200-class subsets)."})
    corruption_cache_dir: str | None = field(
        default=None, metadata={"help": "Where corrupted evaluation sets are cached; default "
                                        "$HF_HOME/hf_robust_distill/corrupted."})
    robustness_batch_size: int = field(default=64, metadata={"help": "Batch size of the robustness evaluation."})
    robustness_num_workers: int = field(default=0, metadata={"help": "Data-loader workers (the reference backend "
                                                                     "corrupts in them)."})
    card_license: str | None = field(default=None, metadata={"help": "License of the pushed student, e.g. apache-2.0."})
    force_push: bool = field(
        default=False, metadata={"help": "Push a student whose clean accuracy is at or below chance (weights with "
                                         "NaN or Inf are never pushed)."})

    @property
    def corruption_names(self) -> list[str] | None:
        if not self.robustness_corruptions:
            return None
        return [c.strip() for c in self.robustness_corruptions.split(",") if c.strip()]

    @property
    def shift_specs(self) -> list[str]:
        return [s.strip() for s in self.natural_shifts.split(",") if s.strip()] if self.natural_shifts else []

    def check(self, problems: Problems, baselines=BASELINES) -> None:
        """Every flag of the report, before any work: names, severities, baseline, shifts."""
        if self.corruption_names is not None:
            problems.check("--robustness_corruptions", check_corruptions, self.corruption_names,
                           self.robustness_backend)
        severities = problems.check("--robustness_severities", parse_severities, self.robustness_severities)
        problems.check("--robustness_baseline", check_choice, self.robustness_baseline, baselines)
        if severities:
            problems.check("--robustness_severities", check_alexnet_severities, self.robustness_baseline, severities)
        problems.check("--corruption_protocol", resolve_protocol, self.corruption_protocol, False,
                       released=self.imagenet_c is not None)
        if self.imagenet_c is not None:
            problems.check("--imagenet_c", check_dataset_reachable, self.imagenet_c)
        if self.adversarial_eval is not None:
            problems.check("--adversarial_eval", AttackBudget.parse, self.adversarial_eval, self.adversarial_suite)
            problems.check("--adversarial_eval", check_attacks_installed)
            if self.adversarial_examples < 1:
                problems.add("--adversarial_examples", f"must be at least 1, got {self.adversarial_examples}")
        if self.shift_specs:
            problems.check("--natural_shifts", check_natural_shifts, self.shift_specs)
        if self.robustness_batch_size < 1:
            problems.add("--robustness_batch_size", f"must be at least 1, got {self.robustness_batch_size}")

    def evaluation_kwargs(self) -> dict:
        """Keyword arguments of ``evaluate_robustness``."""
        return dict(
            corruptions=self.corruption_names, severities=parse_severities(self.robustness_severities),
            backend=self.robustness_backend, natural_shifts=self.shift_specs, cache_dir=self.corruption_cache_dir,
            batch_size=self.robustness_batch_size, num_workers=self.robustness_num_workers,
            protocol=self.corruption_protocol, imagenet_c=self.imagenet_c,
            adversarial=AttackBudget.parse(self.adversarial_eval, self.adversarial_suite) if self.adversarial_eval
            else None, adversarial_examples=self.adversarial_examples,
        )
