"""DAD images of one batch: ``x_dad = VQ(PGD(teacher, VQ(x)))``, the attack projected around
``VQ(x)``; what online DAD makes inside the trainer each step, and offline generation batch by batch."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from .attacks import NORMS, pgd_attack

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


DAD_MODES = ("none", "online", "offline")
DAD_OBJECTIVES = ("separate", "official")


def check_dad_flags(args, problems) -> None:
    """DAD's fields of a ``DistillationConfig``: its mode, objective, terms and attack."""
    add = problems.add
    if args.dad_mode not in DAD_MODES:
        add("--dad_mode", f"dad_mode must be one of {DAD_MODES}, got {args.dad_mode!r}")
    dad_terms = args.dad_kd_weight > 0 or args.dad_ce_weight > 0
    if args.dad_objective not in DAD_OBJECTIVES:
        add("--dad_objective", f"dad_objective must be one of {DAD_OBJECTIVES}, got {args.dad_objective!r}")
    if args.dad_objective == "official":
        if args.dad_mode == "none":
            add("--dad_objective", "dad_objective='official' trains on clean and DAD images together: set dad_mode "
                                   "'offline' (as the official code) or 'online'")
        if dad_terms:
            add("--dad_kd_weight / --dad_ce_weight", "under dad_objective='official' ce_weight and kd_weight cover the "
                                                     "joint batch of clean and DAD images: set dad_kd_weight and "
                                                     "dad_ce_weight to 0")
    elif args.dad_mode != "none" and not dad_terms:
        add("--dad_mode", f"dad_mode={args.dad_mode!r} needs dad_kd_weight > 0 or dad_ce_weight > 0")
    if dad_terms and args.dad_mode == "none":
        add("--dad_kd_weight / --dad_ce_weight", "dad_kd_weight and dad_ce_weight need dad_mode 'online' or 'offline'")
    if args.attack_norm not in NORMS:
        add("--attack_norm", f"attack_norm must be one of {NORMS}, got {args.attack_norm!r}")
    if args.attack_eps < 0 or args.attack_steps < 0 or (args.attack_step_size or 0) < 0:
        add("--attack_eps / --attack_step_size / --attack_steps",
            "attack_eps, attack_step_size and attack_steps must be >= 0")
    if not 0 <= args.attack_random_start <= 1:
        add("--attack_random_start", f"attack_random_start is a probability, got {args.attack_random_start}")
