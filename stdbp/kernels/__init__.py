"""The one dispatch point for ReL-PSP kernels.

``backend`` is ``"reference"`` (PyTorch, any device), ``"numba"`` (fast CPU scan), ``"triton"``
(the scan on CUDA devices, fully connected layers; ``stdbp.kernels.triton_linear``) or ``None``
(the default for the tensor's device: numba on CPU, triton for fully connected layers on CUDA
when the triton package is installed, reference otherwise). The environment variable
``STDBP_KERNEL`` overrides the default for the whole process.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .conv_reference import conv_output_size, relpsp_conv2d_reference
from .numba_autograd import NO_POOL, EarliestSpikePoolNumba, RelpspConv2dNumba, RelpspLinearNumba, RelpspStackNumba, sort_keys
from .reference import SILENT_HORIZON, relpsp_linear_reference

BACKENDS = ("reference", "numba", "triton")

__all__ = [
    "BACKENDS",
    "all_finite",
    "saturate",
    "SILENT_HORIZON",
    "relpsp_linear_reference",
    "relpsp_conv2d_reference",
    "conv_output_size",
    "resolve_backend",
    "relpsp_linear_kernel",
    "relpsp_linear_stack_kernel",
    "sort_keys",
    "relpsp_conv2d_kernel",
    "relpsp_conv2d_pool_kernel",
    "earliest_spike_pool2d_kernel",
    "earliest_spike_pool2d_reference",
]


@functools.lru_cache(maxsize=1)
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(device: torch.device, backend: str | None = None, kind: str = "linear") -> str:
    """The backend to use for a ``kind`` of layer (``"linear"``, ``"conv"``, ``"pool"``) on ``device``.

    Only fully connected layers have a Triton kernel: for the other kinds ``"triton"`` means the
    reference, which runs on the same device.
    """
    backend = backend or os.environ.get("STDBP_KERNEL") or None
    if backend is None:
        if device.type == "cpu":
            return "numba"
        return "triton" if kind == "linear" and device.type == "cuda" and _triton_available() else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"the numba kernel runs on the CPU only, not on {device}; use backend='reference'")
    if backend == "triton":
        if kind != "linear":
            return "reference"
        if not _triton_available():
            raise ValueError("backend='triton' needs the triton package: pip install triton")
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("the triton kernel runs on CUDA devices (or on the CPU through Triton's interpreter, TRITON_INTERPRET=1)")
    return backend


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every entry of every tensor is finite: a cheap float32 sum each, and the float64
    sum (which finite float32 values cannot overflow) only to confirm a non-finite one."""
    return all(bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t.sum(dtype=torch.float64))) for t in tensors)


