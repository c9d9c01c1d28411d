"""Gradient saturation: no NaN or inf ever reaches a gradient (see :class:`SaturateGradient`)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["all_finite", "saturate", "saturating", "SaturateGradient"]


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every entry of every tensor is finite: a cheap float32 sum each, and the float64
    sum (which finite float32 values cannot overflow) only to confirm a non-finite one."""
    return all(bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t.sum(dtype=torch.float64))) for t in tensors)


class SaturateGradient(torch.autograd.Function):
    """Identity forward; in the backward pass, a gradient that overflowed its dtype saturates.

    Exact STDBP gradients can exceed the floating-point range when a neuron fires with a causal
    weight sum near zero (eq. 14 divides by it). Such entries become the dtype's largest finite
    value with their sign, and an undefined one (``inf - inf``) becomes 0, so that no NaN or inf
    ever reaches a gradient. The reference kernels are wrapped in it, the Triton kernel calls
    :func:`saturate` on its gradients; the numba kernels saturate theirs in place
    (``numba_linear.saturate_``).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return saturate(grad)


def saturate(grad: Tensor) -> Tensor:
    """``grad`` with entries beyond the dtype's range at its largest finite value (with their
    sign) and NaN at 0; ``grad`` itself when every entry is finite (see ``SaturateGradient``)."""
    if all_finite([grad]):
        return grad
    big = torch.finfo(grad.dtype).max
    return torch.nan_to_num(grad, nan=0.0, posinf=big, neginf=-big)


def saturating(x: Tensor) -> Tensor:
    return SaturateGradient.apply(x) if x.requires_grad else x
