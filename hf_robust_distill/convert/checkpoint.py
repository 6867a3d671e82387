"""A published robust classifier (timm, torchvision, the DAD code, easyrobust, RobustBench, Madry's
``robustness``) as a folder ``from_pretrained`` loads, carded by this package like its own students.

    python -m hf_robust_distill.convert_checkpoint CHECKPOINT OUT --architecture vit|deit|resnet|<timm or torchvision name>

The weights are unwrapped (``layouts``), their family and sizes read from the tensors' shapes (and
checked against a named model's), mapped to ``ViTForImageClassification`` or
``ResNetForImageClassification`` and loaded strictly: any key left over is an error. Beside them go
the source's evaluation transform (``evaluation_transform``) and ``conversion.json`` (``record``).
With ``--output_format timm``, any timm model is written as a ``TimmWrapperForImageClassification``
folder instead. Everything is checked before the folder appears, and it appears whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ..data.imagenet_classes import IMAGENET_1K, imagenet_classes
from .architectures import Architecture, check_agrees, resolve_architecture
from .evaluation_transform import INTERPOLATIONS, EvaluationTransform
from .layouts import Weights, read_file, sha256, unwrap
from .record import ConversionRecord
from .resnet import is_resnet, resnet_config, resnet_sizes, resnet_state_dict
from .vit import is_vit, vit_config, vit_sizes, vit_state_dict

OUTPUT_FORMATS = ("transformers", "timm")


def class_names(names: str | list[str] | None, count: int) -> dict[int, str]:
    """``id2label`` for ``count`` classes: the names given (a list, a comma-separated string, or a
    file with one per line), else ImageNet-1k's WordNet names for 1,000 classes, else ``LABEL_i``."""
    if isinstance(names, str):
        if os.path.isfile(names):
            with open(names) as f:
                names = [line.strip() for line in f if line.strip()]
        else:
            names = [n.strip() for n in names.split(",")]
    if names is None:
        names = [wordnet for _, wordnet, _ in imagenet_classes()] if count == IMAGENET_1K else [
            f"LABEL_{i}" for i in range(count)]
    if len(names) != count:
        raise ValueError(f"--class_names gives {len(names)} names for a head of {count} classes")
    return dict(enumerate(names))


def _normalisation(weights: Weights, mean, std) -> tuple[tuple, tuple, str]:
    """The mean and std from the wrapper's buffers, else from the flags; never guessed."""
    given = mean is not None or std is not None
    if weights.mean is not None:
        if given and (tuple(mean or weights.mean) != weights.mean or tuple(std or weights.std) != weights.std):
            raise ValueError(f"--mean/--std contradict the normalisation the checkpoint carries ({weights.layout}: "
                             f"mean {weights.mean}, std {weights.std}): drop them")
        return weights.mean, weights.std, f"the checkpoint's normalisation buffers ({weights.layout})"
    if mean is None or std is None:
        raise ValueError("the checkpoint carries no normalisation layer, so its mean and std are unknown: give the ones "
                         "it was trained with, e.g. --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 (ImageNet's)")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std), "--mean/--std"


def _family(state: dict, architecture: Architecture) -> str:
    found = "vit" if is_vit(state) else "resnet" if is_resnet(state) else None
    if found is None:
        shown = ", ".join(list(state)[:4])
        raise ValueError(f"the checkpoint's keys ({shown}, ...) are neither a timm ViT's nor a torchvision/timm ResNet's: "
                         "name its timm architecture with --output_format timm")
    if found != architecture.family:
        raise ValueError(f"the checkpoint's keys are a {found.upper()}'s, not a {architecture.family.upper()}'s "
                         f"(--architecture {architecture.name})")
    return found


