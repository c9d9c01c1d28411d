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
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..validation import check_spike_times
from .alpha_psp import AlphaPspLinear
from .conv_reference import conv_output_size, relpsp_conv2d_reference
from .numba_autograd import BACKWARD_METHODS, RelpspLinearNumba, RelpspStackNumba, sort_keys
from .numba_autograd_conv import NO_POOL, EarliestSpikePoolNumba, RelpspConv2dNumba
from .numba_loss import cross_entropy_and_gradient
from .reference import SILENT_HORIZON, relpsp_linear_reference
from .saturation import all_finite, saturate, saturating

BACKENDS = ("reference", "numba", "triton")

__all__ = [
    "BACKENDS",
    "BACKWARD_METHODS",
    "NO_POOL",
    "EarliestSpikePoolNumba",
    "RelpspConv2dNumba",
    "RelpspLinearNumba",
    "RelpspStackNumba",
    "alpha_psp_linear_kernel",
    "cross_entropy_and_gradient",
    "numba_cache_ready",
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
            raise ValueError(
                "the triton kernel runs on CUDA devices (or on the CPU through Triton's interpreter, TRITON_INTERPRET=1)"
            )
    return backend


def relpsp_linear_kernel(
    t_in: Tensor, weight: Tensor, threshold: float, backend: str | None = None, backward: str = "auto"
) -> Tensor:
    """Dispatch ``relpsp_linear`` to a kernel. Shapes, dtypes and the threshold are assumed valid
    (see ``stdbp.functional``); the input times are checked here (by the numba kernel as it reads them).
    ``backward``: how the numba kernel sums eq. 14, one of :data:`BACKWARD_METHODS` (other backends ignore it)."""
    name = resolve_backend(t_in.device, backend)
    if name != "numba":
        check_spike_times(t_in)
    if name == "reference":
        return relpsp_linear_reference(saturating(t_in), saturating(weight), threshold)
    if name == "triton":
        from .triton_linear import RelpspLinearTriton

        return RelpspLinearTriton.apply(t_in, weight, threshold)
    return RelpspLinearNumba.apply(t_in, weight, threshold, backward)


def relpsp_linear_stack_kernel(
    t_in: Tensor,
    weights: Sequence[Tensor],
    thresholds: Sequence[float],
    backend: str | None = None,
    backward: str = "auto",
) -> Tensor:
    """Dispatch a stack of fully connected layers: one fused kernel call per pass with numba,
    layer by layer otherwise. Shapes, dtypes and thresholds are assumed valid (see
    ``stdbp.functional``); the input times are checked here (by the numba kernel as it reads
    them, otherwise by the first layer's dispatch). ``backward``: how the numba kernel sums
    eqs. 14-15, one of :data:`BACKWARD_METHODS` (other backends ignore it).
    """
    if resolve_backend(t_in.device, backend) == "numba":
        return RelpspStackNumba.apply(t_in, tuple(float(th) for th in thresholds), backward, *weights)
    for weight, threshold in zip(weights, thresholds):
        t_in = relpsp_linear_kernel(t_in, weight, threshold, backend, backward)
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
        check_spike_times(t_in)
        return relpsp_conv2d_reference(saturating(t_in), saturating(weight), threshold, stride, padding)
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
    if (
        resolve_backend(t_in.device, backend, kind="conv") == "numba"
        and resolve_backend(t_in.device, backend, kind="pool") == "numba"
    ):
        return RelpspConv2dNumba.apply(t_in, weight, threshold, stride, padding, (*pool_kernel, *pool_stride))
    t_out = relpsp_conv2d_kernel(t_in, weight, threshold, stride, padding, backend)
    return earliest_spike_pool2d_kernel(t_out, pool_kernel, pool_stride, backend)


def earliest_spike_pool2d_reference(t_in: Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Earliest-spike pooling in PyTorch, ``-max_pool2d(-t_in)``; windows without spikes pass no gradient."""
    t_out = -torch.nn.functional.max_pool2d(-t_in, kernel, stride)
    return torch.where(torch.isinf(t_out), t_out.detach(), t_out)


def earliest_spike_pool2d_kernel(
    t_in: Tensor, kernel: tuple[int, int], stride: tuple[int, int], backend: str | None = None
) -> Tensor:
    """Dispatch earliest-spike pooling; the input times are checked here (by the numba kernel as it reads them)."""
    if resolve_backend(t_in.device, backend, kind="pool") == "reference":
        check_spike_times(t_in)
        return earliest_spike_pool2d_reference(t_in, kernel, stride)
    return EarliestSpikePoolNumba.apply(t_in, kernel, stride)


def alpha_psp_linear_kernel(t_in: Tensor, weight: Tensor, threshold: float, tau: float) -> Tensor:
    """Dispatch ``stdbp.alpha_psp.alpha_psp_linear`` to its numba kernel (CPU, float64 inside);
    arguments are assumed valid."""
    return AlphaPspLinear.apply(t_in, weight, threshold, tau)


#: The modules whose numba kernels a training step compiles on first use.
_STEP_MODULES = ("numba_linear", "numba_linear_backward", "numba_stack", "numba_conv", "numba_pool", "numba_loss")


def numba_cache_ready() -> bool:
    """Whether numba's on-disk cache beside the kernels (``__pycache__``) holds compiled code of
    every module a training step uses; where it does not, the first step compiles them (tens of
    seconds). A cache kept elsewhere (``NUMBA_CACHE_DIR``, a read-only install) reads as not ready."""
    cache = Path(__file__).parent / "__pycache__"
    compiled = {entry.name.split(".")[0] for entry in cache.glob("*.nbi")} if cache.is_dir() else set()
    return all(name in compiled for name in _STEP_MODULES)
