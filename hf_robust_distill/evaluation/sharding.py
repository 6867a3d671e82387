"""An evaluation shared by the processes of ``accelerate launch``: each scores every ``count``-th batch
of each set, and their sums are added up.

A set's batches are numbered as one process would number them, and each batch's random draws are
seeded by that number, so every image is corrupted alike whatever the number of processes: the
counts added up are the one-process counts.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's share of every set: batch ``i`` when ``i % count == index``."""

    index: int = 0
    count: int = 1

    @classmethod
    def of_this_process(cls) -> Shard:
        """Rank and world size of the initialised process group (``accelerate launch``, torchrun), else
        the whole set."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def key(self) -> str:
        """Names the share in cache keys: empty for the whole set."""
        return "" if self.count == 1 else f"{self.index}/{self.count}"

    def batches(self, rows: int, batch_size: int) -> range:
        return range(self.index, math.ceil(rows / batch_size), self.count)

    def rows(self, rows: int, batch_size: int) -> list[int]:
        """The rows of this share's batches, in order."""
        return [row for i in self.batches(rows, batch_size) for row in range(i * batch_size,
                                                                             min(rows, (i + 1) * batch_size))]

    def sum(self, tensor: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """``tensor`` summed over the processes (itself when alone), on ``device`` for the exchange
        (NCCL exchanges only accelerator tensors) and back on the CPU."""
        if self.count == 1:
            return tensor
        moved = tensor.to(device or _exchange_device())
        dist.all_reduce(moved)
        return moved.cpu()

    @contextlib.contextmanager
    def main_process_first(self):
        """The block run by process 0 first (it writes what the others then read), then by the rest."""
        if self.count > 1 and self.index != 0:
            dist.barrier()
        try:
            yield
        finally:
            if self.count > 1 and self.index == 0:
                dist.barrier()


def _exchange_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
