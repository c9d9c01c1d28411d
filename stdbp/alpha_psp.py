r"""The alpha-PSP neuron of Section 2 (eqs. 2-7): exact first-spike times and SpikeProp gradients.

It is the baseline that ReL-PSP (Section 3) is measured against. The membrane potential is
:math:`V_j(t) = \sum_i w_{ij} \varepsilon(t - t_i)` with the alpha kernel (eq. 2)

.. math:: \varepsilon(t) = \frac{t}{\tau} \exp\left(1 - \frac{t}{\tau}\right), \quad t > 0,

and the neuron fires once, at the first :math:`t` with :math:`V_j(t) = \vartheta` (eq. 3; no
refractory term is needed). Between two consecutive input times, with the causal set :math:`C`
and :math:`u = t - s` measured from the segment start :math:`s`,

.. math:: V_j(s + u) = \frac{e}{\tau} e^{-u/\tau} (A u + B), \quad
          A = \sum_C w_i e^{-(s - t_i)/\tau}, \quad B = \sum_C w_i (s - t_i) e^{-(s - t_i)/\tau}.

:math:`A` and :math:`B` are updated from segment to segment with factors ``exp(-length/tau) <= 1``,
so nothing overflows. On a segment, ``V`` rises to a single peak at ``u* = tau - B/A`` (when
``A > 0``) and falls after it; the first crossing lies on the rising, concave part, where a
Newton iteration started at ``u = 0`` approaches the root from below, bracketed by bisection, in
float64.

The backward pass is SpikeProp's (eqs. 4-7), with no clipping or normalisation:
:math:`\partial t_j/\partial w_{ij} = -\varepsilon(t_j - t_i) / V_j'(t_j)` and
:math:`\partial t_j/\partial t_i = w_{ij} \varepsilon'(t_j - t_i) / V_j'(t_j)` for causal ``i``.
When the potential only just reaches threshold, :math:`V_j'(t_j) \approx 0` and these explode
(or become inf/NaN when it is exactly 0): that is what :mod:`stdbp.paper.psp_comparison` measures. A
silent neuron passes no gradient at all (the dead-neuron problem).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .kernels import alpha_psp_linear_kernel
from .validation import check_spike_times

__all__ = ["alpha_psp_linear", "membrane_potential", "membrane_slope", "KERNELS"]

#: Names of the PSP kernels that :func:`membrane_potential` and :func:`membrane_slope` evaluate.
KERNELS = ("relpsp", "alpha")


def _check_layer_args(t_in: Tensor, weight: Tensor, threshold: float, tau: float) -> None:
    if t_in.dim() != 2 or weight.dim() != 2 or t_in.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected t_in (batch, in_features) and weight (out_features, in_features) with matching in_features, "
            f"got shapes {tuple(t_in.shape)} and {tuple(weight.shape)}"
        )
    if t_in.dtype not in (torch.float32, torch.float64) or weight.dtype != t_in.dtype:
        raise ValueError(f"t_in and weight must both be float32 or both float64, got {t_in.dtype} and {weight.dtype}")
    if not (0 < threshold < math.inf):
        raise ValueError(f"threshold must be a positive finite number, got {threshold}")
    if not (0 < tau < math.inf):
        raise ValueError(f"tau must be a positive finite number, got {tau}")
    check_spike_times(t_in)


def alpha_psp_linear(t_in: Tensor, weight: Tensor, threshold: float = 1.0, tau: float = 1.0) -> Tensor:
    """First-spike times of a layer of alpha-PSP neurons (eqs. 2-3), differentiable by SpikeProp (eqs. 4-7).

    Args:
        t_in: ``(B, N_in)`` input spike times, ``+inf`` for no spike. float32 or float64, CPU.
        weight: ``(N_out, N_in)`` synaptic weights, as in :func:`torch.nn.functional.linear`.
        threshold: firing threshold :math:`\\vartheta > 0`.
        tau: time constant of the alpha kernel, in time units; a PSP peaks at ``t_i + tau``
            with height ``w``.

    Returns:
        ``(B, N_out)`` output spike times, ``+inf`` where the potential never reaches threshold.
        Computed in float64 and returned in the dtype of ``t_in``.

    Gradients are not clipped: they grow as ``1 / V'(t_j)`` and can be inf or NaN when the
    potential touches threshold at its peak. Silent neurons pass no gradient.
    """
    _check_layer_args(t_in, weight, threshold, tau)
    if t_in.device.type != "cpu" or weight.device.type != "cpu":
        raise ValueError(f"alpha_psp_linear runs on the CPU only, got tensors on {t_in.device} and {weight.device}")
    return alpha_psp_linear_kernel(t_in, weight, float(threshold), float(tau))


def _psp(x: Tensor, kernel: str, tau: float, derivative: bool = False) -> Tensor:
    """The PSP kernel (or its time derivative) at elapsed times ``x``; 0 for ``x <= 0``."""
    pos = x > 0
    xs = torch.where(pos, x, torch.zeros_like(x))  # keeps inf - inf and exp overflow out
    if kernel == "relpsp":
        value = pos.to(x.dtype) if derivative else xs
    elif kernel == "alpha":
        r = xs / tau
        value = torch.exp(1.0 - r) * (1.0 - r) / tau if derivative else r * torch.exp(1.0 - r)
    else:
        raise ValueError(f"unknown PSP kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    return torch.where(pos, value, torch.zeros_like(value))


def membrane_potential(t: Tensor, t_in: Tensor, weight: Tensor, kernel: str = "relpsp", tau: float = 1.0) -> Tensor:
    """The membrane potential ``V_j(t) = sum_i w_ij K(t - t_i)`` on a time grid, without firing.

    Args:
        t: ``(T,)`` finite times at which to evaluate, in time units.
        t_in: ``(B, N_in)`` input spike times, ``+inf`` for no spike.
        weight: ``(N_out, N_in)`` weights.
        kernel: ``"relpsp"`` (eq. 9) or ``"alpha"`` (eq. 2).
        tau: alpha time constant (ignored by ``"relpsp"``).

    Returns:
        ``(B, T, N_out)`` potentials, in threshold units (same units as ``weight``).
    """
    if t.dim() != 1 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"t must be a 1-D tensor of finite times, got shape {tuple(t.shape)}")
    if t_in.dim() != 2 or weight.dim() != 2 or t_in.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected t_in (B, N_in) and weight (N_out, N_in), got {tuple(t_in.shape)} and {tuple(weight.shape)}"
        )
    psp = _psp(t.to(t_in.dtype).view(1, -1, 1) - t_in.unsqueeze(1), kernel, tau)  # (B, T, N_in)
    return psp @ weight.to(t_in.dtype).t()


def membrane_slope(t_out: Tensor, t_in: Tensor, weight: Tensor, kernel: str = "relpsp", tau: float = 1.0) -> Tensor:
    """``dV_j/dt`` at each neuron's own time ``t_out[b, j]``, from its causal inputs ``t_i < t_out``.

    For ReL-PSP this is the causal weight sum of eq. 10; for the alpha kernel the denominator of
    eq. 6. ``1 / |slope|`` is ``|dt_j / dV_j|``, the factor that explodes. Evaluated from the
    closed forms, independently of the kernels, one sample at a time over its spiking inputs.

    Args:
        t_out: ``(B, N_out)`` times, ``+inf`` for silent neurons.
        t_in: ``(B, N_in)`` input spike times.
        weight: ``(N_out, N_in)`` weights.
        kernel, tau: as in :func:`membrane_potential`.

    Returns:
        ``(B, N_out)`` slopes in threshold units per time unit, NaN where ``t_out`` is ``+inf``.
    """
    if (
        t_out.dim() != 2
        or t_in.dim() != 2
        or t_out.shape[0] != t_in.shape[0]
        or weight.shape != (t_out.shape[1], t_in.shape[1])
    ):
        raise ValueError(
            f"expected t_out (B, N_out), t_in (B, N_in), weight (N_out, N_in), got "
            f"{tuple(t_out.shape)}, {tuple(t_in.shape)}, {tuple(weight.shape)}"
        )
    w = weight.to(t_in.dtype).t()  # (N_in, N_out)
    t_out = t_out.to(t_in.dtype)
    fired = torch.isfinite(t_out)
    slope = torch.full_like(t_out, math.nan)
    for b in range(t_in.shape[0]):
        spiking = torch.isfinite(t_in[b]).nonzero().squeeze(1)  # (n_b,)
        t_j = torch.where(fired[b], t_out[b], torch.zeros_like(t_out[b]))
        x = t_j.unsqueeze(0) - t_in[b, spiking].unsqueeze(1)  # (n_b, N_out); causal <=> x > 0
        slope[b] = torch.where(fired[b], (_psp(x, kernel, tau, derivative=True) * w[spiking]).sum(dim=0), slope[b])
    return slope
