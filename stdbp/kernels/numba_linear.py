"""Event-driven ReL-PSP kernel for the CPU, compiled with numba.

The forward pass sorts each sample's spiking inputs by time (in parallel over the batch) and
scans only them, in that order, per block of neurons and chunk of the batch (:func:`scan_block`).
Each neuron accumulates ``s = sum w`` and ``r = threshold + sum w t`` over the inputs integrated
so far; between two input times its potential is linear, so it fires in ``(t_k, t_next]`` when
``s > 0`` and ``r <= t_next * s``, at ``r / s`` (eq. 12). A block's scan stops as soon as all its
neurons have fired.

The backward pass (:mod:`stdbp.kernels.numba_linear_backward`) reuses what the forward pass recorded: the time-sorted spiking inputs, and
for each neuron ``1 / s`` and the length of its causal prefix in that order, so that eqs. 14-15
are sums over a prefix. Eq. 14 can also be summed over every (input, neuron) pair as
``a * min(t_i - t_j, 0)`` (``relpsp_linear_backward_weight_rows``), faster where most
inputs spike; layers of at most ``NARROW`` neurons sum eq. 15 neuron by neuron over the
inputs (``relpsp_linear_backward_input_narrow``). Weight gradients are summed over the
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
def sorted_spikes(t_row, key_row, order_row, times_row):  # pragma: no cover - compiled
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
def count_invalid(t_row):  # pragma: no cover - compiled
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
def scan_block(times, order, count, weight_t, lo, s, r, n, a):  # pragma: no cover - compiled
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
def finish_scan(s, r, n, a, t_ref, t_out, anchor, inv_slope, n_causal):  # pragma: no cover - compiled
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
def relpsp_linear_forward(
    t_in, keys, weight_t, threshold, t_out, anchor, inv_slope, n_causal, order, times, n_spikes, n_chunks
):  # pragma: no cover
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
    of neurons and sample (:func:`scan_block`), the (block, chunk of the batch) tasks in parallel.
    A neuron fires at ``(threshold + sum_C w t) / sum_C w`` (eq. 12). Returns the number of
    input entries that are not spike times (:func:`count_invalid`).
    """
    batch = t_in.shape[0]
    n_out = weight_t.shape[1]
    horizon = np.full(1, SILENT_HORIZON, dtype=t_in.dtype)[0]
    zero = np.zeros(1, dtype=t_in.dtype)[0]
    one = np.ones(1, dtype=t_in.dtype)[0]
    bad = 0
    for b in prange(batch):
        bad += count_invalid(t_in[b])
        n_spikes[b] = sorted_spikes(t_in[b], keys[b], order[b], times[b])
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
            scan_block(times[b], order[b], count, weight_t, lo, s, r, n, a)
            t_ref = (times[b, count - 1] if count > 0 else zero) + horizon
            finish_scan(s, r, n, a, t_ref, t_out[b, lo:hi], anchor[b, lo:hi], inv_slope[b, lo:hi], n_causal[b, lo:hi])
    return bad


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
