"""Checks of spike times and of layer arguments, shared by the functional core and the kernels.

A leaf module: it imports nothing from stdbp, so every other module may use it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_spike_times", "pair", "pool_pairs"]


def check_spike_times(t: Tensor, name: str = "t_in") -> None:
    """Raise ``ValueError`` unless every entry of ``t`` is a time ``>= 0`` or ``+inf``."""
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of spike times, got {t.dtype}")
    if t.numel() and not bool(t.min() >= 0):  # min is NaN if any entry is: one reduction checks both
        bad = "NaN" if bool(torch.isnan(t).any()) else "negative"
        raise ValueError(f"{name} contains {bad} spike times; times must be >= 0, or +inf for no spike")


def pair(value: int | tuple[int, int], name: str, minimum: int) -> tuple[int, int]:
    """``value`` as an ``(H, W)`` pair of ints ``>= minimum``, as the ``int or tuple`` arguments of ``conv2d``."""
    both = (value, value) if isinstance(value, int) else tuple(value)
    if len(both) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in both):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return both


def pool_pairs(
    kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """A pooling window and its stride (default: the window) as ``(H, W)`` pairs."""
    kernel_hw = pair(kernel_size, "kernel_size", 1)
    return kernel_hw, kernel_hw if stride is None else pair(stride, "stride", 1)
