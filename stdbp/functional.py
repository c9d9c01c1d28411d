r"""Pure functions on spike-time tensors: the ReL-PSP neuron, the loss and the decision.

Spike times are floating-point tensors of shape ``(batch, neurons)``, in the units of the input
encoding (``t_max = 1`` by default), with ``+inf`` for a neuron that never fires.

The ReL-PSP neuron (eqs. 8-9) has the membrane potential
:math:`V_j(t) = \sum_i w_{ij} \max(0, t - t_i)` and fires once, at the first :math:`t` with
:math:`V_j(t) = \vartheta`. With the causal set :math:`C = \{i : t_i < t_j\}`,

.. math:: t_j = \frac{\vartheta + \sum_{i \in C} w_{ij} t_i}{\sum_{i \in C} w_{ij}}  \quad (12)

and the exact gradients (eqs. 14-15) are :math:`\partial t_j / \partial w_{ij} = (t_i - t_j) / \sum_C w`
and :math:`\partial t_j / \partial t_i = w_{ij} / \sum_C w` for :math:`i \in C`, zero otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels import (
    conv_output_size,
    earliest_spike_pool2d_kernel,
    relpsp_conv2d_kernel,
    relpsp_conv2d_pool_kernel,
    relpsp_linear_kernel,
    relpsp_linear_stack_kernel,
)
from .validation import check_spike_times, pair, pool_pairs

__all__ = [
    "relpsp_linear",
    "relpsp_linear_stack",
    "relpsp_conv2d",
    "earliest_spike_pool2d",
    "relpsp_conv2d_pool",
    "first_spike_cross_entropy",
    "first_spike_decision",
    "check_spike_times",
]


def _check_dtypes_threshold(t_in: Tensor, weight: Tensor, threshold: float) -> None:
    """The checks that every ReL-PSP layer function makes after its shape checks. The input
    times are checked by the kernel dispatch (``stdbp.kernels``), by the numba kernels as they
    read them."""
    if t_in.dtype not in (torch.float32, torch.float64) or weight.dtype != t_in.dtype:
        raise ValueError(f"t_in and weight must both be float32 or both float64, got {t_in.dtype} and {weight.dtype}")
    if not (threshold > 0 and threshold < float("inf")):
        raise ValueError(f"threshold must be a positive finite number, got {threshold}")


def relpsp_linear(
    t_in: Tensor, weight: Tensor, threshold: float = 1.0, backend: str | None = None, backward: str = "auto"
) -> Tensor:
    """First-spike times of a layer of ReL-PSP neurons (eq. 12), differentiable by eqs. 14-15.

    Args:
        t_in: ``(B, N_in)`` input spike times, ``+inf`` for no spike. float32 or float64.
        weight: ``(N_out, N_in)`` synaptic weights, as in :func:`torch.nn.functional.linear`.
        threshold: firing threshold :math:`\\vartheta > 0`.
        backend: kernel to use (``"numba"``, ``"reference"``); default by device.
        backward: how the numba kernel sums eq. 14 (``stdbp.kernels.BACKWARD_METHODS``):
            ``"auto"`` picks the cheapest; the others exist to test and time each sum.

    Returns:
        ``(B, N_out)`` output spike times, ``+inf`` where a neuron never reaches threshold.

    Inputs are added in time order and inputs with equal times enter together. Gradients are
    always finite. A silent output neuron that receives a gradient (from the loss) passes it on
    through a surrogate, so that it can learn to fire: see ``stdbp.kernels.SILENT_HORIZON``.
    """
    if t_in.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"relpsp_linear expects t_in (batch, in_features) and weight (out_features, in_features), "
            f"got shapes {tuple(t_in.shape)} and {tuple(weight.shape)}"
        )
    if t_in.shape[1] != weight.shape[1]:
        raise ValueError(
            f"shape mismatch: t_in has {t_in.shape[1]} input neurons but weight expects {weight.shape[1]} "
            f"(weight is (out_features, in_features) = {tuple(weight.shape)})"
        )
    _check_dtypes_threshold(t_in, weight, threshold)
    return relpsp_linear_kernel(t_in, weight, float(threshold), backend, backward)  # checks the times


def relpsp_linear_stack(
    t_in: Tensor,
    weights: Sequence[Tensor],
    thresholds: float | Sequence[float] = 1.0,
    backend: str | None = None,
    backward: str = "auto",
) -> Tensor:
    """Fully connected ReL-PSP layers one after another: ``relpsp_linear`` applied for each weight.

    Args:
        t_in: ``(B, N_0)`` input spike times, ``+inf`` for no spike. float32 or float64.
        weights: ``L`` weight matrices, ``weights[l]`` ``(N_{l+1}, N_l)``.
        thresholds: one threshold for every layer, or one per layer.
        backend, backward: as for :func:`relpsp_linear` (``backward`` also for eq. 15).

    Returns:
        ``(B, N_L)`` spike times of the last layer.

    The same spike times as the loop over :func:`relpsp_linear`, bit for bit. With the numba
    backend the whole stack runs in one kernel call forward, each sample going through every
    layer while its spike times are in cache; backward, a layer whose inputs nearly all spike
    and are causal (as in a freshly initialised network) sums eqs. 14-15 as matrix products
    less the few non-causal pairs, which agrees with the loop's sums to float rounding (about
    1e-5 of the largest gradient in float32); other layers give the loop's gradients bit for bit.
    """
    weights = list(weights)
    if not weights:
        raise ValueError("relpsp_linear_stack needs at least one weight matrix")
    thresholds = (
        [float(thresholds)] * len(weights) if isinstance(thresholds, (int, float)) else [float(th) for th in thresholds]
    )
    if len(thresholds) != len(weights):
        raise ValueError(f"got {len(thresholds)} thresholds for {len(weights)} layers")
    if t_in.dim() != 2 or any(w.dim() != 2 for w in weights):
        raise ValueError(
            f"relpsp_linear_stack expects t_in (batch, in_features) and weights (out_features, in_features), "
            f"got shapes {tuple(t_in.shape)} and {[tuple(w.shape) for w in weights]}"
        )
    features = t_in.shape[1]
    for index, weight in enumerate(weights):
        if weight.shape[1] != features:
            raise ValueError(
                f"shape mismatch: weights[{index}] {tuple(weight.shape)} expects {weight.shape[1]} inputs, the layer below gives {features}"
            )
        if weight.dtype != t_in.dtype:
            raise ValueError(
                f"t_in and weights must have one dtype, got {t_in.dtype} and {weight.dtype} (weights[{index}])"
            )
        if not (thresholds[index] > 0 and thresholds[index] < float("inf")):
            raise ValueError(f"threshold must be a positive finite number, got {thresholds[index]} (layer {index})")
        features = weight.shape[0]
    if t_in.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"t_in and weights must be float32 or float64, got {t_in.dtype}")
    return relpsp_linear_stack_kernel(t_in, weights, thresholds, backend, backward)  # checks the times


def _conv_args(
    t_in: Tensor, weight: Tensor, threshold: float, stride: int | tuple[int, int], padding: int | tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Check the arguments of :func:`relpsp_conv2d`; return stride and padding as ``(H, W)`` pairs."""
    if t_in.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"relpsp_conv2d expects t_in (batch, channels, height, width) and weight "
            f"(out_channels, in_channels, kH, kW), got shapes {tuple(t_in.shape)} and {tuple(weight.shape)}"
        )
    if t_in.shape[1] != weight.shape[1]:
        raise ValueError(
            f"shape mismatch: t_in has {t_in.shape[1]} channels but weight expects {weight.shape[1]} "
            f"(weight is (out_channels, in_channels, kH, kW) = {tuple(weight.shape)})"
        )
    _check_dtypes_threshold(t_in, weight, threshold)
    stride_hw = pair(stride, "stride", 1)
    padding_hw = pair(padding, "padding", 0)
    for axis, size, kernel, pad in zip(("height", "width"), t_in.shape[2:], weight.shape[2:], padding_hw):
        if kernel < 1 or size + 2 * pad < kernel:
            raise ValueError(f"kernel {kernel} does not fit the input {axis} {size} with padding {pad}")
    return stride_hw, padding_hw


