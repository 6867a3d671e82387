"""Everything a run can check before its first step, in one pass that lists every problem.

A recipe collects ``Problems`` while it parses its flags, resolves its checkpoints (configs
only, no weights), loads its data and decodes its evaluation split, and raises one
``PreflightError`` naming each problem, the flag or file it comes from and its fix, before
anything is trained or written to ``output_dir``. The checks are pure functions that raise
``ValueError``; ``Problems.check`` turns each failure into a listed problem.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

CHECK_ERRORS = (ValueError, TypeError, KeyError, OSError, ImportError)


class PreflightError(ValueError):
    """The problems a run found before training; nothing was trained or written."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        lines = [f"  {i}. {where}: {message}" for i, (where, message) in enumerate(self.problems, 1)]
        count = f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}"
        super().__init__(f"{count} found before training (nothing was trained or written):\n" + "\n".join(lines))


class Problems:
    """Problems found so far, each with where it comes from (a flag, a file, a split)."""

    def __init__(self):
        self.found: list[tuple[str, str]] = []

    def __bool__(self) -> bool:
        return bool(self.found)

    def __len__(self) -> int:
        return len(self.found)

    def add(self, where: str, message: str) -> None:
        self.found.append((where, message))

    def check(self, where: str, function: Callable, *args, **kwargs):
        """``function(*args, **kwargs)``, or ``None`` with the failure listed under ``where``."""
        try:
            return function(*args, **kwargs)
        except PreflightError as error:
            self.found.extend(error.problems)
        except CHECK_ERRORS as error:
            self.add(where, _message(error))
        return None

    def raise_if_any(self) -> None:
        if self.found:
            raise PreflightError(self.found)


def _message(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return text.strip() or type(error).__name__


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# ---- flags -------------------------------------------------------------------------------------

def check_distortions(spec: str | None) -> None:
    from .distortions import parse_distortions

    if spec is not None:
        parse_distortions(spec)


def check_corruptions(names: Sequence[str], backend: str) -> None:
    """Every name is an ImageNet-C corruption the backend makes."""
    from .corrupted_sets import resolve_backend
    from .corruptions import CORRUPTIONS

    problems = [f"unknown corruption {n!r}{did_you_mean(n, CORRUPTIONS)}" for n in names
                if n not in CORRUPTIONS]
    if problems:
        problems[-1] += f" (the corruptions: {', '.join(CORRUPTIONS)})"
    for name in (n for n in names if n in CORRUPTIONS):
        try:
            resolve_backend(name, backend)
        except (ValueError, ImportError) as error:
            problems.append(str(error))
    if problems:
        raise ValueError("; ".join(problems))


def parse_severities(text: str) -> list[int]:
    values = [s.strip() for s in str(text).split(",") if s.strip()]
    if not values or not all(v.isdigit() and 1 <= int(v) <= 5 for v in values):
        raise ValueError(f"severities are integers from 1 to 5, comma-separated (e.g. 1,2,3,4,5), got {text!r}")
    return [int(v) for v in values]


def check_choice(value: str, choices: Sequence[str]) -> None:
    if str(value).lower() not in choices:
        raise ValueError(f"one of {', '.join(choices)}, got {value!r}{did_you_mean(str(value), choices)}")


def check_fraction(value: float, allow_zero: bool = False) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        raise ValueError(f"a fraction in {'[0, 1]' if allow_zero else '(0, 1]'}, got {value}")


def check_repo_id(repo_id: str) -> None:
    """A Hub model repo id the Hub accepts (``namespace/name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id: use namespace/name with letters, digits, '-', "
                         f"'_' and '.' only ({str(error).splitlines()[0]})") from None
    if "/" not in repo_id:
        raise ValueError(f"{repo_id!r} has no namespace: write <your-username-or-org>/{repo_id}")


def check_natural_shifts(specs: Sequence[str]) -> None:
    """Each ``name=dataset[:split]`` parses and names a folder that exists or a dataset ``datasets``
    can resolve (from its cache when offline), without downloading its images."""
    from .natural_shifts import NaturalShift

    problems = []
    for spec in specs:
        try:
            shift = NaturalShift.parse(spec)
            check_dataset_reachable(shift.dataset, shift.config)
        except CHECK_ERRORS as error:
            problems.append(_message(error))
    if problems:
        raise ValueError("; ".join(problems))


def check_dataset_reachable(name: str, config: str | None = None) -> None:
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        if not os.path.exists(os.path.expanduser(name)):
            raise ValueError(f"no folder {name!r}")
        return
    from datasets import load_dataset_builder

    try:
        load_dataset_builder(name, config)
    except Exception as error:  # datasets raises many types for an unreachable or unknown dataset
        raise ValueError(f"cannot find the dataset {name!r}: {type(error).__name__}: {str(error).splitlines()[0]}"
                         + (" (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set: only cached datasets load)"
                            if _offline() else "")) from None


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def check_output_dir(path: str) -> None:
    """A folder the run can create or write into (not a file, nor under one, nor read-only)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file: give a folder (it is made when missing)")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{path!r} cannot be made: {parent!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{path!r} cannot be {'written' if parent == os.path.abspath(path) else 'made'}: "
                         f"{parent!r} is not writable by this user; give a folder you can write")


