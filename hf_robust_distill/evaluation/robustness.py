"""``evaluate_robustness``: a model's robustness report, clean, under every ImageNet-C corruption and
severity (made or read as its protocol says), on natural shifts and, on request, under AutoAttack."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm
from transformers import AutoImageProcessor

from ..data.datasets import class_names, collate_images, find_columns, load_image_dataset, prepare_dataset
from ..data.digest import images_digest
from ..data.imagenet_classes import IMAGENET_1K, imagenet_indices, is_imagenet_1k
from ..data.images import ImageNetCCrop, ImageResizer, too_many_message
from ..data.splits import SplitSource
from ..metrics.corruption_robustness.corruption_robustness import IMAGENET_C_CORRUPTIONS, SEVERITIES
from ..models.pixels import PixelPreprocessor, as_pixel_classifier
from ..views.corruptions import CORRUPTIONS
from .adversarial import (AttackBudget, adversarial_record, adversarial_scores,
                          check_installed as check_attacks_installed)
from .calibration import Scores, finite_logits
from .checks import check_alexnet_severities, check_natural_shifts, check_same_images
from .corrupted_sets import (CorruptedSetCache, cached_batches, decode_evaluation_set, decoded_batches, resolve_backend,
                             source_key)
from .natural_shifts import NaturalShift, subset_predictions
from .protocols import IMAGENET_C, RELEASED, resolve_protocol
from .released import read_released
from .report import RobustnessReport
from .sharding import Shard


def evaluate_robustness(
    model, dataset, corruptions: Sequence[str] | None = None, severities: Sequence[int] = SEVERITIES, *,
    image_processor=None, image_size: int | tuple[int, int] | None = None, decode_with=None, backend: str = "torch",
    baseline: str | RobustnessReport | dict | None = None, natural_shifts: Sequence[NaturalShift | str] = (),
    batch_size: int = 64, num_workers: int = 0, seed: int = 0, cache_dir: str | None = None, device=None,
    model_name: str | None = None, dataset_name: str | None = None, split: str | SplitSource | None = None,
    image_column: str | None = None, label_column: str | None = None, progress: bool = True,
    protocol: str = "auto", imagenet_c: str | None = None, adversarial: AttackBudget | str | None = None,
    adversarial_examples: int = 1000,
) -> RobustnessReport:
    """Top-1 accuracy and calibration of ``model`` on ``dataset`` clean, under every corruption x severity and on
    each natural shift, with corruption errors and mCE against ``baseline`` ("alexnet", another model's
    ``RobustnessReport`` on the same images, or ``None``); docs/robustness-and-hub.md describes every argument.

    ``model``: an image classifier (its ``image_processor`` read from its checkpoint when omitted) or a module of
    [0, 1] pixels (``CLIPZeroShotClassifier``). Images are decoded once as ``pipeline("image-classification")``
    decodes them (``decode_with``: a processor or an ``ImageResizer``); those that do not decode are counted, not
    scored. ``protocol``: how corrupted images are made ("imagenet-c", "model-resolution", "released" from
    ``imagenet_c``, or "auto"), by ``backend`` ("torch" ports or the "reference" code); the sets are seeded by
    ``seed`` and cached in ``cache_dir``. ``split``: a name or a ``SplitSource``, recorded with the images' digest;
    a baseline report of other images is refused before any work. ``adversarial``: also AutoAttack at that budget.
    Under ``accelerate launch`` each process scores its share, and the report is the one-process report.
    """
    # 1. the classifier, how it decodes images, this process's share, the protocol and the sets to score, checked
    plan = _plan(model, dataset, corruptions, severities, image_processor=image_processor, image_size=image_size,
                 decode_with=decode_with, backend=backend, baseline=baseline, natural_shifts=natural_shifts,
                 seed=seed, device=device, split=split, image_column=image_column, label_column=label_column,
                 protocol=protocol, imagenet_c=imagenet_c, adversarial=adversarial)
    # 2. the evaluation set decoded once (and ImageNet-C's crops of it), by the main process first
    cache = CorruptedSetCache(cache_dir)
    columns = (plan.image_column, plan.label_column, batch_size, num_workers)
    with plan.shard.main_process_first():
        clean_set, bad_images, source = _decoded(dataset, plan.resizer, cache, *columns)
        crops = _decoded(dataset, ImageNetCCrop(), cache, *columns) if plan.protocol == IMAGENET_C else None
    name, size = model_name or _model_name(model), plan.resizer.size
    corrupted = partial(_corrupted_batches, plan.protocol, cache, (crops[0], crops[2]) if crops else (clean_set, source),
                        plan.released, resizer=plan.resizer, seed=seed, size=size, batch_size=batch_size,
                        num_workers=num_workers, device=plan.device, shard=plan.shard)
    with _evaluating(plan.classifier):
        # 3. this process's share of the clean set, of every corrupted set and of every natural shift
        scores = _score_sets(plan, cached_batches(clean_set, size, batch_size, plan.shard), corrupted,
                             _released_labels(plan.names, _num_outputs(model)) if plan.released is not None else None,
                             batch_size, num_workers, bar=dict(desc=f"robustness of {name}",
                                                               disable=not progress or plan.shard.index != 0))
        # 4. AutoAttack, when asked for
        attacked = (_adversarial(plan.classifier, clean_set, size, plan.budget, adversarial_examples, batch_size, seed,
                                 plan.shard) if plan.budget is not None else None)
    # 5. the sums of every process added up, and the report
    scores = {key: measured.summed(plan.shard.sum) for key, measured in scores.items()}
    return _report(plan, scores, model, clean_set, name=name, dataset_name=dataset_name or _dataset_name(dataset),
                   seed=seed, baseline=baseline, bad_images=len(bad_images), imagenet_c=imagenet_c,
                   adversarial=attacked)


def _report(plan: _Plan, scores: dict, model, clean_set, *, name, dataset_name, seed, baseline, bad_images,
            imagenet_c, adversarial) -> RobustnessReport:
    clean, accuracy, shifted, sources, calibration = _tables(scores)
    return RobustnessReport(
        model_name=name, dataset_name=dataset_name, split=plan.split.name, held_out_fraction=plan.split.held_out,
        split_seed=plan.split.seed, images_digest=plan.digest, num_examples=len(clean_set),
        image_size=tuple(plan.resizer.size), clean_accuracy=clean, accuracy=accuracy,
        backends={corruption: kind for corruption, _, kind in plan.grid}, seed=seed, natural_shifts=shifted,
        baseline=_baseline(baseline), skipped_images=bad_images, calibration=calibration,
        natural_shift_datasets=sources, protocol=plan.protocol, imagenet_1k=is_imagenet_1k(plan.names),
        released_source=imagenet_c if plan.released is not None else None, adversarial=adversarial,
        chance_accuracy=chance_accuracy(np.asarray(clean_set.with_format("numpy")["label"]),
                                        num_outputs=_num_outputs(model)),
    )


@dataclass
class _Plan:
    """What an evaluation scores and how, settled and checked before its first image."""

    classifier: torch.nn.Module
    resizer: ImageResizer
    device: torch.device
    shard: Shard
    image_column: str
    label_column: str
    names: list[str] | None
    protocol: str
    released: dict | None
    grid: list[tuple[str, int, str]]
    shifts: list[NaturalShift]
    budget: AttackBudget | None
    split: SplitSource
    digest: str


def _plan(model, dataset, corruptions, severities, *, image_processor, image_size, decode_with, backend, baseline,
          natural_shifts, seed, device, split, image_column, label_column, protocol, imagenet_c, adversarial) -> _Plan:
    """Every choice of ``evaluate_robustness`` resolved, and every input it can check before the first image
    checked: the natural shifts' datasets, AlexNet's severities, a baseline report's images, the attack package."""
    classifier = as_pixel_classifier(model, image_processor)
    image_column, label_column = find_columns(dataset, image_column, label_column)
    names = class_names(dataset, label_column)
    shifts = [NaturalShift.parse(s) if isinstance(s, str) else s for s in natural_shifts]
    check_natural_shifts(shifts)  # every shift's dataset reachable before the first image, not after hours
    check_alexnet_severities(baseline, severities)
    protocol = resolve_protocol(protocol, is_imagenet_1k(names), released=imagenet_c is not None)
    digest = images_digest(dataset, image_column, label_column)
    check_same_images(baseline, digest, seed, protocol)
    released = read_released(imagenet_c) if protocol == RELEASED else None
    budget = AttackBudget.parse(adversarial) if isinstance(adversarial, str) else adversarial
    if budget is not None:
        check_attacks_installed()
    return _Plan(
        classifier, _resizer(model, image_processor, image_size, decode_with),
        torch.device(device) if device is not None else next(classifier.parameters()).device,
        Shard.of_this_process(), image_column, label_column, names, protocol, released,
        _grid(corruptions, severities, backend, released), shifts, budget,
        split if isinstance(split, SplitSource) else SplitSource(split), digest)


