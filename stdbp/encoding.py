"""Latency (time-to-first-spike) coding of images: brighter pixel, earlier spike (Section 4.1)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["latency_encode"]


def latency_encode(
    images: Tensor, t_max: float = 1.0, zero_spikes: bool = False, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Spike times ``t = t_max * (1 - x)`` for intensities ``x`` in [0, 1].

    Args:
        images: intensities of any shape; ``uint8`` tensors are divided by 255 first.
        t_max: length of the coding window, in time units. Intensity 1 spikes at 0.
        zero_spikes: if ``False`` (default), zero-intensity pixels never spike (``+inf``);
            if ``True``, they spike at ``t_max``.
        dtype: floating dtype of the result.

    Returns:
        Spike times, same shape as ``images``.

    Raises:
        ValueError: on NaN or intensities outside [0, 1].
    """
    if t_max <= 0:
        raise ValueError(f"t_max must be positive, got {t_max}")
    x = images.to(dtype) / 255.0 if images.dtype == torch.uint8 else images.to(dtype)
    if not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError("images must hold intensities in [0, 1] (or uint8 0-255); found NaN or values out of range")
    t = t_max * (1.0 - x)
    if zero_spikes:
        return t
    return torch.where(x > 0, t, torch.full_like(t, float("inf")))