def check_trains_something(config) -> None:
    if config.max_steps <= 0 and config.num_train_epochs <= 0:
        raise ValueError(f"--num_train_epochs {config.num_train_epochs:g} trains nothing, and the card would present "
                         "the untouched start as a distilled student: give --num_train_epochs > 0 or --max_steps > 0")


# ---- checkpoints -------------------------------------------------------------------------------

def checkpoint_exists(name_or_path: str, what: str, subfolder: str | None = None) -> None:
    """A folder that exists, or something that reads as a Hub id; the error says which it is not."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.isdir(name_or_path):
        if subfolder and not os.path.isdir(os.path.join(name_or_path, subfolder)):
            raise ValueError(f"{what} {name_or_path!r} has no subfolder {subfolder!r}")
        return
    if os.path.exists(name_or_path):
        raise ValueError(f"{what} {name_or_path!r} is a file; give the folder that holds the checkpoint")
    try:
        validate_repo_id(name_or_path)
        hub_id = not name_or_path.startswith((".", "~")) and name_or_path.count("/") <= 1
    except HFValidationError:
        hub_id = False
    if not hub_id:
        raise ValueError(f"{what} {name_or_path!r} does not exist: there is no such folder, and it is not a Hub id")


def read_model_config(name_or_path: str, what: str):
    """The ``transformers`` config of a checkpoint (no weights are read)."""
    from transformers import AutoConfig

    checkpoint_exists(name_or_path, what)
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the config of {what} {name_or_path!r}: {str(error).splitlines()[0]}"
                         + (" (offline: only cached Hub checkpoints load)" if _offline() else "")) from None


def read_image_processor(name_or_path: str, what: str):
    from transformers import AutoImageProcessor

    from .images import ImageResizer

    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{what} {name_or_path!r} has no image processor (preprocessor_config.json): "
                         f"{str(error).splitlines()[0]}; save one beside the weights") from None
    ImageResizer(processor)  # its size and rescale are usable
    return processor


def read_vq_config(name_or_path: str, subfolder: str | None, input_range: str | None) -> dict:
    """The ``diffusers.VQModel`` config of a VQ checkpoint (no weights), with its input range known."""
    from diffusers import VQModel

    from .discretize import DISCRETIZER_CONFIG, INPUT_RANGES, _read_saved_range

    checkpoint_exists(name_or_path, "the VQ model", subfolder)
    try:
        config = VQModel.load_config(name_or_path, subfolder=subfolder)
    except (OSError, ValueError, EnvironmentError) as error:
        raise ValueError(f"cannot read the VQ model {name_or_path!r}"
                         + (f" (subfolder {subfolder!r})" if subfolder else "")
                         + f": {str(error).splitlines()[0]}; give a diffusers VQModel folder (config.json and weights)"
                         + (", with --vq_subfolder if it is nested" if not subfolder else "")) from None
    if input_range is not None and input_range not in INPUT_RANGES:
        raise ValueError(f"--vq_input_range is one of {', '.join(INPUT_RANGES)}, got {input_range!r}")
    saved = _read_saved_range(name_or_path, subfolder)
    if input_range is not None and saved is not None and input_range != saved:
        raise ValueError(f"--vq_input_range {input_range} contradicts the {saved} saved with the VQ model "
                         f"({DISCRETIZER_CONFIG}): drop the flag, or fix the saved file if it is wrong")
    if (input_range or saved) is None:
        raise ValueError(f"the input range of the VQ model {name_or_path!r} is unknown: pass --vq_input_range "
                         "'[-1,1]' (LDM, Kandinsky and DAD's OpenImages VQGANs) or '[0,1]' (aMUSEd)")
    return config


_SHAPE = ("model_type", "hidden_size", "hidden_sizes", "num_hidden_layers", "depths", "num_attention_heads",
          "patch_size", "image_size")


def check_resume_matches(checkpoint: str, student_config, num_classes: int | None = None) -> None:
    """The checkpoint to resume from holds this run's student: its architecture's shape, and as many
    classes as the run's head (a LoRA or DeepSpeed checkpoint without config.json is not read)."""
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        return
    saved = AutoConfig.from_pretrained(checkpoint)

    def shape(config):
        vision = getattr(config, "vision_config", None) or config
        return {field: getattr(vision, field, getattr(config, field, None)) for field in _SHAPE}

    there, here = shape(saved), shape(student_config)
    differences = [f"{field} {there[field]} there, {here[field]} here"
                   for field in _SHAPE if there[field] != here[field]]
    if num_classes is not None and saved.num_labels != num_classes:
        differences.append(f"{saved.num_labels} classes there, {num_classes} here")
    if differences:
        raise ValueError(f"{checkpoint} holds another model than this run's student ({'; '.join(differences)}): "
                         "resume from a checkpoint of this run (<output_dir>/checkpoint-<step>), or drop the flag")