def _score_sets(plan: _Plan, clean_batches, corrupted, label_map, batch_size: int, num_workers: int,
                bar: dict) -> dict:
    """This process's ``Scores`` of the clean set, every corrupted set and every natural shift."""
    scores = {}
    with tqdm(total=1 + len(plan.grid) + len(plan.shifts), **bar) as progress:
        scores["clean"] = _scores(plan.classifier, clean_batches, plan.device)
        progress.update()
        for corruption, severity, kind in plan.grid:
            progress.set_postfix_str(f"{corruption} {severity}")
            scores[corruption, severity] = _scores(plan.classifier, corrupted(corruption, severity, kind), plan.device,
                                                   label_map=label_map)
            progress.update()
        for shift in plan.shifts:
            progress.set_postfix_str(shift.name)
            scores[shift] = natural_shift_scores(plan.classifier, shift, plan.resizer, batch_size, num_workers,
                                                 plan.device, plan.shard)
            progress.update()
    return scores


def _corrupted_batches(protocol: str, cache: CorruptedSetCache, source: tuple[Dataset, str], released: dict | None,
                       corruption: str, severity: int, kind: str, *, resizer: ImageResizer, seed: int, size,
                       batch_size: int, num_workers: int, device, shard: Shard):
    """This process's share of one corrupted set as (uint8 pixels at the model's input, labels): the
    released images, or the set made from ``source`` (the decoded set and its key; ImageNet-C's crops
    under its protocol), read through the model's processor where the protocol stores JPEGs."""
    read = partial(_stored_image_batches, resizer=resizer, batch_size=batch_size, num_workers=num_workers)
    if released is not None:
        part = released[corruption, severity]
        return read(part.select(shard.rows(len(part), batch_size)))
    images, key = source
    if protocol == IMAGENET_C:
        return read(cache.stored(images, key, corruption, severity, kind, seed=seed, size=ImageNetCCrop().size,
                                 batch_size=batch_size, num_workers=num_workers, device=device, protocol=IMAGENET_C,
                                 shard=shard))
    return cache.batches(images, key, corruption, severity, kind, seed=seed, size=size, batch_size=batch_size,
                         num_workers=num_workers, device=device, shard=shard)


