"""Backward kernels of the fully connected ReL-PSP layer (eqs. 14-15), compiled with numba.

They reuse what :func:`stdbp.kernels.numba_linear.relpsp_linear_forward` recorded: the
time-sorted spiking inputs (``order``, ``times``, ``n_spikes``) and, per neuron, the scaled
gradient ``a = dL/dt_j / s`` (``s`` the causal weight sum), its time ``anchor`` and the length
``n_causal`` of its causal prefix. Eq. 14 is a sum over each neuron's causal prefix
(:func:`relpsp_linear_backward_weight`) or over all pairs as ``a * min(t_i - t_j, 0)``
(:func:`relpsp_linear_backward_weight_rows`); eq. 15 a sum over the neurons whose prefix holds
the input (:func:`relpsp_linear_backward_input`), or, for layers of at most :data:`NARROW`
neurons, neuron by neuron over the inputs (:func:`relpsp_linear_backward_input_narrow`). Weight
gradients are summed over the batch in a fixed order, so results are bitwise reproducible for
any thread count. Constants are cast to the array's type, as in ``numba_linear``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath={"contract"})
def relpsp_linear_backward_weight(
    times, grad_scaled, anchor, n_causal, order, n_spikes, n_parts, grad_weight_t
):  # pragma: no cover
    """``grad_weight_t[i, j] = sum_b a[b, j] * (t_i - t_j)`` over causal ``i`` (eq. 14).

    ``grad_scaled`` is ``a = dL/dt_out * inv_slope``, ``(B, N_out)``; ``grad_weight_t`` is the
    transposed gradient ``(N_in, N_out)`` (written). The rows (inputs) are cut into ``n_parts``
    ranges, one task each: every task walks each sample's spikes in time order and keeps those of
    its rows, so each row is summed over the batch in order by one task and the result does not
    depend on the number of parts or threads. The ``k``-th spike of a sample counts for neuron
    ``j`` when ``k < n_causal[j]``; spikes go four at a time (``a``, ``t_j`` and the causal
    lengths are loaded once for four rows).
    """
    batch = times.shape[0]
    n_in, n_out = grad_weight_t.shape
    zero = np.zeros(1, dtype=times.dtype)[0]
    rows = (n_in + n_parts - 1) // n_parts
    for part in prange(n_parts):
        i_lo = part * rows
        i_hi = min(i_lo + rows, n_in)
        for i in range(i_lo, i_hi):
            grad_weight_t[i] = zero
        a = np.empty(n_out, dtype=times.dtype)
        t_j = np.empty(n_out, dtype=times.dtype)
        nc = np.empty(n_out, dtype=times.dtype)
        mine = np.empty(n_in, dtype=np.int64)  # positions in time order of this part's spikes
        kf = np.empty(n_in, dtype=times.dtype)  # the same as floats (zero + k would be float64)
        for b in range(batch):
            longest = zero
            for j in range(n_out):
                a[j] = grad_scaled[b, j]
                t_j[j] = anchor[b, j]
                nc[j] = n_causal[b, j]
                longest = max(longest, nc[j] if a[j] != zero else zero)
            n_mine = 0
            for k in range(min(int(longest), n_spikes[b])):
                i = order[b, k]
                if i_lo <= i < i_hi:
                    mine[n_mine] = k
                    kf[n_mine] = k
                    n_mine += 1
            e = 0
            while e + 4 <= n_mine:
                k0, k1, k2, k3 = mine[e], mine[e + 1], mine[e + 2], mine[e + 3]
                t0, t1, t2, t3 = times[b, k0], times[b, k1], times[b, k2], times[b, k3]
                f0, f1, f2, f3 = kf[e], kf[e + 1], kf[e + 2], kf[e + 3]
                g0 = grad_weight_t[order[b, k0]]
                g1 = grad_weight_t[order[b, k1]]
                g2 = grad_weight_t[order[b, k2]]
                g3 = grad_weight_t[order[b, k3]]
                e += 4
                for j in range(n_out):
                    aj, tj, nj = a[j], t_j[j], nc[j]
                    g0[j] += aj * (t0 - tj) * (f0 < nj)
                    g1[j] += aj * (t1 - tj) * (f1 < nj)
                    g2[j] += aj * (t2 - tj) * (f2 < nj)
                    g3[j] += aj * (t3 - tj) * (f3 < nj)
            while e < n_mine:
                k0 = mine[e]
                t0 = times[b, k0]
                f0 = kf[e]
                g0 = grad_weight_t[order[b, k0]]
                e += 1
                for j in range(n_out):
                    g0[j] += a[j] * (t0 - t_j[j]) * (f0 < nc[j])


#: Neurons per tile of :func:`relpsp_linear_backward_weight_rows`: the sums of eight rows over a
#: tile (16 KiB in float32) stay in the first-level cache while the batch streams through.
ROW_TILE = 512


@njit(parallel=True, cache=True, fastmath={"contract"})
def relpsp_linear_backward_weight_rows(t_in, grad_scaled, anchor, n_parts, grad_weight_t):  # pragma: no cover
    """Eq. 14 over every (input, neuron) pair, without the causal prefix:
    ``grad_weight_t[i, j] = sum_b a[b, j] * min(t_in[b, i] - anchor[b, j], 0)``.

    ``t_in`` ``(B, N_in)`` are the layer's input times (``inf`` = silent), ``grad_scaled``
    ``a = dL/dt_out * inv_slope`` and ``anchor`` ``(B, N_out)`` as the forward pass wrote them;
    ``grad_weight_t`` ``(N_in, N_out)`` is written. An input is causal for a neuron iff it spikes
    before the neuron's anchor, and then ``t_i - t_j < 0``; a later or silent input gives
    ``min(., 0) = 0``; a silent neuron's anchor follows every spiking input, so all of them count.
    So this is the causal-prefix sum of :func:`relpsp_linear_backward_weight`, except where the
    rounded spike time ``r / s`` falls on the wrong side of an input time (a term of the size of
    that rounding).

    Rows go eight at a time (``a`` and ``anchor`` loaded once for eight inputs, the eight sums
    kept in the first-level cache for a tile of :data:`ROW_TILE` neurons), and a sample in which
    none of the eight inputs spikes is skipped, so the work is about ``B * N_in * N_out`` for a
    layer whose inputs mostly spike, where the prefix kernel pays more per pair. The rows are cut
    into ranges of a multiple of eight, one task each; each row is summed over the batch in order,
    so the result does not depend on ``n_parts``.
    """
    batch = t_in.shape[0]
    n_in, n_out = grad_weight_t.shape
    zero = np.zeros(1, dtype=t_in.dtype)[0]
    inf = np.full(1, np.inf, dtype=t_in.dtype)[0]
    rows = ((n_in + n_parts - 1) // n_parts + 7) // 8 * 8
    for part in prange((n_in + rows - 1) // rows):
        i_lo = part * rows
        i_hi = min(i_lo + rows, n_in)
        acc0 = np.empty(ROW_TILE, dtype=t_in.dtype)  # eight separate arrays: faster than rows of one
        acc1 = np.empty(ROW_TILE, dtype=t_in.dtype)
        acc2 = np.empty(ROW_TILE, dtype=t_in.dtype)
        acc3 = np.empty(ROW_TILE, dtype=t_in.dtype)
        acc4 = np.empty(ROW_TILE, dtype=t_in.dtype)
        acc5 = np.empty(ROW_TILE, dtype=t_in.dtype)
        acc6 = np.empty(ROW_TILE, dtype=t_in.dtype)
        acc7 = np.empty(ROW_TILE, dtype=t_in.dtype)
        for j_lo in range(0, n_out, ROW_TILE):
            j_hi = min(j_lo + ROW_TILE, n_out)
            width = j_hi - j_lo
            i = i_lo
            while i + 8 <= i_hi:
                acc0[:width] = zero
                acc1[:width] = zero
                acc2[:width] = zero
                acc3[:width] = zero
                acc4[:width] = zero
                acc5[:width] = zero
                acc6[:width] = zero
                acc7[:width] = zero
                for b in range(batch):
                    t0, t1, t2, t3 = t_in[b, i], t_in[b, i + 1], t_in[b, i + 2], t_in[b, i + 3]
                    t4, t5, t6, t7 = t_in[b, i + 4], t_in[b, i + 5], t_in[b, i + 6], t_in[b, i + 7]
                    if min(min(min(t0, t1), min(t2, t3)), min(min(t4, t5), min(t6, t7))) == inf:
                        continue
                    a = grad_scaled[b, j_lo:j_hi]
                    t_j = anchor[b, j_lo:j_hi]
                    for j in range(width):
                        aj, tj = a[j], t_j[j]
                        acc0[j] += aj * min(t0 - tj, zero)
                        acc1[j] += aj * min(t1 - tj, zero)
                        acc2[j] += aj * min(t2 - tj, zero)
                        acc3[j] += aj * min(t3 - tj, zero)
                        acc4[j] += aj * min(t4 - tj, zero)
                        acc5[j] += aj * min(t5 - tj, zero)
                        acc6[j] += aj * min(t6 - tj, zero)
                        acc7[j] += aj * min(t7 - tj, zero)
                grad_weight_t[i, j_lo:j_hi] = acc0[:width]
                grad_weight_t[i + 1, j_lo:j_hi] = acc1[:width]
                grad_weight_t[i + 2, j_lo:j_hi] = acc2[:width]
                grad_weight_t[i + 3, j_lo:j_hi] = acc3[:width]
                grad_weight_t[i + 4, j_lo:j_hi] = acc4[:width]
                grad_weight_t[i + 5, j_lo:j_hi] = acc5[:width]
                grad_weight_t[i + 6, j_lo:j_hi] = acc6[:width]
                grad_weight_t[i + 7, j_lo:j_hi] = acc7[:width]
                i += 8
            while i < i_hi:  # the last rows of the layer
                acc0[:width] = zero
                for b in range(batch):
                    t0 = t_in[b, i]
                    if t0 == inf:
                        continue
                    a = grad_scaled[b, j_lo:j_hi]
                    t_j = anchor[b, j_lo:j_hi]
                    for j in range(width):
                        acc0[j] += a[j] * min(t0 - t_j[j], zero)
                grad_weight_t[i, j_lo:j_hi] = acc0[:width]
                i += 1


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def input_grad_row(weight_t, n_out, a, nc, order_row, k_start, count, suffix, out_row):  # pragma: no cover - compiled
    """One sample of eq. 15: ``out_row[i] = sum_j a[j] * w_ij`` over the neurons ``j < n_out`` for
    which ``i`` is causal, for the spiking inputs ``i = order_row[k]``, ``k_start <= k < count``;
    other entries untouched. (``weight_t`` may have padding columns beyond ``n_out``.)

    With ``suffix``, the sum runs over the neurons for which ``i`` is *not* causal instead and is
    subtracted from ``out_row[i]``: the correction of a sum over all neurons (``stdbp.kernels.numba_stack``).
    Spikes go four at a time (``a`` and the causal lengths ``nc`` loaded once for four rows).
    The sum over ``j`` may be reassociated (vectorised), which is deterministic for a given
    machine and build.
    """
    zero = np.zeros(1, dtype=out_row.dtype)[0]
    k_cast = np.zeros(4, dtype=out_row.dtype)
    k = k_start
    while k + 4 <= count:
        i0, i1, i2, i3 = order_row[k], order_row[k + 1], order_row[k + 2], order_row[k + 3]
        w0, w1, w2, w3 = weight_t[i0], weight_t[i1], weight_t[i2], weight_t[i3]
        for m in range(4):
            k_cast[m] = k + m
        f0, f1, f2, f3 = k_cast[0], k_cast[1], k_cast[2], k_cast[3]
        acc0 = acc1 = acc2 = acc3 = zero
        for j in range(n_out):
            aj, nj = a[j], nc[j]
            acc0 += aj * w0[j] * ((f0 < nj) != suffix)
            acc1 += aj * w1[j] * ((f1 < nj) != suffix)
            acc2 += aj * w2[j] * ((f2 < nj) != suffix)
            acc3 += aj * w3[j] * ((f3 < nj) != suffix)
        if suffix:
            out_row[i0], out_row[i1], out_row[i2], out_row[i3] = (
                out_row[i0] - acc0,
                out_row[i1] - acc1,
                out_row[i2] - acc2,
                out_row[i3] - acc3,
            )
        else:
            out_row[i0], out_row[i1], out_row[i2], out_row[i3] = acc0, acc1, acc2, acc3
        k += 4
    while k < count:
        i0 = order_row[k]
        w0 = weight_t[i0]
        k_cast[0] = k
        f0 = k_cast[0]
        acc0 = zero
        for j in range(n_out):
            acc0 += a[j] * w0[j] * ((f0 < nc[j]) != suffix)
        out_row[i0] = out_row[i0] - acc0 if suffix else acc0
        k += 1


@njit(parallel=True, cache=True)
def relpsp_linear_backward_input(weight_t, grad_scaled, n_causal, order, n_spikes, grad_in):  # pragma: no cover
    """``grad_in[b, i] = sum_j a[b, j] * w_ij`` over neurons ``j`` for which ``i`` is causal (eq. 15).

    ``grad_in`` is ``(B, N_in)`` and must be zeroed by the caller; one sample per task
    (:func:`input_grad_row`).
    """
    for b in prange(grad_in.shape[0]):
        input_grad_row(
            weight_t,
            weight_t.shape[1],
            grad_scaled[b].copy(),
            n_causal[b].copy(),
            order[b],
            0,
            n_spikes[b],
            False,
            grad_in[b],
        )


#: Widest layer whose input gradient (eq. 15) is summed neuron by neuron over all its inputs
#: (:func:`_input_grad_narrow`): the sum over neurons per input (:func:`input_grad_row`) does
#: not vectorise for one or two vectors of neurons.
NARROW = 16


@njit(cache=True, nogil=True)
def _input_grad_narrow(weight, a, nc, order_row, count, rank, out_row):  # pragma: no cover - compiled
    """Eq. 15 for one sample of a narrow layer: ``out_row[i] = sum_j a[j] * weight[j, i]`` over
    the neurons ``j < len(weight)`` for which input ``i`` is causal (its position in time order,
    from ``order_row[:count]``, below ``nc[j]``); 0 for silent inputs. ``weight`` ``(N_out, N_in)``
    (not transposed: the loop runs over the inputs, and vectorises), ``rank`` scratch ``(N_in,)``.
    Neurons are added in order, so the result does not depend on how the layer is padded.
    """
    zero = np.zeros(1, dtype=out_row.dtype)[0]
    inf = np.full(1, np.inf, dtype=out_row.dtype)[0]
    k_cast = np.zeros(1, dtype=out_row.dtype)
    for i in range(out_row.shape[0]):
        rank[i] = inf
        out_row[i] = zero
    for k in range(count):
        k_cast[0] = k
        rank[order_row[k]] = k_cast[0]
    for j in range(weight.shape[0]):
        aj, nj = a[j], nc[j]
        w = weight[j]
        for i in range(out_row.shape[0]):
            out_row[i] += aj * w[i] * (rank[i] < nj)


@njit(parallel=True, cache=True)
def relpsp_linear_backward_input_narrow(weight, grad_scaled, n_causal, order, n_spikes, grad_in):  # pragma: no cover
    """:func:`relpsp_linear_backward_input` for a layer of at most :data:`NARROW` neurons:
    ``weight`` ``(N_out, N_in)`` C-contiguous; ``grad_in`` ``(B, N_in)`` written
    (:func:`_input_grad_narrow`, one sample per task)."""
    for b in prange(grad_in.shape[0]):
        rank = np.empty(grad_in.shape[1], dtype=grad_in.dtype)
        _input_grad_narrow(weight, grad_scaled[b], n_causal[b], order[b], n_spikes[b], rank, grad_in[b])
