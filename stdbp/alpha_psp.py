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
(or become inf/NaN when it is exactly 0): that is what :mod:`stdbp.compare_psp` measures. A
silent neuron passes no gradient at all (the dead-neuron problem).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor, nn

from .functional import check_spike_times

__all__ = ["alpha_psp_linear", "AlphaSpikingLinear", "membrane_potential", "membrane_slope", "KERNELS"]

#: Names of the PSP kernels that :func:`membrane_potential` and :func:`membrane_slope` evaluate.
KERNELS = ("relpsp", "alpha")


@njit(cache=True, nogil=True)
def _first_crossing(a, b, level, tau, u_hi):  # pragma: no cover - compiled
    """Smallest ``u`` in ``[0, u_hi]`` with ``g(u) = exp(-u/tau) (a u + b) = level``.

    Requires ``g(0) < level <= g(u_hi)`` and ``g`` increasing and concave on ``[0, u_hi]``
    (``u_hi <= tau - b/a``). Newton from the left stays left of the root; bisection guards it.
    """
    lo = 0.0
    hi = u_hi
    u = 0.0
    for _ in range(200):
        decay = math.exp(-u / tau)
        z = a * u + b
        h = decay * z - level
        if h == 0.0:
            return u
        if h < 0.0:
            lo = u
        else:
            hi = u
        dh = decay * (a - z / tau)
        u_new = u - h / dh if dh > 0.0 else -1.0
        if not (u_new > lo and u_new <= hi):
            u_new = 0.5 * (lo + hi)
        if abs(u_new - u) <= 1e-15 * (1.0 + u_new) or hi - lo <= 1e-15 * (1.0 + hi):
            return u_new
        u = u_new
    return u


@njit(parallel=True, cache=True)
def _alpha_forward(t_in, weight_t, threshold, tau, t_out, slope, n_causal, order, times, n_spikes):  # pragma: no cover
    """Event-driven scan, float64, parallel over the batch.

    Args:
        t_in: ``(B, N_in)`` input times, ``inf`` = silent.
        weight_t: ``(N_in, N_out)`` transposed weights, C-contiguous.
        threshold, tau: scalars.
        t_out: ``(B, N_out)`` first-spike times, ``inf`` = silent (written).
        slope: ``(B, N_out)`` ``dV/dt`` at the spike, 0 for a silent neuron (written).
        n_causal: ``(B, N_out)`` int32 length of the causal prefix of ``order`` (written).
        order, times: ``(B, N_in)`` spiking input indices and times in time order (written).
        n_spikes: ``(B,)`` int32 number of spiking inputs (written).
    """
    batch, n_in = t_in.shape
    n_out = weight_t.shape[1]
    level = threshold * tau / math.e  # V = theta  <=>  exp(-u/tau) (A u + B) = level
    for b in prange(batch):
        count = 0
        for i in range(n_in):
            if t_in[b, i] < np.inf:
                order[b, count] = i
                times[b, count] = t_in[b, i]
                count += 1
        perm = np.argsort(times[b, :count], kind="mergesort")
        idx = order[b, :count].copy()
        tt = times[b, :count].copy()
        for k in range(count):
            order[b, k] = idx[perm[k]]
            times[b, k] = tt[perm[k]]
        n_spikes[b] = count
        acc_a = np.zeros(n_out)
        acc_b = np.zeros(n_out)
        done = np.zeros(n_out, dtype=np.bool_)
        for j in range(n_out):
            t_out[b, j] = np.inf
            slope[b, j] = 0.0
            n_causal[b, j] = 0
        remaining = n_out
        k = 0
        while k < count and remaining > 0:
            t_k = times[b, k]
            row = weight_t[order[b, k]]
            for j in range(n_out):
                acc_a[j] += row[j]  # a new input enters with s - t_i = 0
            k += 1
            t_next = times[b, k] if k < count else np.inf
            if t_next == t_k:  # equal times enter together
                continue
            length = t_next - t_k
            decay = math.exp(-length / tau)
            for j in range(n_out):
                if done[j]:
                    continue
                a = acc_a[j]
                bb = acc_b[j]
                u = -1.0
                if bb >= level:  # rounding put the segment start on threshold
                    u = 0.0
                elif a * tau >= level:  # else the peak a*tau*exp(-u*/tau) < level
                    peak = tau - bb / a
                    if peak > 0.0:
                        if peak < length:
                            u_hi = peak
                            g_hi = a * tau * math.exp(-peak / tau)
                        else:
                            u_hi = length
                            g_hi = decay * (a * length + bb)
                        if g_hi >= level:
                            u = _first_crossing(a, bb, level, tau, u_hi)
                if u >= 0.0:
                    t_out[b, j] = t_k + u
                    slope[b, j] = (math.e / tau) * math.exp(-u / tau) * (a - (a * u + bb) / tau)
                    n_causal[b, j] = k
                    done[j] = True
                    remaining -= 1
            if length < np.inf:
                for j in range(n_out):
                    acc_b[j] = decay * (acc_b[j] + length * acc_a[j])
                    acc_a[j] = decay * acc_a[j]


