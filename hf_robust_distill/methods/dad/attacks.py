"""Projected gradient descent (PGD) in [0, 1] pixel space, against a frozen classifier.

The attacked model maps [0, 1] images to logits (a tensor, or an output with ``.logits``): a
``CLIPZeroShotClassifier``, or any image classifier behind ``models.PixelSpaceClassifier``.
Only the images get gradients (``torch.autograd.grad``), so no parameter's ``.grad`` is touched
and the model is run in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORMS = ("l2", "linf")


def classifier_logits(model, images: torch.Tensor) -> torch.Tensor:
    """Logits of a classifier of [0, 1] images that returns a tensor or an output with ``.logits``."""
    output = model(images)
    return getattr(output, "logits", output)


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random offset in the eps ball: on the L2 sphere of radius eps, or uniform in the Linf box."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if norm == "l2":
        return eps * noise / _per_sample_norm(noise)
    uniform = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (2 * uniform - 1) * eps


def project(x: torch.Tensor, center: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``x`` moved into the eps ball around ``center`` (L2: scaled back; Linf: clipped), then
    clamped to [0, 1]."""
    delta = x - center
    if norm == "l2":
        delta = delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)
    else:
        delta = delta.clamp(-eps, eps)
    return (center + delta).clamp(0.0, 1.0)


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    return grad / _per_sample_norm(grad) if norm == "l2" else grad.sign()


def pgd_attack(model, images: torch.Tensor, labels: torch.Tensor | None, eps: float, step_size: float,
               steps: int, *, norm: str = "l2", random_start_prob: float = 0.0,
               project_center: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images that raise ``model``'s loss, within an eps ball (L2 or Linf) around ``project_center``.

    The attack starts at ``images``; each sample, with probability ``random_start_prob``, first
    jumps to a random point of the ball. Each of ``steps`` steps ascends the loss by
    ``step_size`` (along the L2-normalised gradient, or its sign for Linf), then projects onto
    the ball around ``project_center`` (default: ``images``) and clamps to [0, 1]. DAD starts
    and projects around the VQ reconstruction VQ(x).

    The loss is the cross-entropy against ``labels`` or, with ``labels=None``, the KL divergence
    from the model's prediction on ``images`` (label-free). That divergence has no gradient at
    ``images`` itself, so samples without a random start begin 0.001-std Gaussian noise away, as
    in TRADES. Random draws come from ``generator``.
    Returns detached images; the model's mode is restored and its parameters get no gradients.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if eps < 0 or step_size < 0 or steps < 0:
        raise ValueError("eps, step_size and steps must be >= 0")
    if not 0.0 <= random_start_prob <= 1.0:
        raise ValueError(f"random_start_prob must lie in [0, 1], got {random_start_prob}")
    images = images.detach()
    center = images if project_center is None else project_center.detach()
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.enable_grad():
            target = labels
            if labels is None:
                with torch.no_grad():
                    target = F.log_softmax(classifier_logits(model, images).float(), dim=-1)
            x = images
            shape = (-1, *([1] * (x.dim() - 1)))
            start = torch.rand(len(x), generator=generator, device=x.device) < random_start_prob
            if eps > 0 and random_start_prob > 0:  # decided on the host: no device sync
                x = x + random_start(x, eps, norm, generator) * start.view(shape)
            if labels is None:
                nudge = 1e-3 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + nudge * (~start).view(shape)
            x = project(x, center, eps, norm)
            for _ in range(steps):
                x = x.detach().requires_grad_(True)
                logits = classifier_logits(model, x).float()
                if labels is None:
                    loss = F.kl_div(F.log_softmax(logits, dim=-1), target, log_target=True, reduction="sum")
                else:
                    loss = F.cross_entropy(logits, target, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x)
                x = project(x.detach() + step_size * _ascent_direction(grad, norm), center, eps, norm)
    finally:
        if was_training:
            model.train()
    return x.detach()
