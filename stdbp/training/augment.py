"""Data augmentation for image batches and input spike times, driven by an explicit generator.

Each random function draws for a whole batch. With ``rows=(start, total)`` the images passed are
rows ``[start, start + len)`` of a batch of ``total``: the draws are made for all ``total`` rows
(the generator advances as for the whole batch) and these rows' draws are applied, so that a
batch split over processes gets exactly the augmentation it would get in one process.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["affine_transform", "random_affine", "random_shift", "jitter_times"]


def affine_transform(images: Tensor, angles: Tensor, scales: Tensor) -> Tensor:
    """Rotate each image of ``(B, H, W)`` about its centre and scale it, bilinear, zeros outside.

    ``angles`` ``(B,)`` are in radians, positive = counter-clockwise as displayed (row 0 at the top);
    ``scales`` ``(B,)`` > 1 enlarge the content. Integer images (uint8 pixels) come back rounded, same dtype.
    """
    batch = images.shape[0]
    dtype = images.dtype if images.is_floating_point() else torch.float32
    cos, sin = torch.cos(angles) / scales, torch.sin(angles) / scales
    # maps output coordinates (x right, y down, in [-1, 1]) to input coordinates
    theta = torch.zeros(batch, 2, 3, dtype=dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    grid = torch.nn.functional.affine_grid(theta, [batch, 1, *images.shape[1:]], align_corners=False)
    out = torch.nn.functional.grid_sample(
        images.unsqueeze(1).to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    out = out.squeeze(1)
    return out if images.is_floating_point() else out.round().to(images.dtype)


def _rows(images: Tensor, rows: tuple[int, int] | None) -> tuple[int, int]:
    """``(start, total)``: the images' first row in the batch and the batch's size."""
    return (0, images.shape[0]) if rows is None else rows


def random_affine(
    images: Tensor,
    max_degrees: float,
    max_scale: float,
    generator: torch.Generator,
    rows: tuple[int, int] | None = None,
) -> Tensor:
    """Rotate each image of ``(B, H, W)`` by a uniform angle in ``[-max_degrees, max_degrees]`` and scale it
    by a uniform factor in ``[1 - max_scale, 1 + max_scale]``; draws nothing when both are 0."""
    if max_degrees <= 0 and max_scale <= 0:
        return images
    start, total = _rows(images, rows)
    draws = torch.rand(2, total, generator=generator, dtype=torch.float64) * 2 - 1
    draws = draws[:, start : start + images.shape[0]]
    dtype = images.dtype if images.is_floating_point() else torch.float32
    angles = (draws[0] * math.radians(max_degrees)).to(dtype)
    scales = (1 + draws[1] * max_scale).to(dtype)
    return affine_transform(images, angles, scales)


def random_shift(
    images: Tensor, max_shift: int, generator: torch.Generator, rows: tuple[int, int] | None = None
) -> Tensor:
    """Shift each image of ``(B, H, W)`` by up to ``max_shift`` pixels in x and y, filling with zeros."""
    if max_shift <= 0:
        return images
    batch, height, width = images.shape
    padded = torch.nn.functional.pad(images, (max_shift, max_shift, max_shift, max_shift))
    start, total = _rows(images, rows)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, total), generator=generator)[:, start : start + batch]
    row_index = offsets[0].view(-1, 1) + torch.arange(height).view(1, -1)  # (B, H)
    col_index = offsets[1].view(-1, 1) + torch.arange(width).view(1, -1)  # (B, W)
    return padded[torch.arange(batch).view(-1, 1, 1), row_index.unsqueeze(-1), col_index.unsqueeze(1)]


def jitter_times(times: Tensor, std: float, generator: torch.Generator, rows: tuple[int, int] | None = None) -> Tensor:
    """Add Gaussian noise of ``std`` time units to the finite spike times, clamping at 0."""
    if std <= 0:
        return times
    start, total = _rows(times, rows)
    noise = (
        torch.randn((total, *times.shape[1:]), generator=generator, dtype=times.dtype)[start : start + times.shape[0]]
        * std
    )
    return torch.where(torch.isfinite(times), (times + noise).clamp_min(0.0), times)
