"""An exponential moving average of the student's weights, the one evaluated and saved.

The rule is timm's ``ModelEmaV2``, which the official DAD run uses (decay 0.99992): the average
starts from the weights training starts from, and after every optimizer step each trained
parameter and floating buffer moves to ``decay * average + (1 - decay) * weight``; other buffers
(BatchNorm's step counts) are copied. Frozen parameters equal their own average and are not kept.

The average is kept in float32 whatever the module's dtype (DeepSpeed turns the student into a
bf16 module, whose steps would vanish under bf16 rounding at decay 0.99992), and written back in
the module's dtype.
"""

from __future__ import annotations

import contextlib
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

EMA_WEIGHTS = "ema.safetensors"


class WeightAverage:
    """The average of ``model``'s trained parameters and buffers, by name, on their devices."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"the EMA decay lies in (0, 1), got {decay}")
        self.decay = decay
        self.restart = False  # start again from the weights training starts from (a resume without an average)
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Starts the average again from ``model``'s weights."""
        self.average = {name: tensor.detach().float().clone() if tensor.is_floating_point() else tensor.detach().clone()
                        for name, tensor in self._tracked(model).items()}

    @staticmethod
    def _tracked(model: nn.Module) -> dict[str, torch.Tensor]:
        tracked = {name: p for name, p in model.named_parameters() if p.requires_grad}
        tracked.update(model.named_buffers())
        return tracked

    def _follow(self, current: dict[str, torch.Tensor]) -> None:
        """Keeps each average on its weight's device (a launcher may move the model after the start)."""
        for name, tensor in self.average.items():
            if tensor.device != current[name].device:
                self.average[name] = tensor.to(current[name].device)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = self._tracked(model)
        self._follow(current)
        floats = [name for name, t in self.average.items() if t.is_floating_point()]
        if floats:
            torch._foreach_lerp_([self.average[n] for n in floats], [current[n].detach().float() for n in floats],
                                 1 - self.decay)
        for name, tensor in self.average.items():
            if not tensor.is_floating_point():
                tensor.copy_(current[name])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Writes the average into ``model``'s own tensors (wrappers of it see it too)."""
        current = self._tracked(model)
        self._follow(current)
        for name, tensor in self.average.items():
            current[name].copy_(tensor)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """``model`` holds the average inside the block and its own weights again after it."""
        own = {name: t.detach().clone() for name, t in self._tracked(model).items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            current = self._tracked(model)
            with torch.no_grad():
                for name, tensor in own.items():
                    current[name].copy_(tensor)

    def save(self, folder: str) -> None:
        save_file({name: t.detach().cpu().contiguous() for name, t in self.average.items()},
                  os.path.join(folder, EMA_WEIGHTS))

    def load(self, folder: str) -> bool:
        """Reads the average saved beside a checkpoint; False when the checkpoint has none."""
        path = os.path.join(folder, EMA_WEIGHTS)
        if not os.path.isfile(path):
            return False
        saved = load_file(path)
        missing = sorted(set(self.average) - set(saved))
        if missing:
            raise ValueError(f"{path} has no average of {', '.join(missing[:5])}: it was saved for another student")
        with torch.no_grad():
            for name, tensor in self.average.items():
                tensor.copy_(saved[name])
        return True


class WeightAverageCallback(TrainerCallback):
    """Moves the average after every optimizer step (not after each accumulated micro-batch)."""

    def __init__(self, average: WeightAverage):
        self.average = average

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.average.restart:  # resumed from a checkpoint without an average: from its weights
            self.average.reset(model)
            self.average.restart = False

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.average.update(model)


def check_ema_flags(args, problems) -> None:
    """The weight average's fields of a ``DistillationConfig``."""
    if not 0 <= args.ema_decay < 1:
        problems.add("--ema_decay", f"ema_decay lies in [0, 1) (0: no EMA; the official DAD run: 0.99992), got "
                                    f"{args.ema_decay}")
    if args.ema_decay and args.load_best_model_at_end:
        problems.add("--ema_decay", "with ema_decay the weight average is the final student, and "
                                    "load_best_model_at_end would replace it by a checkpoint's raw weights: drop one "
                                    "of them")
