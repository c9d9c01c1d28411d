"""Data augmentation for image batches and input spike times, driven by an explicit generator."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_shift", "jitter_times"]


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image of ``(B, H, W)`` by up to ``max_shift`` pixels in x and y, filling with zeros."""
    if max_shift <= 0:
        return images
    batch, height, width = images.shape
    padded = torch.nn.functional.pad(images, (max_shift, max_shift, max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (2, batch), generator=generator)
    rows = offsets[0].view(-1, 1) + torch.arange(height).view(1, -1)  # (B, H)
    cols = offsets[1].view(-1, 1) + torch.arange(width).view(1, -1)  # (B, W)
    return padded[torch.arange(batch).view(-1, 1, 1), rows.unsqueeze(-1), cols.unsqueeze(1)]


def jitter_times(times: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """Add Gaussian noise of ``std`` time units to the finite spike times, clamping at 0."""
    if std <= 0:
        return times
    noise = torch.randn(times.shape, generator=generator, dtype=times.dtype) * std
    return torch.where(torch.isfinite(times), (times + noise).clamp_min(0.0), times)