@njit(parallel=True, cache=True)
def _alpha_backward_weight(times, order, t_out, coef, n_causal, tau, n_blocks, grad_weight_t):  # pragma: no cover
    """``grad_weight_t[i, j] = -sum_b coef[b, j] * eps(t_j - t_i)`` over causal ``i`` (eqs. 4, 6).

    ``coef`` is ``dL/dt_j / V'(t_j)``, 0 where no gradient flows; ``grad_weight_t`` is
    ``(N_in, N_out)``, zeroed by the caller. Parallel over blocks of output neurons, each summing
    the batch in order, so the result does not depend on the thread count.
    """
    batch = times.shape[0]
    n_out = grad_weight_t.shape[1]
    block = (n_out + n_blocks - 1) // n_blocks
    for blk in prange(n_blocks):
        lo = blk * block
        width = min(lo + block, n_out) - lo
        for b in range(batch):
            longest = 0
            for j in range(width):
                if coef[b, lo + j] != 0.0:
                    longest = max(longest, n_causal[b, lo + j])
            for k in range(longest):
                t_i = times[b, k]
                g = grad_weight_t[order[b, k], lo : lo + width]
                for j in range(width):
                    c = coef[b, lo + j]
                    if c != 0.0 and k < n_causal[b, lo + j]:
                        x = (t_out[b, lo + j] - t_i) / tau
                        g[j] -= c * x * math.exp(1.0 - x)


@njit(parallel=True, cache=True)
def _alpha_backward_input(weight_t, times, order, n_spikes, t_out, coef, n_causal, tau, grad_in):  # pragma: no cover
    """``grad_in[b, i] = sum_j coef[b, j] * w_ij * eps'(t_j - t_i)`` over ``j`` with ``i`` causal (eqs. 5-7)."""
    batch = grad_in.shape[0]
    n_out = weight_t.shape[1]
    for b in prange(batch):
        for k in range(n_spikes[b]):
            row = weight_t[order[b, k]]
            t_i = times[b, k]
            acc = 0.0
            for j in range(n_out):
                c = coef[b, j]
                if c != 0.0 and k < n_causal[b, j]:
                    x = (t_out[b, j] - t_i) / tau
                    acc += c * row[j] * math.exp(1.0 - x) * (1.0 - x) / tau
            grad_in[b, order[b, k]] = acc


class _AlphaPspLinear(torch.autograd.Function):
    """Forward: the exact first crossing. Backward: SpikeProp (eqs. 4-7), unclipped."""

    @staticmethod
    def forward(ctx, t_in: Tensor, weight: Tensor, threshold: float, tau: float) -> Tensor:  # type: ignore[override]
        t_np = t_in.detach().to(torch.float64).contiguous().numpy()
        w_t = np.ascontiguousarray(weight.detach().to(torch.float64).numpy().T)  # (N_in, N_out)
        batch, n_in = t_np.shape
        n_out = w_t.shape[1]
        t_out = np.empty((batch, n_out))
        slope = np.empty((batch, n_out))
        n_causal = np.empty((batch, n_out), dtype=np.int32)
        order = np.empty((batch, n_in), dtype=np.int32)
        times = np.empty((batch, n_in))
        n_spikes = np.empty(batch, dtype=np.int32)
        _alpha_forward(t_np, w_t, float(threshold), float(tau), t_out, slope, n_causal, order, times, n_spikes)
        ctx.scan = (w_t, t_out, slope, n_causal, order, times, n_spikes, float(tau))
        ctx.dtypes = (t_in.dtype, weight.dtype)
        return torch.from_numpy(t_out).to(t_in.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        import numba

        w_t, t_out, slope, n_causal, order, times, n_spikes, tau = ctx.scan
        grad = grad_out.detach().to(torch.float64).numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            # dL/dt_j / V'(t_j); deliberately unclipped: V' -> 0 gives inf or NaN.
            coef = np.where(np.isfinite(t_out) & (grad != 0.0), grad / slope, 0.0)
        grad_t = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w_t = np.zeros_like(w_t)
            n_blocks = max(1, min(numba.get_num_threads(), w_t.shape[1] // 16))
            _alpha_backward_weight(times, order, t_out, coef, n_causal, tau, n_blocks, grad_w_t)
            grad_w = torch.from_numpy(grad_w_t).t().to(ctx.dtypes[1])
        if ctx.needs_input_grad[0]:
            grad_t_np = np.zeros(times.shape)
            _alpha_backward_input(w_t, times, order, n_spikes, t_out, coef, n_causal, tau, grad_t_np)
            grad_t = torch.from_numpy(grad_t_np).to(ctx.dtypes[0])
        return grad_t, grad_w, None, None


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
    return _AlphaPspLinear.apply(t_in, weight, float(threshold), float(tau))


class AlphaSpikingLinear(nn.Module):
    """A fully connected layer of alpha-PSP neurons: ``(B, in_features)`` -> ``(B, out_features)`` spike times.

    Initialised as :class:`stdbp.layers.SpikingLinear`: normal weights with
    ``mean = weight_mean / in_features`` and ``std = weight_std / sqrt(in_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        threshold: float = 1.0,
        tau: float = 1.0,
        weight_mean: float = 5.0,
        weight_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = threshold
        self.tau = tau
        self.weight_mean = weight_mean
        self.weight_std = weight_std
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(self.weight_mean / self.in_features, self.weight_std / math.sqrt(self.in_features))

    def forward(self, t_in: Tensor) -> Tensor:
        return alpha_psp_linear(t_in, self.weight, self.threshold, self.tau)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}, tau={self.tau}"


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
        raise ValueError(f"expected t_in (B, N_in) and weight (N_out, N_in), got {tuple(t_in.shape)} and {tuple(weight.shape)}")
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
    if t_out.dim() != 2 or t_in.dim() != 2 or t_out.shape[0] != t_in.shape[0] or weight.shape != (t_out.shape[1], t_in.shape[1]):
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
