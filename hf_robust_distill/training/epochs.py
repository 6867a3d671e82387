"""``DrawEpochCallback``: the training set learns which epoch begins before its loader starts, so an
image's augmentation draws (seeded by seed, epoch and row) change from epoch to epoch and repeat on a
resume. accelerate forwards ``set_epoch`` to a sampler that has one, not to a map-style dataset."""

from __future__ import annotations

import math

from transformers import TrainerCallback


class DrawEpochCallback(TrainerCallback):
    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is k exactly when epoch k begins, and k plus the share done when a run resumes in it
        self.dataset.set_epoch(math.floor(state.epoch))