class _SaturateGradient(torch.autograd.Function):
    """Identity forward; in the backward pass, a gradient that overflowed its dtype saturates.

    Exact STDBP gradients can exceed the floating-point range when a neuron fires with a causal
    weight sum near zero (eq. 14 divides by it). Such entries become the dtype's largest finite
    value with their sign, and an undefined one (``inf - inf``) becomes 0, so that no NaN or inf
    ever reaches a gradient. The reference kernels are wrapped in it, the Triton kernel calls
    :func:`saturate` on its gradients; the numba kernels saturate theirs in place
    (``numba_cpu.saturate_``).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return saturate(grad)


def saturate(grad: Tensor) -> Tensor:
    """``grad`` with entries beyond the dtype's range at its largest finite value (with their
    sign) and NaN at 0; ``grad`` itself when every entry is finite (see ``_SaturateGradient``)."""
    if all_finite([grad]):
        return grad
    big = torch.finfo(grad.dtype).max
    return torch.nan_to_num(grad, nan=0.0, posinf=big, neginf=-big)


def _saturating(x: Tensor) -> Tensor:
    return _SaturateGradient.apply(x) if x.requires_grad else x


def _check_times(t_in: Tensor) -> None:
    """``stdbp.functional.check_spike_times``, for the kernels that do not count bad times themselves."""
    from ..functional import check_spike_times

    check_spike_times(t_in)


def relpsp_linear_kernel(t_in: Tensor, weight: Tensor, threshold: float, backend: str | None = None) -> Tensor:
    """Dispatch ``relpsp_linear`` to a kernel. Shapes, dtypes and the threshold are assumed valid
    (see ``stdbp.functional``); the input times are checked here (by the numba kernel as it reads them)."""
    name = resolve_backend(t_in.device, backend)
    if name != "numba":
        _check_times(t_in)
    if name == "reference":
        return relpsp_linear_reference(_saturating(t_in), _saturating(weight), threshold)
    if name == "triton":
        from .triton_linear import RelpspLinearTriton

        return RelpspLinearTriton.apply(t_in, weight, threshold)
    return RelpspLinearNumba.apply(t_in, weight, threshold)


def relpsp_linear_stack_kernel(t_in: Tensor, weights: Sequence[Tensor], thresholds: Sequence[float], backend: str | None = None) -> Tensor:
    """Dispatch a stack of fully connected layers: one fused kernel call per pass with numba,
    layer by layer otherwise. Shapes, dtypes and thresholds are assumed valid (see
    ``stdbp.functional``); the input times are checked here (by the numba kernel as it reads
    them, otherwise by the first layer's dispatch).
    """
    if resolve_backend(t_in.device, backend) == "numba":
        return RelpspStackNumba.apply(t_in, tuple(float(th) for th in thresholds), *weights)
    for weight, threshold in zip(weights, thresholds):
        t_in = relpsp_linear_kernel(t_in, weight, threshold, backend)
    return t_in


def relpsp_conv2d_kernel(
    t_in: Tensor,
    weight: Tensor,
    threshold: float,
    stride: tuple[int, int],
    padding: tuple[int, int],
    backend: str | None = None,
) -> Tensor:
    """Dispatch ``relpsp_conv2d`` to a kernel; as :func:`relpsp_linear_kernel`, the input times are checked here."""
    name = resolve_backend(t_in.device, backend, kind="conv")
    if name == "reference":
        _check_times(t_in)
        return relpsp_conv2d_reference(_saturating(t_in), _saturating(weight), threshold, stride, padding)
    return RelpspConv2dNumba.apply(t_in, weight, threshold, stride, padding, NO_POOL)


def relpsp_conv2d_pool_kernel(
    t_in: Tensor,
    weight: Tensor,
    threshold: float,
    stride: tuple[int, int],
    padding: tuple[int, int],
    pool_kernel: tuple[int, int],
    pool_stride: tuple[int, int],
    backend: str | None = None,
) -> Tensor:
    """Dispatch a convolution followed by earliest-spike pooling: one kernel call per pass with
    numba (each sample's output pooled while it is in cache), the two kernels otherwise. The
    input times are checked here, as for :func:`relpsp_conv2d_kernel`."""
    if resolve_backend(t_in.device, backend, kind="conv") == "numba" and resolve_backend(t_in.device, backend, kind="pool") == "numba":
        return RelpspConv2dNumba.apply(t_in, weight, threshold, stride, padding, (*pool_kernel, *pool_stride))
    t_out = relpsp_conv2d_kernel(t_in, weight, threshold, stride, padding, backend)
    return earliest_spike_pool2d_kernel(t_out, pool_kernel, pool_stride, backend)


def earliest_spike_pool2d_reference(t_in: Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Earliest-spike pooling in PyTorch, ``-max_pool2d(-t_in)``; windows without spikes pass no gradient."""
    t_out = -torch.nn.functional.max_pool2d(-t_in, kernel, stride)
    return torch.where(torch.isinf(t_out), t_out.detach(), t_out)


def earliest_spike_pool2d_kernel(t_in: Tensor, kernel: tuple[int, int], stride: tuple[int, int], backend: str | None = None) -> Tensor:
    """Dispatch earliest-spike pooling; the input times are checked here (by the numba kernel as it reads them)."""
    if resolve_backend(t_in.device, backend, kind="pool") == "reference":
        _check_times(t_in)
        return earliest_spike_pool2d_reference(t_in, kernel, stride)
    return EarliestSpikePoolNumba.apply(t_in, kernel, stride)