def _adversarial(classifier, clean_set, size, budget: AttackBudget, examples: int, batch_size: int, seed: int,
                 shard: Shard) -> dict:
    """Accuracy under ``budget``'s attacks on the first ``examples`` images of the decoded set, each process
    attacking its share."""
    total = min(examples, len(clean_set))
    images, labels = [], []
    for batch, targets in cached_batches(clean_set.select(range(total)), size, batch_size, shard):
        images.append(batch)
        labels.append(targets)
    device = next(classifier.parameters()).device
    with torch.no_grad():
        num_classes = classifier(torch.zeros(1, 3, *size, device=device)).shape[-1]
    counts = {"correct": 0, "robust": 0}
    if images:
        counts = adversarial_scores(classifier, torch.cat(images), torch.cat(labels), budget, num_classes, batch_size,
                                    seed)
    summed = shard.sum(torch.tensor([counts["correct"], counts["robust"]], dtype=torch.float64))
    return adversarial_record(budget, total, int(summed[0]), int(summed[1]))


def _grid(corruptions, severities, backend: str, released: dict | None) -> list[tuple[str, int, str]]:
    """(corruption, severity, what makes it) of every set to score: each asked-for corruption at each
    severity, made by its backend; of released images, every set found (of the asked-for corruptions
    and severities, when some are named)."""
    if released is None:
        corruptions = IMAGENET_C_CORRUPTIONS if corruptions is None else corruptions
        kinds = {c: resolve_backend(c, backend) for c in corruptions}
        return [(c, int(s), kinds[c]) for c in corruptions for s in severities]
    found = [(c, s, RELEASED) for c, s in sorted(released, key=lambda k: (CORRUPTIONS.index(k[0]), k[1]))
             if (corruptions is None or c in corruptions) and s in set(map(int, severities))]
    if not found:
        raise ValueError(f"the released images hold none of the asked-for corruptions and severities; they hold "
                         f"{', '.join(sorted({c for c, _ in released}))} at severities "
                         f"{', '.join(map(str, sorted({s for _, s in released})))}")
    return found


