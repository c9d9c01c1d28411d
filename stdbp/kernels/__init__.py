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
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from .conv_reference import conv_output_size, relpsp_conv2d_reference
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
    "relpsp_conv2d_kernel",
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


def sort_keys(t: np.ndarray) -> np.ndarray:
    """Integer sort keys of non-negative times: the bit patterns of ``|t|`` (so -0.0 sorts as 0.0)."""
    return np.abs(t).view(np.int32 if t.dtype == np.float32 else np.int64)


class _RelpspLinearNumba(torch.autograd.Function):
    """Autograd wrapper of the numba scan: forward eq. 12, backward eqs. 14-15."""

    @staticmethod
    def forward(ctx, t_in: Tensor, weight: Tensor, threshold: float) -> Tensor:  # type: ignore[override]
        import numba

        from . import numba_cpu

        t_np = t_in.detach().contiguous().numpy()
        w_t = np.ascontiguousarray(weight.detach().numpy().T)
        batch, n_in = t_np.shape
        n_out = w_t.shape[1]
        t_out = np.empty((batch, n_out), dtype=t_np.dtype)
        anchor = np.empty_like(t_out)
        inv_slope = np.empty_like(t_out)
        n_causal = np.empty((batch, n_out), dtype=t_np.dtype)
        order = np.empty((batch, n_in), dtype=np.int32)
        times = np.empty((batch, n_in), dtype=t_np.dtype)
        n_spikes = np.empty(batch, dtype=np.int32)
        thr = t_np.dtype.type(threshold)
        _, n_chunks = numba_cpu.scan_tasks(n_out, numba.get_num_threads())
        numba_cpu.relpsp_linear_forward(t_np, sort_keys(t_np), w_t, thr, t_out, anchor, inv_slope, n_causal, order, times, n_spikes, n_chunks)
        ctx.scan = (times, w_t, anchor, inv_slope, n_causal, order, n_spikes)
        return torch.from_numpy(t_out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        import numba

        from . import numba_cpu

        times, w_t, anchor, inv_slope, n_causal, order, n_spikes = ctx.scan
        with np.errstate(invalid="ignore", over="ignore"):  # extreme slopes: saturated below
            grad_scaled = grad_out.detach().contiguous().numpy() * inv_slope
        grad_t = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w_t = np.empty_like(w_t)
            numba_cpu.relpsp_linear_backward_weight(times, grad_scaled, anchor, n_causal, order, n_spikes, numba.get_num_threads(), grad_w_t)
            # each entry sums batch terms a * (t_i - t_j), |t_i - t_j| <= max |anchor|: saturate only if that may overflow
            top_a, top_t = np.abs(grad_scaled).max(initial=0.0), anchor.max(initial=0.0)  # NaN if any is NaN
            if not float(top_a) * float(top_t) * len(anchor) < 0.5 * float(np.finfo(w_t.dtype).max):
                numba_cpu.saturate_(grad_w_t.reshape(-1))
            grad_w = torch.from_numpy(grad_w_t).t()
        if ctx.needs_input_grad[0]:
            grad_t_np = np.zeros(times.shape, dtype=times.dtype)
            numba_cpu.relpsp_linear_backward_input(w_t, grad_scaled, n_causal, order, n_spikes, grad_t_np)
            numba_cpu.saturate_(grad_t_np.reshape(-1))
            grad_t = torch.from_numpy(grad_t_np)
        return grad_t, grad_w, None


def relpsp_linear_kernel(t_in: Tensor, weight: Tensor, threshold: float, backend: str | None = None) -> Tensor:
    """Dispatch ``relpsp_linear`` to a kernel; inputs are assumed valid (see ``stdbp.functional``)."""
    name = resolve_backend(t_in.device, backend)
    if name == "reference":
        return relpsp_linear_reference(_saturating(t_in), _saturating(weight), threshold)
    if name == "triton":
        from .triton_linear import RelpspLinearTriton

        return RelpspLinearTriton.apply(t_in, weight, threshold)
    return _RelpspLinearNumba.apply(t_in, weight, threshold)


@functools.lru_cache(maxsize=64)
def _reach_table(geometry: tuple[int, ...], c_out: int) -> np.ndarray:
    """Where each input of a convolution lands (``numba_conv.reach_table``), once per geometry."""
    from . import numba_conv

    table = numba_conv.reach_table(geometry, c_out)
    table.flags.writeable = False
    return table


class _RelpspConv2dNumba(torch.autograd.Function):
    """Autograd wrapper of the numba convolutional scan (``numba_conv``): forward eq. 12, backward eqs. 14-15."""

    @staticmethod
    def forward(ctx, t_in: Tensor, weight: Tensor, threshold: float, stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:  # type: ignore[override]
        from . import numba_conv

        batch, c_in, h_in, w_in = t_in.shape
        c_out, _, k_h, k_w = weight.shape
        h_out = conv_output_size(h_in, k_h, stride[0], padding[0])
        w_out = conv_output_size(w_in, k_w, stride[1], padding[1])
        t_flat = t_in.detach().reshape(batch, c_in * h_in * w_in).contiguous().numpy()  # (B, C_in*H*W)
        # (C_in*kH, kW*C_pad) with kx flipped: the layout of numba_conv.relpsp_conv2d_forward, the
        # output channels padded with zero weights to whole vectors of 8 (runs without a scalar tail)
        c_pad = -(-c_out // 8) * 8
        weight_p = torch.nn.functional.pad(weight.detach(), (0, 0, 0, 0, 0, 0, 0, c_pad - c_out))
        weight_f = np.ascontiguousarray(weight_p.flip(3).permute(1, 2, 3, 0).reshape(c_in * k_h, k_w * c_pad).numpy())
        dtype = t_flat.dtype
        t_out = np.empty((batch, c_out * h_out * w_out), dtype=dtype)  # (C_out, H_out, W_out) order
        anchor = np.empty((batch, h_out * w_out * c_pad), dtype=dtype)  # the neuron state: (H_out, W_out, C_pad)
        inv_slope = np.empty_like(anchor)
        n_causal = np.empty_like(anchor)
        order = np.empty(t_flat.shape, dtype=np.int32)
        times = np.empty_like(t_flat)
        n_spikes = np.empty(batch, dtype=np.int32)
        geometry = (c_in, h_in, w_in, k_h, k_w, *stride, *padding, h_out, w_out)
        reach = _reach_table(geometry, c_pad)
        numba_conv.relpsp_conv2d_forward(t_flat, sort_keys(t_flat), weight_f, dtype.type(threshold), geometry, reach, t_out, anchor, inv_slope, n_causal, order, times, n_spikes)
        ctx.scan = (weight_f, anchor, inv_slope, n_causal, order, times, n_spikes)
        ctx.geometry, ctx.c_out = geometry, c_out
        return torch.from_numpy(t_out).view(batch, c_out, h_out, w_out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        from . import numba_conv, numba_cpu

        weight_f, anchor, inv_slope, n_causal, order, times, n_spikes = ctx.scan
        geometry = ctx.geometry
        c_in, h_in, w_in, k_h, k_w = geometry[:5]
        batch = anchor.shape[0]
        c_out, c_pad = ctx.c_out, weight_f.shape[1] // k_w
        grad_nchw = grad_out.detach().contiguous().reshape(batch, -1).numpy()  # (B, C_out*H_out*W_out)
        grad_in = np.zeros(times.shape, dtype=times.dtype)
        grad_w_partial = np.empty((batch, *weight_f.shape), dtype=times.dtype)
        numba_conv.relpsp_conv2d_backward(
            weight_f, grad_nchw, inv_slope, anchor, n_causal, order, times, n_spikes, geometry, _reach_table(geometry, c_pad),
            ctx.needs_input_grad[0], grad_in, grad_w_partial,
        )
        grad_t = grad_w = None
        if ctx.needs_input_grad[0]:
            numba_cpu.saturate_(grad_in.reshape(-1))
            grad_t = torch.from_numpy(grad_in).reshape(batch, c_in, h_in, w_in)
        if ctx.needs_input_grad[1]:
            grad_w_f = grad_w_partial.sum(axis=0)  # numpy's fixed summation order: reproducible for any thread count
            numba_cpu.saturate_(grad_w_f.reshape(-1))
            grad_w = torch.from_numpy(grad_w_f).reshape(c_in, k_h, k_w, c_pad)[..., :c_out]
            grad_w = grad_w.permute(3, 0, 1, 2).flip(3).contiguous()  # (C_out, C_in, kH, kW)
        return grad_t, grad_w, None, None, None


def relpsp_conv2d_kernel(
    t_in: Tensor,
    weight: Tensor,
    threshold: float,
    stride: tuple[int, int],
    padding: tuple[int, int],
    backend: str | None = None,
) -> Tensor:
    """Dispatch ``relpsp_conv2d`` to a kernel; inputs are assumed valid (see ``stdbp.functional``)."""
    name = resolve_backend(t_in.device, backend, kind="conv")
    if name == "reference":
        return relpsp_conv2d_reference(_saturating(t_in), _saturating(weight), threshold, stride, padding)
    return _RelpspConv2dNumba.apply(t_in, weight, threshold, stride, padding)


def earliest_spike_pool2d_reference(t_in: Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Earliest-spike pooling in PyTorch, ``-max_pool2d(-t_in)``; windows without spikes pass no gradient."""
    t_out = -torch.nn.functional.max_pool2d(-t_in, kernel, stride)
    return torch.where(torch.isinf(t_out), t_out.detach(), t_out)


class _EarliestSpikePoolNumba(torch.autograd.Function):
    """Autograd wrapper of ``numba_pool``: the earliest spike of each window, its gradient back to it."""

    @staticmethod
    def forward(ctx, t_in: Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> Tensor:  # type: ignore[override]
        from . import numba_pool

        batch, channels, height, width = t_in.shape
        h_out = (height - kernel[0]) // stride[0] + 1
        w_out = (width - kernel[1]) // stride[1] + 1
        planes = t_in.detach().contiguous().numpy().reshape(batch * channels, height, width)
        t_out = np.empty((batch * channels, h_out, w_out), dtype=planes.dtype)
        argmin = np.empty((batch * channels, h_out, w_out), dtype=np.int32)
        numba_pool.pool_forward(planes, *kernel, *stride, t_out, argmin)
        ctx.argmin, ctx.in_shape = argmin, t_in.shape
        return torch.from_numpy(t_out).view(batch, channels, h_out, w_out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        from . import numba_pool

        batch, channels, height, width = ctx.in_shape
        grad = grad_out.detach().contiguous().numpy().reshape(ctx.argmin.shape)
        grad_in = np.zeros((batch * channels, height * width), dtype=grad.dtype)
        numba_pool.pool_backward(grad, ctx.argmin, grad_in)
        return torch.from_numpy(grad_in).view(ctx.in_shape), None, None


def earliest_spike_pool2d_kernel(t_in: Tensor, kernel: tuple[int, int], stride: tuple[int, int], backend: str | None = None) -> Tensor:
    """Dispatch earliest-spike pooling; inputs are assumed valid (see ``stdbp.functional``)."""
    if resolve_backend(t_in.device, backend, kind="pool") == "reference":
        return earliest_spike_pool2d_reference(t_in, kernel, stride)
    return _EarliestSpikePoolNumba.apply(t_in, kernel, stride)