def _pool_args(
    shape: Sequence[int], kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Check a pooling window against a ``(B, C, H, W)`` input ``shape``; return window and stride as pairs."""
    kernel_hw, stride_hw = pool_pairs(kernel_size, stride)
    for axis, size, kernel in zip(("height", "width"), shape[2:], kernel_hw):
        if size < kernel:
            raise ValueError(f"pooling window {kernel} does not fit the input {axis} {size}")
    return kernel_hw, stride_hw


def relpsp_conv2d(
    t_in: Tensor,
    weight: Tensor,
    threshold: float = 1.0,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    backend: str | None = None,
) -> Tensor:
    """First-spike times of a convolutional layer of ReL-PSP neurons (eq. 12), differentiable by eqs. 14-15.

    Each output position ``(c_out, y, x)`` is a ReL-PSP neuron whose inputs are its receptive
    field ``t_in[:, :, y*sH - pH : y*sH - pH + kH, x*sW - pW : x*sW - pW + kW]`` with the weights
    ``weight[c_out]``, exactly as :func:`torch.nn.functional.conv2d` places them (no bias, no
    dilation, no groups). Padding positions never spike.

    Args:
        t_in: ``(B, C_in, H, W)`` input spike times, ``+inf`` for no spike. float32 or float64.
        weight: ``(C_out, C_in, kH, kW)`` synaptic weights, same dtype as ``t_in``.
        threshold: firing threshold :math:`\\vartheta > 0`.
        stride: step between receptive fields, in input pixels: an int or ``(sH, sW)``.
        padding: silent rows/columns added on each side: an int or ``(pH, pW)``.
        backend: kernel to use (``"numba"``, ``"reference"``); default by device.

    Returns:
        ``(B, C_out, H_out, W_out)`` output spike times, ``H_out = (H + 2 pH - kH) // sH + 1``
        (likewise ``W_out``), ``+inf`` where a neuron never reaches threshold.

    Gradients are always finite. A silent neuron that receives a gradient passes it on through
    the surrogate of :func:`relpsp_linear`, with ``t_ref`` the latest input spike *of its
    receptive field* plus ``stdbp.kernels.SILENT_HORIZON``.
    """
    stride_hw, padding_hw = _conv_args(t_in, weight, threshold, stride, padding)
    return relpsp_conv2d_kernel(t_in, weight, float(threshold), stride_hw, padding_hw, backend)


def earliest_spike_pool2d(
    t_in: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    backend: str | None = None,
) -> Tensor:
    """Earliest-spike pooling: the first spike time in each window, ``-max_pool2d(-t_in)``.

    Args:
        t_in: ``(B, C, H, W)`` spike times, ``+inf`` for no spike.
        kernel_size: window size, an int or ``(kH, kW)``.
        stride: step between windows; default ``kernel_size``. Windows that do not fit are
            dropped, as in :func:`torch.nn.functional.max_pool2d` (no ceil mode, no padding).
        backend: ``"numba"`` (one pass, CPU) or ``"reference"`` (``max_pool2d``); default by device.

    Returns:
        ``(B, C, H_out, W_out)`` spike times, ``+inf`` for a window without spikes.

    The gradient goes to the earliest input of each window (one of them, on ties, as
    ``max_pool2d`` chooses); a window without spikes passes no gradient.
    """
    if t_in.dim() != 4:
        raise ValueError(
            f"earliest_spike_pool2d expects t_in (batch, channels, height, width), got shape {tuple(t_in.shape)}"
        )
    kernel_hw, stride_hw = _pool_args(t_in.shape, kernel_size, stride)
    if not t_in.is_floating_point():
        raise ValueError(f"t_in must be a floating-point tensor of spike times, got {t_in.dtype}")
    return earliest_spike_pool2d_kernel(t_in, kernel_hw, stride_hw, backend)  # checks the times


class _FillSilent(torch.autograd.Function):
    """``+inf`` entries replaced by ``fill`` in the forward pass; the gradient passes to every entry.

    Passing the gradient of a silent output to it (rather than to the constant) is what lets the
    kernel's silent-neuron surrogate push a silent target neuron to fire.
    """

    @staticmethod
    def forward(ctx, t_out: Tensor, fill: Tensor) -> Tensor:
        return torch.where(torch.isinf(t_out), fill, t_out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def _finite_output_times(t_out: Tensor, silent_time: float | None, tau: float) -> Tensor:
    """Replace ``+inf`` (silent) output times by a finite time."""
    silent = torch.isinf(t_out)
    if not bool(silent.any()):
        return t_out
    if silent_time is None:
        finite = t_out.detach()[~silent]
        latest = finite.max() if finite.numel() else t_out.new_zeros(())
        fill = latest + 5.0 * tau
    else:
        fill = t_out.new_tensor(float(silent_time))
    return _FillSilent.apply(t_out, fill.to(t_out.dtype).detach())


def first_spike_cross_entropy(
    t_out: Tensor,
    labels: Tensor,
    tau: float = 1.0,
    silent_time: float | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Cross-entropy of :math:`\mathrm{softmax}(-t_{out} / \tau)` against ``labels`` (eq. 13 for ``tau = 1``).

    Args:
        t_out: ``(B, C)`` output spike times, ``+inf`` for silent neurons.
        labels: ``(B,)`` target class indices.
        tau: time scale of the softmax, in time units. Eq. 13 is ``tau = 1``; with the default
            1-unit encoding window, ``tau = 0.05`` trains far better (``tau = 1`` lets the output
            layer fall silent), which is what ``stdbp train`` uses.
        silent_time: the time a silent output neuron counts as in the softmax. ``None`` (default):
            the latest finite output spike of the batch plus ``5 * tau``, so a silent non-target
            neuron costs almost nothing, while a silent target gets the full push
            :math:`\partial L / \partial t_g \approx -1/\tau` towards firing, which the kernel's
            silent-neuron surrogate turns into larger weights from its spiking inputs.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``, as in :func:`torch.nn.functional.cross_entropy`.

    Returns:
        The loss, always finite.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if t_out.dim() != 2 or labels.shape != t_out.shape[:1]:
        raise ValueError(
            f"expected t_out (batch, classes) and labels (batch,), got {tuple(t_out.shape)} and {tuple(labels.shape)}"
        )
    logits = -_finite_output_times(t_out, silent_time, tau) / tau
    return F.cross_entropy(logits, labels, reduction=reduction)


def first_spike_decision(t_out: Tensor) -> Tensor:
    """The class whose output neuron fires first, ``(B,)`` int64.

    Ties go to the lowest class index (as :func:`torch.argmin`). A sample whose output neurons
    are all silent gets ``-1``: no decision, which counts as an error.
    """
    decision = torch.argmin(t_out, dim=1)
    return torch.where(torch.isinf(t_out).all(dim=1), torch.full_like(decision, -1), decision)


def relpsp_conv2d_pool(
    t_in: Tensor,
    weight: Tensor,
    threshold: float = 1.0,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    pool_size: int | tuple[int, int] = 2,
    pool_stride: int | tuple[int, int] | None = None,
    backend: str | None = None,
) -> Tensor:
    """:func:`relpsp_conv2d` followed by :func:`earliest_spike_pool2d` (window ``pool_size``,
    stride ``pool_stride``, default the window): ``(B, C_in, H, W)`` -> ``(B, C_out, PH, PW)``.

    The same spike times and gradients as the two calls, bit for bit. With the numba backend it
    is one kernel call per pass: each sample's convolution output is pooled while it is in cache
    and never stored whole, and the pooling's gradient is scattered inside the convolution's
    backward kernel. :class:`stdbp.nn.SpikingNetwork` uses it for every convolution followed
    by pooling (``6C5-P2``).
    """
    stride_hw, padding_hw = _conv_args(t_in, weight, threshold, stride, padding)
    out_shape = (
        t_in.shape[0],
        weight.shape[0],
        *(
            conv_output_size(size, k, st, pad)
            for size, k, st, pad in zip(t_in.shape[2:], weight.shape[2:], stride_hw, padding_hw)
        ),
    )
    kernel_hw, pool_stride_hw = _pool_args(out_shape, pool_size, pool_stride)
    return relpsp_conv2d_pool_kernel(
        t_in, weight, float(threshold), stride_hw, padding_hw, kernel_hw, pool_stride_hw, backend
    )  # checks the times
