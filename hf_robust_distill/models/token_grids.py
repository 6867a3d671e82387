"""Aligning the token sequences and attention maps of models that cut images differently.

A ViT-family sequence is ``prefix tokens + an (h, w) grid of patch tokens``. The prefix is the
[CLS] token plus, by model, a distillation token (DeiT) or register tokens (Dinov2 with
registers): it is read from each model's config. Two models' grids differ when their patch sizes
or input sizes do (Dinov2's 14 px patches at 224 px against ViT's 16 px). The functions here are
pure: the teacher's grid is resampled to the student's, and attention maps are cut to the [CLS]
token and the grid (other prefix tokens have no counterpart), resampled, and head-averaged when
the head counts differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTILLATION_TOKEN_MODELS = ("deit",)


def prefix_tokens(config) -> int:
    """The tokens before the patch grid: [CLS], a DeiT's distillation token, Dinov2's registers."""
    config = getattr(config, "vision_config", config)
    distillation = 1 if getattr(config, "model_type", "") in DISTILLATION_TOKEN_MODELS else 0
    return 1 + distillation + int(getattr(config, "num_register_tokens", 0) or 0)


def patch_grid(pixel_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    return pixel_size[0] // patch_size, pixel_size[1] // patch_size


def _resize(grid_first: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of the last two dims (area-like antialiasing when shrinking)."""
    if tuple(grid_first.shape[-2:]) == tuple(size):
        return grid_first
    shrinking = size[0] < grid_first.shape[-2] or size[1] < grid_first.shape[-1]
    return F.interpolate(grid_first, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def resample_tokens(tokens: torch.Tensor, grid: tuple[int, int], to_grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens (B, h*w, D) on ``grid`` as (B, h'*w', D) on ``to_grid``."""
    if tuple(grid) == tuple(to_grid):
        return tokens
    b, n, d = tokens.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} patch tokens do not form a {grid[0]}x{grid[1]} grid")
    image = tokens.transpose(1, 2).reshape(b, d, *grid).float()
    return _resize(image, to_grid).reshape(b, d, -1).transpose(1, 2).to(tokens.dtype)


def cls_and_grid(maps: torch.Tensor, prefix: int) -> torch.Tensor:
    """Attention maps (B, H, Q, K) over ``prefix`` tokens + the grid, cut to the [CLS] token and the
    grid on both axes (queries only where Q > 1), each row renormalised to sum to one."""
    keep_keys = torch.cat([maps[..., :1], maps[..., prefix:]], dim=-1)
    if keep_keys.shape[-2] > 1:
        keep_keys = torch.cat([keep_keys[..., :1, :], keep_keys[..., prefix:, :]], dim=-2)
    return keep_keys / keep_keys.sum(-1, keepdim=True).clamp_min(1e-12)


def resample_attention(maps: torch.Tensor, grid: tuple[int, int], to_grid: tuple[int, int]) -> torch.Tensor:
    """Maps (B, H, Q, 1 + h*w) over [CLS] + ``grid`` (Q is 1, or 1 + h*w) on ``to_grid``: the grid
    part of the keys, and of the queries when all rows are kept, resized; rows renormalised."""
    if tuple(grid) == tuple(to_grid):
        return maps
    b, h, q, _ = maps.shape
    cls_keys, grid_keys = maps[..., :1], maps[..., 1:]
    grid_keys = _resize(grid_keys.float().reshape(b * h * q, 1, *grid), to_grid).reshape(b, h, q, -1)
    grid_keys = grid_keys * (grid[0] * grid[1]) / (to_grid[0] * to_grid[1])  # mass per key kept
    maps = torch.cat([cls_keys.float(), grid_keys], dim=-1)
    if q > 1:
        cls_row, grid_rows = maps[..., :1, :], maps[..., 1:, :]
        k = maps.shape[-1]
        grid_rows = grid_rows.permute(0, 1, 3, 2).reshape(b * h * k, 1, *grid)
        grid_rows = _resize(grid_rows, to_grid).reshape(b, h, k, -1).permute(0, 1, 3, 2)
        maps = torch.cat([cls_row, grid_rows], dim=-2)
    return maps / maps.sum(-1, keepdim=True).clamp_min(1e-12)


def align_attention(student: torch.Tensor, teacher: torch.Tensor, *, student_prefix: int, teacher_prefix: int,
                    student_grid: tuple[int, int], teacher_grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher maps made comparable: cut to [CLS] + grid, the teacher's grid resampled to
    the student's, and both averaged over heads when their head counts differ."""
    student = cls_and_grid(student, student_prefix)
    teacher = resample_attention(cls_and_grid(teacher, teacher_prefix), teacher_grid, student_grid)
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    return student, teacher
