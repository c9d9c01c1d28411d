"""A stack of fully connected ReL-PSP layers in one kernel call per pass (numba, CPU).

The forward pass takes one sample at a time through every layer (in parallel over the batch):
sort the layer's spiking inputs, scan them (``numba_cpu._scan_block``), write the outputs, and
go on to the next layer while the sample's spike times are still in cache.

The backward pass takes one sample at a time down the stack for the input gradients (eq. 15),
then the weight gradients (eq. 14) layer by layer with ``numba_cpu.relpsp_linear_backward_weight``.

Per layer ``l`` of ``N_l -> N_{l+1}`` neurons, arrays come in tuples with one entry per layer:
``weights[l]`` is the transposed weight ``(N_l, N_{l+1})``, C-contiguous; ``t[l]`` the layer's
input times ``(B, N_l)`` (``t[L]`` the network's output); ``order[l]``, ``times[l]`` its sorted
spiking inputs ``(B, N_l)``; ``anchor[l]``, ``inv_slope[l]``, ``n_causal[l]`` ``(B, N_{l+1})``
as in ``numba_cpu.relpsp_linear_forward``. Results are the same, bit for bit, as running
``numba_cpu`` layer by layer.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_cpu import _finish, _input_grad_row, _scan_block, _sorted_spikes, block_width
from .reference import SILENT_HORIZON


@njit(parallel=True, cache=True)
def stack_forward(weights, widths, thresholds, t, keys, anchor, inv_slope, n_causal, order, times, n_spikes):  # pragma: no cover
    """Forward pass of the stack (eq. 12 per layer); see the module docstring for the arrays.

    ``t[0]`` holds the input times (``>= 0`` or ``inf``; ``-0.0`` is taken as ``0.0``) and is
    read; ``t[1:]``, ``anchor``, ``inv_slope``, ``n_causal``, ``order``, ``times`` and
    ``n_spikes`` ``(L, B)`` int32 are written. ``keys[l]`` is ``t[l]`` viewed as integers of its
    width (int32 for float32): the sort keys (``numba_autograd.sort_keys`` for the input, which
    is read; the same memory as ``t[l]`` for the layers above). ``thresholds`` ``(L,)``.

    ``weights[l]`` may have more columns than the layer has neurons, ``widths[l]`` ``(L,)``:
    zero columns that pad a narrow layer to whole vectors of 8 (a 10-neuron layer runs as two
    full vectors instead of one and a scalar remainder). Padding neurons are silent from the
    start (they take no part in the early exit) and written as silent neurons; the next
    layer's weights have zero rows for them, which are never read.
    """
    batch = t[0].shape[0]
    n_layers = len(weights)
    widest = 0
    for l in range(n_layers):
        widest = max(widest, block_width(weights[l].shape[1]))
    zero = np.zeros(1, dtype=t[0].dtype)[0]
    one = np.ones(1, dtype=t[0].dtype)[0]
    horizon = np.full(1, SILENT_HORIZON, dtype=t[0].dtype)[0]
    for b in prange(batch):
        s = np.empty(widest, dtype=t[0].dtype)
        r = np.empty(widest, dtype=t[0].dtype)
        n = np.empty(widest, dtype=t[0].dtype)
        a = np.empty(widest, dtype=t[0].dtype)
        for l in range(n_layers):
            weight_t = weights[l]
            order_row, times_row = order[l][b], times[l][b]
            count = _sorted_spikes(t[l][b], keys[l][b], order_row, times_row)
            n_spikes[l, b] = count
            threshold = thresholds[l]
            t_ref = (times_row[count - 1] if count > 0 else zero) + horizon
            n_out = weight_t.shape[1]
            block = block_width(n_out)
            for lo in range(0, n_out, block):
                hi = min(lo + block, n_out)
                width = hi - lo
                s[:width] = zero
                r[:width] = threshold
                n[:width] = zero
                a[:width] = one
                for j in range(max(0, widths[l] - lo), width):  # padding
                    a[j] = zero
                _scan_block(times_row, order_row, count, weight_t, lo, s[:width], r[:width], n[:width], a[:width])
                real = max(0, min(hi, widths[l]) - lo)  # the block's neurons that are not padding
                _finish(
                    s[:real], r[:real], n[:real], a[:real], t_ref,
                    t[l + 1][b, lo : lo + real], anchor[l][b, lo : lo + real], inv_slope[l][b, lo : lo + real], n_causal[l][b, lo : lo + real],
                )
            for j in range(widths[l], n_out):  # padding neurons: silent, no gradient to give
                t[l + 1][b, j] = np.inf
                anchor[l][b, j] = t_ref
                inv_slope[l][b, j] = one
                n_causal[l][b, j] = zero


@njit(parallel=True, cache=True)
def stack_backward_input(weights, widths, grad_out, inv_slope, n_causal, order, n_spikes, first, grad_scaled, grad_t):  # pragma: no cover
    """Input gradients down the stack (eq. 15), one sample at a time.

    ``grad_out`` ``(B, N_L)`` is dL/dt of the output layer. For every layer ``l``,
    ``grad_scaled[l] = dL/dt_{l+1} * inv_slope[l]`` ``(B, N_{l+1})`` is written, and for
    ``l >= first`` the gradient ``grad_t[l]`` ``(B, N_l)`` of the layer's input times,
    saturated as ``numba_cpu.saturate_`` does (the next layer down takes it as its ``grad_out``).
    ``grad_t[0]`` is written when ``first == 0`` (the stack's input needs a gradient); ``first``
    is 0 or 1. ``grad_t`` arrays need no zeroing. ``widths`` as for :func:`stack_forward`: the
    sums of eq. 15 run over the layer's own neurons, not its padding.
    """
    batch = grad_out.shape[0]
    n_layers = len(weights)
    zero = np.zeros(1, dtype=grad_out.dtype)[0]
    big = np.full(1, np.finfo(grad_out.dtype).max, dtype=grad_out.dtype)[0]
    for b in prange(batch):
        for l in range(n_layers - 1, -1, -1):
            g_row = grad_out[b] if l == n_layers - 1 else grad_t[l + 1][b]
            a_row = grad_scaled[l][b]
            slope_row = inv_slope[l][b]
            for j in range(a_row.shape[0]):
                a_row[j] = g_row[j] * slope_row[j]
            if l == 0 and first == 1:
                break
            out = grad_t[l][b]
            out[:] = zero
            _input_grad_row(weights[l], widths[l], a_row, n_causal[l][b], order[l][b], n_spikes[l, b], out)
            for i in range(out.shape[0]):
                g = out[i]
                if not abs(g) <= big:
                    out[i] = zero if g != g else (big if g > zero else -big)
