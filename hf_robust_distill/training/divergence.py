"""A diverged run stops, and never leaves, cards or pushes weights with NaN or Inf.

The trainer checks each micro-batch's loss (the check ``Trainer`` already makes, so no extra
device synchronisation) and each step's gradient norm, and raises ``NonFiniteLossError`` before
the optimizer applies the step, naming the step, the loss parts that went non-finite and the
last checkpoint saved. Every save first checks the weights (``non_finite_tensors``), and
``push_robust_student`` checks the files it sends (``non_finite_weights_in``).
"""

from __future__ import annotations

import math
import os
import re

import torch

CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_FIX = ("lower --learning_rate, add --warmup_steps, keep --max_grad_norm (default 1.0) on, or train in "
        "--bf16 rather than --fp16")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf."""


class NonFiniteWeightsError(FloatingPointError):
    """Weights with NaN or Inf were about to be saved or pushed."""


def non_finite_parts(parts: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """The parts whose value is NaN or Inf, as floats."""
    values = {name: float(value) for name, value in parts.items()}
    return {name: value for name, value in values.items() if not math.isfinite(value)}


def last_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` folder in ``output_dir`` (only finite weights are ever saved)."""
    if not os.path.isdir(output_dir):
        return None
    steps = [(int(m.group(1)), name) for name in os.listdir(output_dir)
             if (m := CHECKPOINT.fullmatch(name)) and os.path.isdir(os.path.join(output_dir, name))]
    return os.path.join(output_dir, max(steps)[1]) if steps else None


def _resume_hint(output_dir: str) -> str:
    checkpoint = last_checkpoint(output_dir)
    if checkpoint is None:
        return "No checkpoint was saved before it, and no weights were written."
    return (f"The last good checkpoint is {checkpoint}: resume from it with --resume_from_checkpoint {checkpoint} "
            "once the cause is fixed.")


def loss_error(step: int, loss: float, parts: dict[str, float], output_dir: str) -> NonFiniteLossError:
    bad = non_finite_parts(parts)
    which = (", ".join(f"{name} = {value}" for name, value in bad.items()) if bad
             else f"every part is finite ({', '.join(f'{n} = {v:.4g}' for n, v in parts.items())}) but their "
                  "weighted sum overflowed")
    return NonFiniteLossError(f"the training loss is {loss} at step {step}: {which}. Training stopped before this "
                              f"step was applied. {_resume_hint(output_dir)} To avoid it: {_FIX}.")


def gradient_error(step: int, norm: float, parameters: list[str], output_dir: str) -> NonFiniteLossError:
    shown = ", ".join(parameters[:5]) + (f" and {len(parameters) - 5} more" if len(parameters) > 5 else "")
    return NonFiniteLossError(f"the gradient norm is {norm} at step {step} although the loss was finite (an "
                              f"overflow in the backward pass; NaN or Inf gradients of {shown or 'the parameters'}). "
                              f"Training stopped before this step was applied. {_resume_hint(output_dir)} "
                              f"To avoid it: {_FIX}.")


def non_finite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an Inf."""
    return [name for name, tensor in state_dict.items()
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def weights_error(names: list[str], where: str, output_dir: str) -> NonFiniteWeightsError:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return NonFiniteWeightsError(f"refusing to save weights with NaN or Inf to {where}: {len(names)} tensors "
                                 f"({shown}). The run diverged. {_resume_hint(output_dir)} To avoid it: {_FIX}.")


def non_finite_weights_in(folder: str) -> list[str]:
    """Tensors with NaN or Inf in the safetensors files of ``folder``, read one at a time."""
    from safetensors import safe_open

    bad = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".safetensors"):
            continue
        with safe_open(os.path.join(folder, name), framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(key)
    return bad
