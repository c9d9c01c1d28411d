"""A stack of fully connected ReL-PSP layers: the forward in one kernel call (numba, CPU).

The forward pass takes one sample at a time through every layer (in parallel over the batch):
sort the layer's spiking inputs, scan them (``numba_linear.scan_block``), write the outputs, and
go on to the next layer while the sample's spike times are still in cache.

The backward pass goes down the stack a layer at a time. Eqs. 14-15 sum over the causal pairs of
(spiking input, neuron); they are summed over each neuron's causal prefix of the sorted inputs
(``numba_linear``; ``relpsp_linear_backward_input_narrow`` for layers of up to
``numba_linear_backward.NARROW`` neurons), eq. 14 also over all pairs
(``numba_linear_backward.relpsp_linear_backward_weight_rows``), or as matrix products over all pairs
(``torch.mm``, about ten times cheaper per pair here) less the non-causal pairs (:func:`input_gradient` with ``dense``, :func:`weight_gradient_correction`),
which wins when nearly every input spikes and is causal. ``numba_autograd`` picks per layer.

Per layer ``l`` of ``N_l -> N_{l+1}`` neurons, arrays come in tuples with one entry per layer:
``weights[l]`` is the transposed weight ``(N_l, N_{l+1})``, C-contiguous; ``t[l]`` the layer's
input times ``(B, N_l)`` (``t[L]`` the network's output); ``order[l]``, ``times[l]`` its sorted
spiking inputs ``(B, N_l)``; ``anchor[l]``, ``inv_slope[l]``, ``n_causal[l]`` ``(B, N_{l+1})``
as in ``numba_linear.relpsp_linear_forward``. Spike times, and gradients summed over causal
prefixes, are the same, bit for bit, as running ``numba_linear`` layer by layer.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_linear import block_width, count_invalid, finish_scan, scan_block, sorted_spikes
from .numba_linear_backward import input_grad_row
from .reference import SILENT_HORIZON


@njit(parallel=True, cache=True)
def stack_forward(
    weights, widths, thresholds, t, keys, anchor, inv_slope, n_causal, order, times, n_spikes, first_fire
):  # pragma: no cover
    """Forward pass of the stack (eq. 12 per layer); see the module docstring for the arrays.

    ``t[0]`` holds the input times (``>= 0`` or ``inf``; ``-0.0`` is taken as ``0.0``) and is
    read; ``t[1:]`` ``(B, widths[l])``, ``anchor``, ``inv_slope``, ``n_causal``, ``order``, ``times`` and
    ``n_spikes`` ``(L, B)`` int32 are written. ``keys[l]`` is ``t[l]`` viewed as integers of its
    width (int32 for float32): the sort keys (``numba_autograd.sort_keys`` for the input, which
    is read; the same memory as ``t[l]`` for the layers above). ``thresholds`` ``(L,)``.

    ``weights[l]`` may have more columns than the layer has neurons, ``widths[l]`` ``(L,)``:
    zero columns that pad a narrow layer to whole vectors of 8 (a 10-neuron layer runs as two
    full vectors instead of one and a scalar remainder). Padding neurons are silent from the
    start (they take no part in the early exit); ``anchor``, ``inv_slope`` and ``n_causal`` have
    their columns, written as for silent neurons, and ``t[l + 1]`` has not.

    ``first_fire`` ``(L, B)`` int32 is written: the shortest causal prefix of the layer's neurons
    (``count`` if none fires), where the non-causal inputs of :func:`input_gradient` start.

    Returns the number of input times that are neither ``>= 0`` nor ``inf`` (NaN or negative):
    the caller raises if it is not 0.
    """
    batch = t[0].shape[0]
    n_layers = len(weights)
    widest = 0
    for l in range(n_layers):
        widest = max(widest, block_width(weights[l].shape[1]))
    zero = np.zeros(1, dtype=t[0].dtype)[0]
    one = np.ones(1, dtype=t[0].dtype)[0]
    horizon = np.full(1, SILENT_HORIZON, dtype=t[0].dtype)[0]
    bad = 0
    for b in prange(batch):
        bad += count_invalid(t[0][b])
        s = np.empty(widest, dtype=t[0].dtype)
        r = np.empty(widest, dtype=t[0].dtype)
        n = np.empty(widest, dtype=t[0].dtype)
        a = np.empty(widest, dtype=t[0].dtype)
        for l in range(n_layers):
            weight_t = weights[l]
            order_row, times_row = order[l][b], times[l][b]
            count = sorted_spikes(t[l][b], keys[l][b], order_row, times_row)
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
                scan_block(times_row, order_row, count, weight_t, lo, s[:width], r[:width], n[:width], a[:width])
                real = max(0, min(hi, widths[l]) - lo)  # the block's neurons that are not padding
                finish_scan(
                    s[:real],
                    r[:real],
                    n[:real],
                    a[:real],
                    t_ref,
                    t[l + 1][b, lo : lo + real],
                    anchor[l][b, lo : lo + real],
                    inv_slope[l][b, lo : lo + real],
                    n_causal[l][b, lo : lo + real],
                )
            shortest = count
            for j in range(widths[l]):
                shortest = min(shortest, int(n_causal[l][b, j]))
            first_fire[l, b] = shortest
            for j in range(widths[l], n_out):  # padding neurons: silent, no gradient to give
                anchor[l][b, j] = t_ref
                inv_slope[l][b, j] = one
                n_causal[l][b, j] = zero
    return bad


@njit(parallel=True, cache=True)
def scale_gradient(grad, inv_slope, anchor, times, n_spikes, first_fire, a):  # pragma: no cover - compiled
    """``a = grad * inv_slope`` ``(B, W)`` (0 in the padding columns beyond ``grad``'s ``N``), and
    what the backward needs to choose how to sum eqs. 14-15, as a tuple:

    the largest ``|a|`` and the largest ``anchor`` of the layer's neurons (``inf`` for NaN or
    inf), which bound the terms of eq. 14; the latest input spike (``times``, ``n_spikes`` of the
    forward pass; 0 if none), which with them bounds the terms of the sum over all pairs; the
    number of spiking inputs over the batch, the number of them that may be non-causal for
    some neuron (from ``first_fire`` on), and the fewest spiking inputs of a sample.
    """
    zero = np.zeros(1, dtype=a.dtype)[0]
    big = np.full(1, np.finfo(a.dtype).max, dtype=a.dtype)[0]
    inf = np.full(1, np.inf, dtype=a.dtype)[0]
    n = grad.shape[1]
    batch = a.shape[0]
    top = np.empty((3, batch), dtype=a.dtype)
    for b in prange(batch):
        top_a = top_t = zero
        for j in range(n):
            a[b, j] = grad[b, j] * inv_slope[b, j]
            top_a = max(top_a, abs(a[b, j]) if abs(a[b, j]) <= big else inf)
            top_t = max(top_t, anchor[b, j] if anchor[b, j] <= big else inf)
        for j in range(n, a.shape[1]):
            a[b, j] = zero
        top[0, b], top[1, b] = top_a, top_t
        top[2, b] = times[b, n_spikes[b] - 1] if n_spikes[b] > 0 else zero
    top_a = top_t = latest = zero
    spikes = non_causal = 0
    fewest = times.shape[1]
    for b in range(batch):
        top_a, top_t, latest = max(top_a, top[0, b]), max(top_t, top[1, b]), max(latest, top[2, b])
        spikes += n_spikes[b]
        non_causal += n_spikes[b] - first_fire[b]
        fewest = min(fewest, n_spikes[b])
    return float(top_a), float(top_t), float(latest), spikes, non_causal, fewest


@njit(cache=True)
def abs_max(x):  # pragma: no cover - compiled
    """The largest ``|x|`` of a 2-D array, ``inf`` if any entry is NaN or inf."""
    top = np.zeros(1, dtype=x.dtype)[0]
    big = np.full(1, np.finfo(x.dtype).max, dtype=x.dtype)[0]
    inf = np.full(1, np.inf, dtype=x.dtype)[0]
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = abs(x[i, j])
            top = max(top, v if v <= big else inf)
    return float(top)


@njit(parallel=True, cache=True)
def input_gradient(
    weight_t, n_out, a, n_causal, order, n_spikes, dense, first_fire, grad_in
):  # pragma: no cover - compiled
    """Eq. 15 for one layer, ``grad_in`` ``(B, N_in)``, saturated as ``numba_linear.saturate_`` does.

    ``dense=False``: the sums over the causal prefix (``numba_linear_backward.input_grad_row``);
    ``grad_in`` needs no zeroing. ``dense=True``: ``grad_in`` holds ``a @ weight_t.T``, the sums
    over all neurons; the entries of silent inputs are set to 0 and, for the spiking ones, the
    neurons for which they are not causal (from the ``first_fire``-th spike on) are subtracted.
    """
    zero = np.zeros(1, dtype=grad_in.dtype)[0]
    big = np.full(1, np.finfo(grad_in.dtype).max, dtype=grad_in.dtype)[0]
    for b in prange(grad_in.shape[0]):
        out = grad_in[b]
        count = n_spikes[b]
        if dense:
            kept = np.empty(count, dtype=out.dtype)
            for k in range(count):
                kept[k] = out[order[b, k]]
            out[:] = zero
            for k in range(count):
                out[order[b, k]] = kept[k]
            input_grad_row(weight_t, n_out, a[b], n_causal[b], order[b], first_fire[b], count, True, out)
        else:
            out[:] = zero
            input_grad_row(weight_t, n_out, a[b], n_causal[b], order[b], 0, count, False, out)
        for i in range(out.shape[0]):
            g = out[i]
            if not abs(g) <= big:
                out[i] = zero if g != g else (big if g > zero else -big)


@njit(parallel=True, cache=True, fastmath={"contract"})
def weight_gradient_correction(
    times, a, anchor, n_causal, order, n_spikes, first_fire, all_spike, n_parts, grad_w_t
):  # pragma: no cover
    """``grad_w_t[i, j] -= sum_b a[b, j] * (t_i - t_j)`` over the spiking inputs ``i`` that are not
    causal for ``j``: turns the sum over all spiking inputs (a matrix product) into eq. 14.

    With ``all_spike`` (every input spikes in every sample), ``grad_w_t`` holds only the products
    ``sum_b a[b, j] t_i``, and ``sum_b a[b, j] t_j`` is subtracted from every row first.
    Parallel over ranges of rows, each row corrected in batch order by one task (so the result
    does not depend on ``n_parts``).
    """
    batch = times.shape[0]
    n_in, n_out = grad_w_t.shape
    rows = (n_in + n_parts - 1) // n_parts
    for part in prange(n_parts):
        i_lo = part * rows
        i_hi = min(i_lo + rows, n_in)
        k_cast = np.zeros(1, dtype=times.dtype)
        if all_spike:
            u = np.zeros(n_out, dtype=times.dtype)
            for b in range(batch):
                for j in range(n_out):
                    u[j] += a[b, j] * anchor[b, j]
            for i in range(i_lo, i_hi):
                g = grad_w_t[i]
                for j in range(n_out):
                    g[j] -= u[j]
        for b in range(batch):
            for k in range(first_fire[b], n_spikes[b]):
                i = order[b, k]
                if i_lo <= i < i_hi:
                    g = grad_w_t[i]
                    t_k = times[b, k]
                    k_cast[0] = k
                    f = k_cast[0]
                    for j in range(n_out):
                        g[j] -= a[b, j] * (t_k - anchor[b, j]) * (f >= n_causal[b, j])
