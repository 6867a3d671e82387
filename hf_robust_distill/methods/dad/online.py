"""DAD images of one batch: ``x_dad = VQ(PGD(teacher, VQ(x)))``, the attack projected around
``VQ(x)``; what online DAD makes inside the trainer each step, and offline generation batch by batch."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from .attacks import pgd_attack

ONLINE_STEP_SIZE, OFFLINE_STEP_SIZE = 0.1, 0.01


@dataclass(frozen=True)
class AttackSettings:
    """The PGD step of DAD; defaults are the official code's (L2, eps 0.1, one step, random start
    with probability 0.8; step 0.1 online, 0.01 offline)."""

    norm: str = "l2"
    eps: float = 0.1
    step_size: float = ONLINE_STEP_SIZE
    steps: int = 1
    random_start_prob: float = 0.8

    @classmethod
    def offline(cls, **overrides) -> AttackSettings:
        return cls(**{"step_size": OFFLINE_STEP_SIZE, **overrides})


class Stopwatch:
    """Seconds spent per named section, for throughput reports. With ``synchronize`` the device's
    queued work is waited for at the end of each section (true times, slower runs)."""

    def __init__(self, synchronize: bool = True):
        self.seconds: dict[str, float] = {}
        self.synchronize = synchronize

    @contextlib.contextmanager
    def section(self, name: str, device: torch.device | None = None):
        start = time.perf_counter()
        yield
        if self.synchronize and device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def dad_images(teacher, discretizer, images: torch.Tensor, labels: torch.Tensor | None,
               attack: AttackSettings = AttackSettings(), generator: torch.Generator | None = None,
               stopwatch: Stopwatch | None = None) -> torch.Tensor:
    """DAD images of a [0, 1] batch: discretize, one PGD step against ``teacher`` (a classifier of
    [0, 1] pixels) around the discretized image, discretize again."""
    timed = (stopwatch or Stopwatch(synchronize=False)).section
    dtype, images = images.dtype, images.float()  # computed in float32 whatever the batch's dtype
    with timed("vq", images.device):
        base = discretizer(images)
    with timed("attack", images.device):
        adversarial = pgd_attack(teacher, base, labels, eps=attack.eps, step_size=attack.step_size,
                                 steps=attack.steps, norm=attack.norm, random_start_prob=attack.random_start_prob,
                                 project_center=base, generator=generator)
    with timed("vq", images.device):
        return discretizer(adversarial).to(dtype)