def _released_labels(names, num_outputs: int | None) -> torch.Tensor:
    """For each ImageNet-1k class index of the released images, the model's output for it (-1 where
    it predicts no such class): by name when the evaluation set names its classes, else as is."""
    if is_imagenet_1k(names) or (names is None and num_outputs == IMAGENET_1K):
        return torch.arange(IMAGENET_1K)
    indices = imagenet_indices(names)
    if indices is None:
        raise ValueError("the released ImageNet-C images are scored by the model's ImageNet-1k classes, but the "
                         "evaluation set's classes are not ImageNet-1k classes (by WordNet id or name)")
    positions = torch.full((IMAGENET_1K,), -1, dtype=torch.long)
    positions[torch.tensor(indices)] = torch.arange(len(indices))
    return positions


def _stored_image_batches(stored, *, resizer: ImageResizer, batch_size: int, num_workers: int):
    """(uint8 pixels at the model's input, labels) of a set of encoded images (JPEGs, in an ``image``
    column, ``label`` beside it), each read through the model's processor."""
    loader = DataLoader(prepare_dataset(stored, resizer, "image", "label"), batch_size=batch_size,
                        collate_fn=collate_images, num_workers=num_workers)
    return decoded_batches(loader)


def _tables(scores: dict) -> tuple[float, dict, dict, dict, dict]:
    """(clean accuracy, accuracy per corruption and severity, per natural shift, the shifts' sources,
    calibration of all three) from the scores keyed "clean", (corruption, severity) and ``NaturalShift``."""
    accuracy, shifted, sources = {}, {}, {}
    calibration = {"clean": scores["clean"].calibration(), "corrupted": {}, "natural_shifts": {}}
    for key, measured in scores.items():
        if isinstance(key, tuple):
            accuracy.setdefault(key[0], {})[key[1]] = measured.accuracy
            calibration["corrupted"].setdefault(key[0], {})[key[1]] = measured.calibration()
        elif isinstance(key, NaturalShift):
            shifted[key.name] = measured.accuracy
            sources[key.name] = {"dataset": key.dataset, "config": key.config, "split": key.split}
            calibration["natural_shifts"][key.name] = measured.calibration()
    return scores["clean"].accuracy, accuracy, shifted, sources, calibration


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module):
    """``model`` in eval mode within the block, in its own mode again after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _decoded(dataset, resizer: ImageResizer, cache: CorruptedSetCache, image_column, label_column, batch_size: int,
             num_workers: int):
    """(the decoded clean set, its images that did not decode, its source key); refused without labels
    or when no image decodes."""
    image_column, label_column = find_columns(dataset, image_column, label_column)
    if label_column is None:
        raise ValueError("the evaluation set has no label column; pass label_column")
    clean_set, bad_images = decode_evaluation_set(dataset, resizer, cache, image_column, label_column, batch_size,
                                                  num_workers)
    if clean_set is None:
        raise ValueError(too_many_message(bad_images, len(dataset), 0.0, "evaluation set"))
    return clean_set, bad_images, source_key(dataset, image_column, label_column, resizer)


def chance_accuracy(labels: np.ndarray, num_outputs: int | None = None) -> float:
    """The accuracy of always answering the evaluation set's most frequent class (1/C when the
    classes are balanced): what a model that learned nothing scores."""
    if not len(labels):
        return 0.0
    counts = np.bincount(labels[labels >= 0], minlength=num_outputs or 0)
    return float(counts.max() / len(labels)) if counts.size else 0.0


def _num_outputs(model) -> int | None:
    config = getattr(getattr(model, "model", model), "config", None)
    return getattr(model, "num_labels", None) or getattr(config, "num_labels", None)


def _resizer(model, image_processor, image_size, decode_with) -> ImageResizer:
    """How evaluation images are decoded: ``decode_with``, else a size, else the model's own processor."""
    if decode_with is not None:
        return decode_with if isinstance(decode_with, ImageResizer) else ImageResizer(decode_with)
    if image_size is not None:
        return ImageResizer(_size(image_size))
    processor = image_processor or getattr(model, "image_processor", None)
    if processor is None or isinstance(processor, PixelPreprocessor):
        inner = getattr(model, "model", model)
        source = getattr(inner, "name_or_path", None) or getattr(getattr(inner, "config", None), "_name_or_path", None)
        if not source:
            raise ValueError("pass decode_with (the image processor the model is used with) or image_size: the "
                             "model's processor cannot be read from its checkpoint")
        processor = AutoImageProcessor.from_pretrained(source)
    return ImageResizer(processor)


