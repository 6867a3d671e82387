"""What a training batch becomes before the models see it, in numbered steps: its pixels as floats,
its DAD images, the official objective's joint batch, mixing, and the student's distorted view; every
random draw from one generator seeded per micro-batch. (The training augmentation is timm's, image
by image in the data loader's workers: ``data.augmentation``.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch

from ..data.columns import DAD_PIXELS, LABELS, PIXELS, STORED_TEACHER_LOGITS, TEACHER_LOGITS_CLEAN
from ..data.datasets import IGNORED_LABEL
from ..data.pixel_levels import to_unit_range, unit_levels
from ..methods.dad.online import dad_images
from ..views.distortions import Distorter
from ..views.mixing import mix_batch


class ViewSeeds:
    """Generators seeded from (seed, step, micro-batch, rank), so a resumed run draws the same
    views as an uninterrupted one, and evaluation draws the same views every time it runs."""

    def __init__(self, seed: int, process_index: int):
        self.seed, self.process_index = seed, process_index
        self.last_training = (-1, -1)  # (global step, micro-batch) of the last training view
        self.evaluation_batch = 0
        self._generator: torch.Generator | None = None

    def restart(self) -> None:
        """The next views are drawn as if no view had been drawn before."""
        self.last_training, self.evaluation_batch = (-1, -1), 0

    def __call__(self, device: torch.device, *, training: bool, step: int) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        if training:
            micro = self.last_training[1] + 1 if self.last_training[0] == step else 0
            self.last_training = (step, micro)
            entropy = [self.seed, 0, step, micro, self.process_index]
        else:
            entropy = [self.seed, 1, self.evaluation_batch, 0, self.process_index]
            self.evaluation_batch += 1
        seed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)
        return self._generator.manual_seed(seed)


@dataclass
class ViewBatch:
    """A micro-batch as the models see it: the teacher's ``images`` (clean; under the official
    objective with their DAD images joined), the ``dad`` images that have terms of their own, the
    targets, and the student's ``view`` of both, distorted and joined in one batch."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    dad: torch.Tensor | None = None
    columns: dict = field(default_factory=dict)
    images_as_stored: bool = True
    """Whether ``images`` are those the teacher's outputs in ``columns`` were computed on (augmentation
    and mixing make new images)."""
    view: torch.Tensor | None = None

    @property
    def teacher_columns(self) -> dict:
        """What the batch carries of the teacher that holds for its images (its cache, stored logits)."""
        return self.columns if self.images_as_stored else {}


class ViewPipeline:
    """The views of a ``DistillationConfig``: ``distorter`` makes the student's view, ``make_dad`` the
    online DAD images (``None`` unless ``dad_mode`` is online), ``num_classes`` sizes mixed targets."""

    def __init__(self, args, distorter: Distorter, *, num_classes: int, make_dad=None, levels=None):
        self.distorter, self.make_dad, self.num_classes = distorter, make_dad, num_classes
        self.dad_mode, self.joint = args.dad_mode, args.dad_objective == "official"
        self.augmented, self.mixing = args.augmentation.active, args.mixing  # read once, not rebuilt every step
        self.seeds = ViewSeeds(args.seed, args.process_index)
        self.levels = levels if levels is not None else unit_levels()

    @classmethod
    def for_run(cls, args, *, patch_size: int | None, num_classes: int, teacher_classifier=None, discretizer=None,
                distorter: Distorter | None = None, processor=None) -> ViewPipeline:
        """The pipeline of a run: 8-bit pixels read as ``processor`` (the student's) rescales them, its
        distortions (patch masks of the student's patch size), and online DAD against
        ``teacher_classifier`` through ``discretizer``."""
        distorter = distorter or Distorter(args.distortions, patch_size=args.distortion_patch_size or patch_size or 16)
        make_dad = (partial(dad_images, teacher_classifier, discretizer, attack=args.attack_settings())
                    if args.dad_mode == "online" else None)
        return cls(args, distorter, num_classes=num_classes, make_dad=make_dad, levels=unit_levels(processor))

    def __call__(self, inputs: dict, *, training: bool, step: int) -> ViewBatch:
        # 1. 8-bit pixels as the processor's floats, and the generator of this micro-batch's draws
        device = inputs[PIXELS].device
        if self.levels.device != device:  # once: the table stays on the device
            self.levels = self.levels.to(device)
        inputs = {k: to_unit_range(v, self.levels) if k in (PIXELS, DAD_PIXELS) else v for k, v in inputs.items()}
        generator = self.seeds(device, training=training, step=step)
        # 2. the DAD images: made now (online) or read from the batch (offline)
        batch = ViewBatch(inputs[PIXELS], inputs.get(LABELS), self.dad_images(inputs, generator, training),
                          columns=inputs)
        # 3. images the loader augmented are not those the teacher's stored outputs were computed on
        if training and self.augmented:
            batch = replace(batch, images_as_stored=False)
        # 4. the official objective's one batch of clean and DAD images
        if batch.dad is not None and self.joint:
            batch = self.joined(batch)
        # 5. mixup/cutmix across it, and soft, smoothed targets
        if training and self.mixing.active:
            batch = self.mixed(batch, generator)
        # 6. the student's view: both distorted, in one batch
        return self.distorted(batch, generator)

    def dad_images(self, inputs: dict, generator: torch.Generator, training: bool) -> torch.Tensor | None:
        if self.dad_mode == "none":
            return None
        if self.dad_mode == "online":
            return self.make_dad(inputs[PIXELS], inputs.get(LABELS), generator=generator)
        if DAD_PIXELS in inputs:
            return inputs[DAD_PIXELS]
        if training:
            raise ValueError("offline DAD needs each clean image's DAD image in the batch (dad_pixel_values): pair the "
                             "training set with pair_with_dad(train, dad_dataset) and prepare it with "
                             "extra_images={'dad_image': 'dad_pixel_values'}")
        return None  # evaluation sets carry no DAD images: clean and distorted terms only

    @staticmethod
    def joined(batch: ViewBatch) -> ViewBatch:
        """The clean images, then their DAD images, with their labels and the teacher's stored logits
        on both, when the batch carries both."""
        stored = [batch.teacher_columns.get(name) for name in STORED_TEACHER_LOGITS]
        columns = {TEACHER_LOGITS_CLEAN: torch.cat(stored)} if None not in stored else {}
        labels = torch.cat([batch.labels, batch.labels]) if batch.labels is not None else None
        return ViewBatch(torch.cat([batch.images, batch.dad]), labels, columns=columns)

    def mixed(self, batch: ViewBatch, generator: torch.Generator) -> ViewBatch:
        images = [batch.images] + ([batch.dad] if batch.dad is not None else [])
        given = batch.labels if batch.labels is not None else torch.full((len(batch.images),), IGNORED_LABEL,
                                                                         device=batch.images.device)
        images, targets = mix_batch(images, given, self.num_classes, self.mixing, generator)
        return replace(batch, images=images[0], dad=images[1] if batch.dad is not None else None,
                       labels=targets if batch.labels is not None else None,
                       images_as_stored=batch.images_as_stored and not self.mixing.mixes)

    def distorted(self, batch: ViewBatch, generator: torch.Generator) -> ViewBatch:
        with torch.no_grad():
            views = [self.distorter(batch.images, generator)]
            if batch.dad is not None:
                views.append(self.distorter(batch.dad, generator))
        return replace(batch, view=views[0] if len(views) == 1 else torch.cat(views))
