r"""The numba kernels of the alpha-PSP neuron of Section 2 (eqs. 2-7): exact first-spike times
and SpikeProp gradients, in float64, behind :class:`AlphaPspLinear`.

The method (segment-wise closed form, Newton with bisection) is described in
:mod:`stdbp.alpha_psp`, which holds the checked public function :func:`stdbp.alpha_psp.alpha_psp_linear`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

__all__ = ["AlphaPspLinear"]


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


class AlphaPspLinear(torch.autograd.Function):
    """Forward: the exact first crossing. Backward: SpikeProp (eqs. 4-7), unclipped."""

    @staticmethod
    def forward(ctx, t_in: Tensor, weight: Tensor, threshold: float, tau: float) -> Tensor:
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
    def backward(ctx, grad_out: Tensor):
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