def natural_shift_accuracy(classifier, shift: NaturalShift, resizer, batch_size: int = 64,
                           num_workers: int = 0, device=None) -> float:
    """Top-1 accuracy of a [0, 1]-pixel classifier on a shifted test set (``natural_shift_scores``)."""
    return natural_shift_scores(classifier, shift, resizer, batch_size, num_workers, device).accuracy


def natural_shift_scores(classifier, shift: NaturalShift, resizer, batch_size: int = 64, num_workers: int = 0,
                         device=None, shard: Shard = Shard()) -> Scores:
    """Accuracy and calibration of a [0, 1]-pixel classifier on a shifted test set, logits restricted
    to the shift's class subset; ``resizer`` decodes its images (an ``ImageResizer`` or a size). An
    ImageNet-1k classifier reads the set's classes by name: folders of WordNet ids (ImageNet-Sketch),
    of indices (ImageNet-V2's "0" to "999"), or ImageNet's class names, whichever of them it holds.
    ``shard``: the batches this process scores (all of them by default)."""
    data = load_image_dataset(shift.dataset, shift.config)
    if shift.split not in data:
        raise ValueError(f"no split {shift.split!r} in {shift.dataset}; it has {list(data)}")
    data = data[shift.split]
    image_column, label_column = find_columns(data)
    subset = shift.subset()
    names = class_names(data, label_column)
    labels_in_subset = subset is not None and names is not None and len(names) == len(subset)
    indices = imagenet_indices(names) if not labels_in_subset and _num_outputs(classifier) == IMAGENET_1K else None
    prepared = prepare_dataset(data, resizer, image_column, label_column)
    loader = DataLoader(Subset(prepared, shard.rows(len(prepared), batch_size)), batch_size=batch_size,
                        collate_fn=collate_images, num_workers=num_workers)
    return _scores(classifier, decoded_batches(loader), device, subset, labels_in_subset,
                   label_map=torch.tensor(indices) if indices is not None else None)


@torch.inference_mode()
def _scores(classifier, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device, subset=None,
            labels_in_subset: bool = False, label_map: torch.Tensor | None = None) -> Scores:
    """Accuracy and calibration of a [0, 1]-pixel classifier on 8-bit batches; with ``subset`` only
    those classes are scored (their logits alone make the probabilities); ``label_map`` turns the
    set's labels into the model's class indices (-1: a class it does not predict, left out)."""
    scores = Scores()
    index = torch.as_tensor(subset, device=device) if subset is not None else None
    position = {c: i for i, c in enumerate(subset)} if subset is not None and not labels_in_subset else None
    for images, labels in batches:
        if label_map is not None:
            labels = label_map[labels]
            known = labels >= 0
            images, labels = images[known], labels[known]
            if not len(labels):
                continue
        logits = finite_logits(classifier(images.to(device).float().div_(255)))
        predictions = subset_predictions(logits, subset, labels_in_subset).cpu()
        scored = logits.index_select(-1, index.to(logits.device)) if index is not None else logits
        targets = torch.tensor([position.get(int(label), -1) for label in labels]) if position else labels
        scores.add(scored, targets, predictions == labels)
    return scores


def _size(image_size) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def _model_name(model) -> str:
    inner = getattr(model, "model", model)
    for candidate in (getattr(model, "name_or_path", None), getattr(inner, "name_or_path", None),
                      getattr(getattr(inner, "config", None), "_name_or_path", None)):
        if candidate:
            return str(candidate)
    return type(model).__name__


def _dataset_name(dataset) -> str:
    info = getattr(dataset, "info", None)
    return (getattr(info, "dataset_name", None) or getattr(info, "builder_name", None) or "evaluation set")


def _baseline(baseline) -> dict | None:
    if baseline is None:
        return None
    if isinstance(baseline, RobustnessReport):
        return baseline.as_baseline()
    if isinstance(baseline, str):
        if baseline.lower() != "alexnet":
            raise ValueError(f"baseline must be 'alexnet', a RobustnessReport or None, got {baseline!r}")
        return {"name": "AlexNet"}
    return dict(baseline)
