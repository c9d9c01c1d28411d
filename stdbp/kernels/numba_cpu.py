"""Event-driven ReL-PSP kernel for the CPU, compiled with numba.

The forward pass sorts each sample's spiking inputs by time (in parallel over the batch) and
scans only them, in that order, per block of neurons and chunk of the batch (:func:`_scan_block`).
Each neuron accumulates ``s = sum w`` and ``r = threshold + sum w t`` over the inputs integrated
so far; between two input times its potential is linear, so it fires in ``(t_k, t_next]`` when
``s > 0`` and ``r <= t_next * s``, at ``r / s`` (eq. 12). A block's scan stops as soon as all its
neurons have fired.

The backward pass reuses what the forward pass recorded: the time-sorted spiking inputs, and
for each neuron ``1 / s`` and the length of its causal prefix in that order, so that eqs. 14-15
are sums over a prefix. Eq. 14 can also be summed over every (input, neuron) pair as
``a * min(t_i - t_j, 0)`` (:func:`relpsp_linear_backward_weight_rows`), faster where most
inputs spike; layers of at most :data:`NARROW` neurons sum eq. 15 neuron by neuron over the
inputs (:func:`relpsp_linear_backward_input_narrow`). Weight gradients are summed over the
batch in a fixed order (parallel over ranges of rows), so results are bitwise reproducible for
any thread count.

Arrays are float32 or float64; every constant is cast to the array's type, since a Python
constant in a float32 loop silently promotes it to float64 and stops LLVM vectorising it.
Loops write to local arrays or a single row, for the same reason (alias checks).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .reference import SILENT_HORIZON


@njit(cache=True, nogil=True)
def _sorted_spikes(t_row, key_row, order_row, times_row):  # pragma: no cover - compiled
    """Write the indices and times of the finite entries of ``t_row`` in time order (stable).

    Returns the number of spiking inputs. ``key_row`` holds the bit patterns of ``|t_row|`` as
    integers, which grow with the time and roughly with its logarithm: a bucket pass over them
    (four buckets per spike, between the smallest positive and the largest key; zeros in the first)
    leaves the list nearly sorted even when the times are heavy-tailed, and an insertion sort
    finishes it. Should the insertion sort move too much, a stable merge sort takes over.
    Equal times stay in index order.
    """
    count = 0
    k_min = np.iinfo(key_row.dtype).max
    k_max = 0
    for i in range(t_row.shape[0]):
        if t_row[i] < np.inf:
            order_row[count] = i
            count += 1
            key = key_row[i]
            k_max = max(k_max, key)
            if key > 0:
                k_min = min(k_min, key)
    if count > 32 and k_max > k_min:
        n_buckets = 4 * count  # mostly 0 or 1 spike per bucket: few, predictable insertion moves
        scale = (n_buckets - 1) / (np.float64(k_max) - np.float64(k_min))
        start = np.zeros(n_buckets + 1, dtype=np.int32)
        bucket = np.empty(count, dtype=np.int32)
        for a in range(count):
            d = max(0, int((np.float64(key_row[order_row[a]]) - np.float64(k_min)) * scale))
            bucket[a] = d
            start[d + 1] += 1
        for d in range(n_buckets):
            start[d + 1] += start[d]
        idx = order_row[:count].copy()
        for a in range(count):
            d = bucket[a]
            order_row[start[d]] = idx[a]
            start[d] += 1
    for a in range(count):
        times_row[a] = t_row[order_row[a]]
    moves = 0
    budget = 16 * count + 64
    for a in range(1, count):
        key_t = times_row[a]
        if times_row[a - 1] <= key_t:
            continue
        key_i = order_row[a]
        c = a - 1
        while c >= 0 and times_row[c] > key_t:
            times_row[c + 1] = times_row[c]
            order_row[c + 1] = order_row[c]
            c -= 1
        times_row[c + 1] = key_t
        order_row[c + 1] = key_i
        moves += a - 1 - c
        if moves > budget:
            perm = np.argsort(times_row[:count], kind="mergesort")
            idx = order_row[:count].copy()
            tt = times_row[:count].copy()
            for e in range(count):
                order_row[e] = idx[perm[e]]
                times_row[e] = tt[perm[e]]
            break
    return count


@njit(cache=True, nogil=True)
def _count_invalid(t_row):  # pragma: no cover - compiled
    """How many entries of the 1-D ``t_row`` are not spike times (NaN or negative; ``inf`` is one).

    The forward kernels count them while the input is in cache, and their callers raise
    (``stdbp.functional.check_spike_times`` names the problem), so that no separate pass over
    the input is needed.
    """
    zero = np.zeros(1, dtype=t_row.dtype)[0]
    bad = 0
    for i in range(t_row.shape[0]):
        bad += np.int64(not t_row[i] >= zero)
    return bad


#: Most neurons per block of the scan (blocks are of equal size, a multiple of 8 neurons): a
#: block's state (four floats per neuron) stays in the first-level cache while its weight rows
#: stream through; wider blocks pay the per-input overhead (row slicing, alias checks) less often.
BLOCK = 1024


@njit(cache=True)
def block_width(n_out: int) -> int:
    """Neurons per block of the scan: the layer in equal blocks of at most ``BLOCK`` neurons,
    rounded up to a multiple of 8 (whole vectors); the last block may be narrower."""
    n_blocks = (n_out + BLOCK - 1) // BLOCK
    return ((n_out + n_blocks - 1) // n_blocks + 7) // 8 * 8


def scan_tasks(n_out: int, threads: int) -> tuple[int, int]:
    """``(n_blocks, n_chunks)`` for a layer of ``n_out`` neurons: blocks of :func:`block_width`
    neurons (as :func:`relpsp_linear_forward` cuts them), and the batch in chunks so that the
    ``n_blocks * n_chunks`` tasks are at least ``2 * threads`` and a multiple of ``threads``."""
    n_blocks = -(-n_out // block_width(n_out))
    n_chunks = -(-2 * threads // n_blocks)
    while (n_blocks * n_chunks) % threads:
        n_chunks += 1
    return n_blocks, n_chunks


@njit(cache=True, nogil=True, fastmath={"contract"})
def _scan_block(times, order, count, weight_t, lo, s, r, n, a):  # pragma: no cover - compiled
    """Scan the sorted spiking inputs for the neurons ``lo : lo + len(s)`` of a layer.

    Per neuron: ``s = sum w`` and ``r = threshold + sum w t`` over the inputs integrated so far,
    ``n`` their number, and ``a`` = 1 until the neuron fires, then 0 (its later inputs are
    multiplied by 0, so ``s``, ``r`` and ``n`` keep their values at firing). Input ``k`` at ``t``
    is integrated, then the neuron fires in ``(t, t_next]`` when ``s > 0`` and ``r <= t_next * s``.
    When the next input comes at the same time there is nothing to test: ``t_next`` is then NaN,
    which fails every comparison. Inputs go four at a time, so that each neuron's state is loaded
    and stored once per four inputs; the loop over neurons is branch-free and vectorises.
    """
    width = s.shape[0]
    zero = np.zeros(1, dtype=times.dtype)[0]
    inf = np.full(1, np.inf, dtype=times.dtype)[0]
    nan = np.full(1, np.nan, dtype=times.dtype)[0]
    k = 0
    while k + 4 <= count:
        t0, t1, t2, t3 = times[k], times[k + 1], times[k + 2], times[k + 3]
        t4 = times[k + 4] if k + 4 < count else inf
        x0 = t1 if t1 != t0 else nan
        x1 = t2 if t2 != t1 else nan
        x2 = t3 if t3 != t2 else nan
        x3 = t4 if t4 != t3 else nan
        w0 = weight_t[order[k], lo : lo + width]
        w1 = weight_t[order[k + 1], lo : lo + width]
        w2 = weight_t[order[k + 2], lo : lo + width]
        w3 = weight_t[order[k + 3], lo : lo + width]
        k += 4
        if k % 32 == 0:  # stop once every neuron has fired (an integer count, so that it vectorises)
            alive = 0
            for j in range(width):
                alive += a[j] != zero
            if alive == 0:
                return
        for j in range(width):  # the four steps written out: one load and one store of the state
            aj, sj, rj, nj = a[j], s[j], r[j], n[j]
            w = w0[j] * aj
            sj += w
            rj += w * t0
            nj += aj
            aj = zero if (sj > zero) & (rj <= x0 * sj) else aj
            w = w1[j] * aj
            sj += w
            rj += w * t1
            nj += aj
            aj = zero if (sj > zero) & (rj <= x1 * sj) else aj
            w = w2[j] * aj
            sj += w
            rj += w * t2
            nj += aj
            aj = zero if (sj > zero) & (rj <= x2 * sj) else aj
            w = w3[j] * aj
            sj += w
            rj += w * t3
            nj += aj
            a[j] = zero if (sj > zero) & (rj <= x3 * sj) else aj
            s[j], r[j], n[j] = sj, rj, nj
    while k < count:
        t0 = times[k]
        t1 = times[k + 1] if k + 1 < count else inf
        x0 = t1 if t1 != t0 else nan
        w0 = weight_t[order[k], lo : lo + width]
        k += 1
        for j in range(width):
            aj, sj, rj, nj = a[j], s[j], r[j], n[j]
            w = w0[j] * aj
            sj += w
            rj += w * t0
            n[j] = nj + aj
            a[j] = zero if (sj > zero) & (rj <= x0 * sj) else aj
            s[j], r[j] = sj, rj


@njit(cache=True, nogil=True)
def _finish(s, r, n, a, t_ref, t_out, anchor, inv_slope, n_causal):  # pragma: no cover - compiled
    """Write one sample's outputs for a run of neurons from the scan's ``s``, ``r``, ``n``, ``a``."""
    zero = np.zeros(1, dtype=s.dtype)[0]
    one = np.ones(1, dtype=s.dtype)[0]
    inf = np.full(1, np.inf, dtype=s.dtype)[0]
    for j in range(s.shape[0]):
        n_causal[j] = n[j]
        if a[j] == zero:
            t_fire = r[j] / s[j]
            t_out[j] = t_fire
            anchor[j] = t_fire
            inv_slope[j] = one / s[j]
        else:
            t_out[j] = inf
            anchor[j] = t_ref
            inv_slope[j] = one


@njit(parallel=True, cache=True)
def relpsp_linear_forward(t_in, keys, weight_t, threshold, t_out, anchor, inv_slope, n_causal, order, times, n_spikes, n_chunks):  # pragma: no cover
    """Forward scan.

    Args:
        t_in: ``(B, N_in)`` input times, ``inf`` = silent.
        keys: ``|t_in|`` viewed as int32 (float32) or int64 (float64): sort keys.
        weight_t: ``(N_in, N_out)`` transposed weights, C-contiguous (one row per input).
        threshold: scalar of the same dtype as ``t_in``.
        t_out: ``(B, N_out)`` output times (written).
        anchor: ``(B, N_out)`` time the backward uses: ``t_out``, or the surrogate time for a
            silent neuron (written).
        inv_slope: ``(B, N_out)`` ``1 / sum_C w``, or 1 for a silent neuron (written).
        n_causal: ``(B, N_out)`` length of the causal prefix of ``order`` (all spiking inputs for
            a silent neuron), stored in the float dtype of ``t_in`` so that the loops that use it
            vectorise (written).
        order: ``(B, N_in)`` int32 spiking input indices in time order (written).
        times: ``(B, N_in)`` their times, in the same order (written).
        n_spikes: ``(B,)`` int32 number of spiking inputs (written).
        n_chunks: the batch is split into this many chunks, so that there are tasks
            (block, chunk) for every thread (:func:`scan_tasks`); results do not depend on it.

    Every sample's spikes are sorted first (in parallel over the batch), then scanned per block
    of neurons and sample (:func:`_scan_block`), the (block, chunk of the batch) tasks in parallel.
    A neuron fires at ``(threshold + sum_C w t) / sum_C w`` (eq. 12). Returns the number of
    input entries that are not spike times (:func:`_count_invalid`).
    """
    batch = t_in.shape[0]
    n_out = weight_t.shape[1]
    horizon = np.full(1, SILENT_HORIZON, dtype=t_in.dtype)[0]
    zero = np.zeros(1, dtype=t_in.dtype)[0]
    one = np.ones(1, dtype=t_in.dtype)[0]
    bad = 0
    for b in prange(batch):
        bad += _count_invalid(t_in[b])
        n_spikes[b] = _sorted_spikes(t_in[b], keys[b], order[b], times[b])
    block = block_width(n_out)
    n_blocks = (n_out + block - 1) // block
    chunk = (batch + n_chunks - 1) // n_chunks
    for task in prange(n_blocks * n_chunks):
        lo = (task // n_chunks) * block
        hi = min(lo + block, n_out)
        s = np.empty(hi - lo, dtype=t_in.dtype)
        r = np.empty(hi - lo, dtype=t_in.dtype)
        n = np.empty(hi - lo, dtype=t_in.dtype)
        a = np.empty(hi - lo, dtype=t_in.dtype)
        first = (task % n_chunks) * chunk
        for b in range(first, min(first + chunk, batch)):
            count = n_spikes[b]
            s[:] = zero
            r[:] = threshold
            n[:] = zero
            a[:] = one
            _scan_block(times[b], order[b], count, weight_t, lo, s, r, n, a)
            t_ref = (times[b, count - 1] if count > 0 else zero) + horizon
            _finish(s, r, n, a, t_ref, t_out[b, lo:hi], anchor[b, lo:hi], inv_slope[b, lo:hi], n_causal[b, lo:hi])
    return bad


@njit(parallel=True, cache=True, fastmath={"contract"})
def relpsp_linear_backward_weight(times, grad_scaled, anchor, n_causal, order, n_spikes, n_parts, grad_weight_t):  # pragma: no cover
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
def _input_grad_row(weight_t, n_out, a, nc, order_row, k_start, count, suffix, out_row):  # pragma: no cover - compiled
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
            out_row[i0], out_row[i1], out_row[i2], out_row[i3] = out_row[i0] - acc0, out_row[i1] - acc1, out_row[i2] - acc2, out_row[i3] - acc3
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
    (:func:`_input_grad_row`).
    """
    for b in prange(grad_in.shape[0]):
        _input_grad_row(weight_t, weight_t.shape[1], grad_scaled[b].copy(), n_causal[b].copy(), order[b], 0, n_spikes[b], False, grad_in[b])


#: Widest layer whose input gradient (eq. 15) is summed neuron by neuron over all its inputs
#: (:func:`_input_grad_narrow`): the sum over neurons per input (:func:`_input_grad_row`) does
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


@njit(parallel=True, cache=True)
def saturate_(grad):  # pragma: no cover - compiled
    """In place: entries of the 1-D ``grad`` beyond the dtype's range become its largest finite
    value with their sign, NaN (``inf - inf``) becomes 0. Returns the number of entries changed.

    A branch-free counting pass first (it vectorises); the fixing pass runs only when needed.
    """
    big = np.full(1, np.finfo(grad.dtype).max, dtype=grad.dtype)[0]
    zero = np.zeros(1, dtype=grad.dtype)[0]
    changed = 0
    for i in prange(grad.shape[0]):
        changed += np.int64(not abs(grad[i]) <= big)
    if changed:
        for i in prange(grad.shape[0]):
            g = grad[i]
            if not abs(g) <= big:
                grad[i] = zero if g != g else (big if g > zero else -big)
    return changed