def native_model(weights: Weights, architecture: Architecture, *, num_heads: int | None = None, names=None):
    """The checkpoint as ``ViTForImageClassification`` or ``ResNetForImageClassification``, loaded
    strictly, with the sizes it was read at."""
    from transformers import ResNetForImageClassification, ViTForImageClassification

    state = weights.state_dict
    family = _family(state, architecture)
    check_agrees(state, architecture, head="head." if family == "vit" else "fc.")
    if family == "vit":
        sizes = vit_sizes(state, num_heads or architecture.num_heads)
        model = ViTForImageClassification(vit_config(sizes, class_names(names, sizes["num_labels"])))
        converted = _mapped(vit_state_dict, state)
    else:
        sizes = resnet_sizes(state)
        model = ResNetForImageClassification(resnet_config(sizes, class_names(names, sizes["num_labels"])))
        converted = _mapped(resnet_state_dict, state)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"the checkpoint does not fill {type(model).__name__}: missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}")
    return model.eval(), sizes


def _mapped(mapping, state: dict) -> dict:
    try:
        return {k: v.float() for k, v in mapping(state).items()}
    except KeyError as error:
        raise ValueError(f"the checkpoint holds {error.args[0]!r}, which the ViT / ResNet mapping does not know: it "
                         "is not the plain architecture (convert it with --output_format timm)") from None


def timm_model(weights: Weights, architecture: Architecture, transform: EvaluationTransform, names=None):
    """Any timm model as ``TimmWrapperForImageClassification`` (the Hub's timm format), loaded strictly."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    classifier = next(k.rsplit(".", 1)[0] for k in reversed(list(architecture.shapes)) if k.endswith(".weight"))
    check_agrees(weights.state_dict, architecture, head=classifier + ".")
    count = weights.state_dict[f"{classifier}.weight"].shape[0]
    id2label = class_names(names, count)
    config = TimmWrapperConfig(architecture=architecture.name, num_labels=count, id2label=id2label,
                               label2id={v: k for k, v in id2label.items()}, pretrained_cfg=transform.pretrained_cfg())
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict({k: v.float() for k, v in weights.state_dict.items()}, strict=True)
    return model.eval(), {"num_labels": count}


def check_output_dir(output_dir: str) -> None:
    if os.path.isfile(output_dir):
        raise ValueError(f"{output_dir!r} is a file: give a folder to write the converted model into")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise ValueError(f"{output_dir!r} already holds files: remove it, or give a new folder")


def check_flags(architecture: str, output_format: str, interpolation: str, crop_pct: float) -> Architecture:
    """What the flags say, checked before the checkpoint is read; the architecture they name."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"--output_format {output_format!r}: one of {', '.join(OUTPUT_FORMATS)}")
    if interpolation not in INTERPOLATIONS or not 0 < crop_pct <= 1:
        EvaluationTransform(224, crop_pct, interpolation, (0, 0, 0), (1, 1, 1))  # raises, naming the flag
    found = resolve_architecture(architecture, prefer_timm=output_format == "timm")
    if output_format == "transformers" and found.family is None:
        raise ValueError(found.refusal())
    if output_format == "timm" and found.library != "timm":
        raise ValueError(f"--output_format timm writes a timm model: give its timm name (--architecture "
                         f"{architecture} is {'a family' if found.library is None else 'a torchvision model'})")
    return found


def convert_checkpoint(checkpoint: str, output_dir: str, *, architecture: str, mean=None, std=None,
                       image_size: int | None = None, crop_pct: float = 0.875, interpolation: str = "bilinear",
                       num_heads: int | None = None, class_names=None, use_ema: bool = False,
                       allow_pickle: bool = False, output_format: str = "transformers") -> ConversionRecord:
    """Writes ``output_dir``: the model, its processor (the source's evaluation transform) and
    ``conversion.json``; returns the record. Defaults reproduce torchvision's ImageNet evaluation
    (``Resize(256)``, ``CenterCrop(224)``, bilinear)."""
    check_output_dir(output_dir)
    named = check_flags(architecture, output_format, interpolation, crop_pct)
    weights = unwrap(read_file(checkpoint, allow_pickle), use_ema)
    mean, std, normalisation_from = _normalisation(weights, mean, std)
    if output_format == "timm":
        size = image_size or named.input_size
        transform = EvaluationTransform(size, crop_pct, interpolation, mean, std)
        model, sizes = timm_model(weights, named, transform, class_names)
    else:
        model, sizes = native_model(weights, named, num_heads=num_heads, names=class_names)
        transform = EvaluationTransform(image_size or sizes.get("image_size", 224), crop_pct, interpolation, mean, std)
    record = ConversionRecord(
        source_file=os.path.basename(checkpoint), source_sha256=sha256(checkpoint), architecture=architecture,
        model_class=type(model).__name__, container=weights.container, layout=weights.layout,
        normalisation_from=normalisation_from, evaluation_transform=transform.as_dict(),
        keys_dropped=weights.dropped, sizes=sizes, use_ema=use_ema)
    _write_whole(output_dir, model, transform, record, timm_format=output_format == "timm")
    return record


