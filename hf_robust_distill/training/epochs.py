"""The training set's epoch, set before each epoch's loader starts, and a stream's position, kept
beside each checkpoint.

An image's augmentation draws are seeded by (seed, epoch, row), so they change from epoch to epoch
and repeat on a resume: ``DrawEpochCallback`` hands the epoch to the training set and to a stream's
collator (accelerate forwards ``set_epoch`` to a sampler that has one, not to a map-style dataset).

A stream has no index to skip to: ``StreamPosition`` saves each process's loader state (torchdata's
stateful loader, through accelerate, which keeps the state of the batches handed out, not of those
prefetched) beside each checkpoint, and a resumed run starts its loader there, decoding nothing twice.
"""

from __future__ import annotations

import math
import os

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


class DrawEpochCallback(TrainerCallback):
    def __init__(self, *holders):
        self.holders = holders  # each with set_epoch

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is k exactly when epoch k begins, and k plus the share done when a run resumes in it
        for holder in self.holders:
            holder.set_epoch(math.floor(state.epoch))


class StreamPosition(TrainerCallback):
    """Each process's position in a streamed training set, ``stream_position_rank{N}.pt`` in every
    checkpoint; ``resumed`` gives a loader restarted there."""

    def __init__(self):
        self.folder: str | None = None  # the checkpoint the run resumes from

    @staticmethod
    def file(folder: str, rank: int) -> str:
        return os.path.join(folder, f"stream_position_rank{rank}.pt")

    def on_save(self, args, state, control, train_dataloader=None, **kwargs):
        if not getattr(train_dataloader, "use_stateful_dataloader", False):  # a map-style set resumes by index
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        torch.save(train_dataloader.state_dict(), self.file(folder, args.process_index))

    def resumed(self, dataloader, rank: int):
        """``dataloader`` restarted at the saved position, or ``None`` when the checkpoint has none."""
        path = self.file(self.folder, rank) if self.folder else None
        if path is None or not os.path.isfile(path) or not getattr(dataloader, "use_stateful_dataloader", False):
            return None
        dataloader.load_state_dict(torch.load(path, weights_only=True))  # counters, names, RNG tensors
        return dataloader
