"""Counting the operations that make the host wait for the device.

On a GPU, reading a value back (``.item()``, ``bool(tensor)``) or an operation whose output size
depends on the data (``nonzero``, ``unique``, boolean indexing, ``masked_select``) stops the host
until the device has caught up; a training step's views should have none. ``SyncCounter`` counts
them at torch's dispatcher, so it counts the same on a CPU, where nothing waits, as on a GPU.
Decisions a view makes on the host in NumPy are not torch operations and are not counted; a host
read of a device tensor through ``.cpu()``, ``.numpy()`` or ``.tolist()`` shows only on a GPU
(``torch.cuda.set_sync_debug_mode``), which ``benchmarks/view_cost.py`` adds there.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::_unique", "aten::_unique2", "aten::unique_dim",
           "aten::unique_consecutive", "aten::unique_dim_consecutive", "aten::masked_select"}


def _data_dependent(name, func, args, kwargs) -> bool:
    """Boolean-mask indexing, and ``repeat_interleave`` by a tensor of counts without ``output_size``."""
    if name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_") and len(args) > 1:
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ())
    return (name == "aten::repeat_interleave" and kwargs.get("output_size") is None
            and func._overloadname in ("Tensor", "self_Tensor"))


class SyncCounter(TorchDispatchMode):
    """Within the block, ``counts`` holds how often each synchronising operation ran."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in SYNCING or _data_dependent(name, func, args, kwargs):
            self.counts[name] += 1
        return func(*args, **kwargs)