def config_classes(config) -> list[str] | None:
    """The class names a transformers config's head predicts, or ``None`` without a head."""
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForImageClassification") for a in architectures):
        return None
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def saved_head_classes(path: str) -> list[str] | None:
    """The class names of a saved ``CLIPZeroShotClassifier``'s head, or ``None`` if it holds none."""
    from .teachers import HEAD_CONFIG

    file = os.path.join(path, HEAD_CONFIG)
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return list(json.load(f)["class_names"])


def read_class_names_file(path: str) -> list[str]:
    """Class names, one per line (or a JSON list), in label order."""
    if not os.path.isfile(path):
        raise ValueError(f"no file {path!r}")
    with open(path) as f:
        text = f.read()
    names = json.loads(text) if text.lstrip().startswith("[") else [line.strip() for line in text.splitlines()]
    names = [str(n) for n in names if str(n).strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path} names a class twice")
    if not names:
        raise ValueError(f"{path} holds no class names")
    return names


def check_drop_path(student_config, rate: float | None) -> None:
    """A drop-path rate only for a student whose layers read one."""
    from .models import supports_drop_path

    if rate and not supports_drop_path(student_config):
        raise ValueError(f"the student ({type(student_config).__name__}) has no stochastic depth in transformers, so "
                         "the rate would be ignored: drop --drop_path_rate, or use a student that has it (BEiT, "
                         "DINOv2, Swin, ConvNeXt, ...)")


def check_feature_terms(student_config, teacher_config, config) -> None:
    """The feature terms fit the two models, read from their configs: widths, patch grids, heads,
    and the layers asked for (what ``RobustDistillationTrainer`` would refuse once weights load)."""
    from types import SimpleNamespace

    from .models import check_compatible, resolve_layers

    def shape(model_config):
        vision = getattr(model_config, "vision_config", model_config)
        return SimpleNamespace(hidden_size=getattr(vision, "hidden_size", None),
                               patch_size=getattr(vision, "patch_size", None),
                               num_heads=getattr(vision, "num_attention_heads", None),
                               depth=getattr(vision, "num_hidden_layers", None))

    student, teacher = shape(student_config), shape(teacher_config)
    terms = dict(embeddings=config.cls_weight > 0, patches=config.patch_weight > 0, attention=config.attn_weight > 0)
    if not any(terms.values()):
        return
    if None in (student.hidden_size, student.depth):
        raise ValueError(f"the [CLS], patch and attention terms need a ViT-family student; "
                         f"{type(student_config).__name__} has no transformer blocks: set cls_weight, patch_weight "
                         "and attn_weight to 0 for logit distillation")
    check_compatible(student, teacher, **terms)
    for flag, layers, weight in (("--patch_layers", config.patch_layers, config.patch_weight),
                                 ("--attn_layers", config.attn_layers, config.attn_weight)):
        if weight > 0:
            try:
                resolve_layers(list(layers), student.depth)
            except ValueError as error:
                raise ValueError(f"{flag}: {error}") from None


# ---- labels ------------------------------------------------------------------------------------

def check_labels(labels: np.ndarray, num_classes: int | None, split: str, *, for_accuracy: bool,
                 for_training: bool = False) -> str | None:
    """Labels are class ids in range; a split scored for accuracy has no unlabelled (-1) image;
    a training split a label-using loss reads is not unlabelled throughout. Returns a note for
    the user, or ``None``."""
    from .data import UNLABELLED

    if labels.dtype.kind not in "iu":
        raise ValueError(f"the labels of the {split} are {labels.dtype} values, not class ids: give --label_column "
                         "a ClassLabel, integer or string column")
    unlabelled = int((labels == UNLABELLED).sum())
    if unlabelled and for_accuracy:
        raise ValueError(f"{unlabelled} of the {len(labels)} images of the {split} are unlabelled (label "
                         f"{UNLABELLED}), so its accuracy would count them as errors: choose a labelled split with "
                         "--eval_split, or leave it unset to hold out 10% of the training split")
    if unlabelled == len(labels) and for_training:
        raise ValueError(f"every image of the {split} is unlabelled (label {UNLABELLED}), but a cross-entropy term "
                         "reads labels: set ce_weight and dad_ce_weight to 0, or use labelled data")
    valid = labels[labels != UNLABELLED]
    if num_classes is not None and valid.size and (valid.min() < 0 or valid.max() >= num_classes):
        out = valid[(valid < 0) | (valid >= num_classes)]
        raise ValueError(f"the {split} has labels outside 0-{num_classes - 1} (e.g. {int(out[0])}) for its "
                         f"{num_classes} classes: fix --label_column or the class names")
    if unlabelled:
        return f"{unlabelled} of the {len(labels)} images of the {split} are unlabelled: label-using terms skip them"
    return None
