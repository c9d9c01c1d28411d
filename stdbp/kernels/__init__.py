"""The one dispatch point for ReL-PSP kernels.

``backend`` is ``"reference"`` (PyTorch, any device), ``"numba"`` (fast CPU scan) or ``None``
(the default for the tensor's device: numba on CPU, reference elsewhere). The environment
variable ``STDBP_KERNEL`` overrides the default for the whole process.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from .reference import SILENT_HORIZON, relpsp_linear_reference

BACKENDS = ("reference", "numba")

__all__ = ["BACKENDS", "SILENT_HORIZON", "relpsp_linear_reference", "resolve_backend", "relpsp_linear_kernel"]


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """The backend to use for tensors on ``device``."""
    backend = backend or os.environ.get("STDBP_KERNEL") or None
    if backend is None:
        return "numba" if device.type == "cpu" else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"the numba kernel runs on the CPU only, not on {device}; use backend='reference'")
    return backend


class _RelpspLinearNumba(torch.autograd.Function):
    """Autograd wrapper of the numba scan: forward eq. 12, backward eqs. 14-15."""

    @staticmethod
    def forward(ctx, t_in: Tensor, weight: Tensor, threshold: float) -> Tensor:  # type: ignore[override]
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
        numba_cpu.relpsp_linear_forward(t_np, w_t, thr, t_out, anchor, inv_slope, n_causal, order, times, n_spikes)
        ctx.scan = (times, w_t, anchor, inv_slope, n_causal, order, n_spikes)
        return torch.from_numpy(t_out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        import numba

        from . import numba_cpu

        times, w_t, anchor, inv_slope, n_causal, order, n_spikes = ctx.scan
        grad_scaled = np.ascontiguousarray(grad_out.detach().numpy() * inv_slope)
        grad_t = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w_t = np.zeros_like(w_t)
            n_blocks = max(1, min(numba.get_num_threads(), w_t.shape[1] // 16))
            numba_cpu.relpsp_linear_backward_weight(times, grad_scaled, anchor, n_causal, order, n_blocks, grad_w_t)
            grad_w = torch.from_numpy(grad_w_t).t()
        if ctx.needs_input_grad[0]:
            grad_t_np = np.zeros(times.shape, dtype=times.dtype)
            numba_cpu.relpsp_linear_backward_input(w_t, grad_scaled, n_causal, order, n_spikes, grad_t_np)
            grad_t = torch.from_numpy(grad_t_np)
        return grad_t, grad_w, None


def relpsp_linear_kernel(t_in: Tensor, weight: Tensor, threshold: float, backend: str | None = None) -> Tensor:
    """Dispatch ``relpsp_linear`` to a kernel; inputs are assumed valid (see ``stdbp.functional``)."""
    name = resolve_backend(t_in.device, backend)
    if name == "reference":
        return relpsp_linear_reference(t_in, weight, threshold)
    return _RelpspLinearNumba.apply(t_in, weight, threshold)
