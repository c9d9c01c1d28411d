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

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels import relpsp_linear_kernel

__all__ = [
    "relpsp_linear",
    "first_spike_cross_entropy",
    "first_spike_decision",
    "check_spike_times",
]


def check_spike_times(t: Tensor, name: str = "t_in") -> None:
    """Raise ``ValueError`` unless every entry of ``t`` is a time ``>= 0`` or ``+inf``."""
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of spike times, got {t.dtype}")
    if not bool((t >= 0).all()):
        bad = "NaN" if bool(torch.isnan(t).any()) else "negative"
        raise ValueError(f"{name} contains {bad} spike times; times must be >= 0, or +inf for no spike")


def relpsp_linear(t_in: Tensor, weight: Tensor, threshold: float = 1.0, backend: str | None = None) -> Tensor:
    """First-spike times of a layer of ReL-PSP neurons (eq. 12), differentiable by eqs. 14-15.

    Args:
        t_in: ``(B, N_in)`` input spike times, ``+inf`` for no spike. float32 or float64.
        weight: ``(N_out, N_in)`` synaptic weights, as in :func:`torch.nn.functional.linear`.
        threshold: firing threshold :math:`\\vartheta > 0`.
        backend: kernel to use (``"numba"``, ``"reference"``); default by device.

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
    if t_in.dtype not in (torch.float32, torch.float64) or weight.dtype != t_in.dtype:
        raise ValueError(f"t_in and weight must both be float32 or both float64, got {t_in.dtype} and {weight.dtype}")
    if not (threshold > 0 and threshold < float("inf")):
        raise ValueError(f"threshold must be a positive finite number, got {threshold}")
    check_spike_times(t_in)
    return relpsp_linear_kernel(t_in, weight, float(threshold), backend)


class _FillSilent(torch.autograd.Function):
    """``+inf`` entries replaced by ``fill`` in the forward pass; the gradient passes to every entry.

    Passing the gradient of a silent output to it (rather than to the constant) is what lets the
    kernel's silent-neuron surrogate push a silent target neuron to fire.
    """

    @staticmethod
    def forward(ctx, t_out: Tensor, fill: Tensor) -> Tensor:  # type: ignore[override]
        return torch.where(torch.isinf(t_out), fill, t_out)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
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
        raise ValueError(f"expected t_out (batch, classes) and labels (batch,), got {tuple(t_out.shape)} and {tuple(labels.shape)}")
    logits = -_finite_output_times(t_out, silent_time, tau) / tau
    return F.cross_entropy(logits, labels, reduction=reduction)


def first_spike_decision(t_out: Tensor) -> Tensor:
    """The class whose output neuron fires first, ``(B,)`` int64.

    Ties go to the lowest class index (as :func:`torch.argmin`). A sample whose output neurons
    are all silent gets ``-1``: no decision, which counts as an error.
    """
    decision = torch.argmin(t_out, dim=1)
    return torch.where(torch.isinf(t_out).all(dim=1), torch.full_like(decision, -1), decision)
