"""Distil image models that stay accurate on noisy, blurred, compressed or shifted inputs."""

from .distortions import CORRUPTIONS, Distorter, corrupt

__all__ = ["CORRUPTIONS", "Distorter", "corrupt"]