def _write_whole(output_dir: str, model, transform: EvaluationTransform, record: ConversionRecord, *,
                 timm_format: bool) -> None:
    """Everything written into a sibling folder first, then moved into place: a stopped run leaves no half folder."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output_dir))}.", dir=parent)
    try:
        model.save_pretrained(staging)
        if not timm_format:  # a timm folder carries its transform in config.json (pretrained_cfg)
            transform.save_processor(staging)
        record.save(staging)
        if os.path.isdir(output_dir):
            os.rmdir(output_dir)  # empty: checked before
        os.replace(staging, output_dir)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)


def main(argv: list[str] | None = None) -> None:
    import argparse

    summary = " ".join(__doc__.split("\n\n")[0].split()).replace("``", "")
    parser = argparse.ArgumentParser(prog="python -m hf_robust_distill.convert_checkpoint", description=summary,
                                     epilog="Examples for the DAD, easyrobust and RobustBench checkpoints: docs/converting.md.")
    parser.add_argument("checkpoint", help="the file: .safetensors, .pth, .pth.tar, .pt or .bin")
    parser.add_argument("output_dir", help="a new folder for the converted model")
    parser.add_argument("--architecture", required=True,
                        help="vit, deit or resnet (sizes read from the tensors), or a timm or torchvision model name "
                             "the checkpoint must match (e.g. vit_base_patch16_224, resnet50)")
    parser.add_argument("--mean", type=float, nargs=3, help="the input mean, when no normalisation layer carries it")
    parser.add_argument("--std", type=float, nargs=3, help="the input std, when no normalisation layer carries it")
    parser.add_argument("--image_size", type=int, help="the evaluation crop (default: the ViT's size, else 224)")
    parser.add_argument("--crop_pct", type=float, default=0.875,
                        help="the crop's share of the resized image: 0.875 torchvision and RobustBench, 0.9 the DAD "
                             "code's ViT, 0.95 its ResNet-50")
    parser.add_argument("--interpolation", default="bilinear", choices=INTERPOLATIONS,
                        help="the resize's filter (bilinear: torchvision; bicubic: timm and the DAD code)")
    parser.add_argument("--num_heads", type=int, help="a ViT's heads, when its width is no published size's")
    parser.add_argument("--class_names", help="a file with one class name per line, or a comma-separated list "
                                              "(default: ImageNet-1k's for 1,000 classes)")
    parser.add_argument("--use_ema", action="store_true", help="take the checkpoint's state_dict_ema (timm's EMA)")
    parser.add_argument("--allow_pickle", action="store_true",
                        help="read a checkpoint that holds Python objects beside its weights (trusted files only)")
    parser.add_argument("--output_format", default="transformers", choices=OUTPUT_FORMATS,
                        help="transformers: native ViT/ResNet classes; timm: any timm model as TimmWrapper")
    args = vars(parser.parse_args(argv))
    checkpoint, output_dir = args.pop("checkpoint"), args.pop("output_dir")
    try:
        record = convert_checkpoint(checkpoint, output_dir, **args)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {output_dir}: {record.summary()}.\nEvaluate and card it: python recipes/evaluate_robustness.py "
          f"--model_name_or_path {output_dir} --dataset_name <its evaluation set>")
