"""Event-driven ReL-PSP kernel for the CPU, compiled with numba.

The forward pass sorts each sample's spiking inputs by time (in parallel over the batch) and
scans only them, in that order, per block of neurons and sample, so that a block's weights stay
in cache from one sample to the next. Each
neuron accumulates ``s = sum w`` and ``q = sum w t`` over the inputs seen so far; between two input times its potential is linear, so it fires in ``(t_k, t_next]`` when
``s > 0`` and ``threshold + q <= t_next * s``, at ``(threshold + q) / s`` (eq. 12). The scan
stops as soon as every neuron (of the block) has fired.

The backward pass reuses what the forward pass recorded: the time-sorted spiking inputs, and
for each neuron ``1 / s`` and the length of its causal prefix in that order, so that eqs. 14-15
are sums over a prefix. Weight gradients are reduced over the batch in a fixed order (parallel
over blocks of output neurons), so results are bitwise reproducible.

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


#: Most neurons per block of the scan (blocks are of equal size): a block's weights stay in
#: cache while it is scanned for sample after sample.
BLOCK = 256


def scan_tasks(n_out: int, threads: int) -> tuple[int, int]:
    """``(n_blocks, n_chunks)`` for a layer of ``n_out`` neurons: equal blocks of at most ``BLOCK``
    neurons (as :func:`relpsp_linear_forward` cuts them), and the batch in chunks so that the
    ``n_blocks * n_chunks`` tasks are at least ``2 * threads`` and a multiple of ``threads``."""
    n_blocks = -(-n_out // BLOCK)
    n_chunks = -(-2 * threads // n_blocks)
    while (n_blocks * n_chunks) % threads:
        n_chunks += 1
    return n_blocks, n_chunks


@njit(cache=True, nogil=True)
def _scan_block(times, order, count, weight_t, lo, threshold, nc, s, q):  # pragma: no cover - compiled
    """Scan for the neurons ``lo : lo + len(nc)`` of a layer, branch-free so that it vectorises.

    The loop writes only ``s``, ``q`` and the causal length (few enough arrays for LLVM's alias
    checks). A neuron's ``s`` and ``q`` stop changing once it has fired (its inputs are
    multiplied by 0), so at the end they are its values at firing.
    """
    width = nc.shape[0]
    zero = np.zeros(1, dtype=times.dtype)[0]
    one = np.ones(1, dtype=times.dtype)[0]
    inf = np.full(1, np.inf, dtype=times.dtype)[0]
    k_cast = np.zeros(1, dtype=times.dtype)  # k as the array dtype: zero + k would be float64
    k = 0
    since_check = 0
    while k < count:
        t_k = times[k]
        row = weight_t[order[k], lo : lo + width]
        k += 1
        t_next = times[k] if k < count else inf
        if t_next == t_k:
            for j in range(width):
                w = row[j] * (nc[j] == zero)
                s[j] += w
                q[j] += w * t_k
            continue
        k_cast[0] = k
        kf = k_cast[0]
        for j in range(width):
            active = nc[j] == zero
            w = row[j] * active
            sj = s[j] + w
            qj = q[j] + w * t_k
            s[j] = sj
            q[j] = qj
            nc[j] += kf * (active & (sj > zero) & (threshold + qj <= t_next * sj))
        since_check += 1
        if since_check == 8:
            since_check = 0
            silent = zero
            for j in range(width):
                silent += one * (nc[j] == zero)
            if silent == zero:
                break


@njit(cache=True, nogil=True)
def _finish(nc, s, q, count, t_ref, threshold, t_out, anchor, inv_slope, n_causal):  # pragma: no cover - compiled
    """Write one sample's outputs for a run of neurons from the scan's ``nc``, ``s``, ``q``."""
    zero = np.zeros(1, dtype=s.dtype)[0]
    one = np.ones(1, dtype=s.dtype)[0]
    inf = np.full(1, np.inf, dtype=s.dtype)[0]
    for j in range(nc.shape[0]):
        if nc[j] > zero:
            t_fire = (threshold + q[j]) / s[j]
            t_out[j] = t_fire
            anchor[j] = t_fire
            inv_slope[j] = one / s[j]
            n_causal[j] = nc[j]
        else:
            t_out[j] = inf
            anchor[j] = t_ref
            inv_slope[j] = one
            n_causal[j] = zero + count


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
        n_causal: ``(B, N_out)`` length of the causal prefix of ``order``, stored in the float
            dtype of ``t_in`` so that the loops that use it vectorise (written).
        order: ``(B, N_in)`` int32 spiking input indices in time order (written).
        times: ``(B, N_in)`` their times, in the same order (written).
        n_spikes: ``(B,)`` int32 number of spiking inputs (written).
        n_chunks: the batch is split into this many chunks, so that there are tasks
            (block, chunk) for every thread (:func:`scan_tasks`); results do not depend on it.

    Each neuron keeps ``s = sum w`` and ``q = sum w t`` over the inputs seen so far; it fires in
    ``(t_k, t_next]`` when ``threshold + q <= t_next * s`` with ``s > 0``, at
    ``(threshold + q) / s``. Every sample's spikes are sorted first (in parallel over the batch),
    then scanned per block of neurons and sample (:func:`_scan_block`), the (block, chunk of the
    batch) tasks in parallel.
    """
    batch = t_in.shape[0]
    n_out = weight_t.shape[1]
    horizon = np.full(1, SILENT_HORIZON, dtype=t_in.dtype)[0]
    zero = np.zeros(1, dtype=t_in.dtype)[0]
    for b in prange(batch):
        n_spikes[b] = _sorted_spikes(t_in[b], keys[b], order[b], times[b])
    n_blocks = (n_out + BLOCK - 1) // BLOCK
    block = (n_out + n_blocks - 1) // n_blocks
    chunk = (batch + n_chunks - 1) // n_chunks
    for task in prange(n_blocks * n_chunks):
        lo = (task // n_chunks) * block
        hi = min(lo + block, n_out)
        nc = np.empty(hi - lo, dtype=t_in.dtype)
        s = np.empty(hi - lo, dtype=t_in.dtype)
        q = np.empty(hi - lo, dtype=t_in.dtype)
        first = (task % n_chunks) * chunk
        for b in range(first, min(first + chunk, batch)):
            count = n_spikes[b]
            nc[:] = zero
            s[:] = zero
            q[:] = zero
            _scan_block(times[b], order[b], count, weight_t, lo, threshold, nc, s, q)
            t_ref = (times[b, count - 1] if count > 0 else zero) + horizon
            _finish(nc, s, q, count, t_ref, threshold, t_out[b, lo:hi], anchor[b, lo:hi], inv_slope[b, lo:hi], n_causal[b, lo:hi])


@njit(parallel=True, cache=True)
def relpsp_linear_backward_weight(times, grad_scaled, anchor, n_causal, order, n_blocks, grad_weight_t):  # pragma: no cover
    """``grad_weight_t[i, j] = sum_b a[b, j] * (t_i - t_j)`` over causal ``i`` (eq. 14).

    ``grad_scaled`` is ``a = dL/dt_out * inv_slope``, ``(B, N_out)``; ``grad_weight_t`` is the
    transposed gradient ``(N_in, N_out)``, zeroed by the caller. Parallel over ``n_blocks``
    blocks of output neurons, each summing the batch in order, so the result does not depend on
    the thread count.
    """
    batch = times.shape[0]
    n_out = grad_weight_t.shape[1]
    zero = np.zeros(1, dtype=times.dtype)[0]
    block = (n_out + n_blocks - 1) // n_blocks
    for blk in prange(n_blocks):
        lo = blk * block
        width = min(lo + block, n_out) - lo
        a = np.empty(width, dtype=times.dtype)
        t_j = np.empty(width, dtype=times.dtype)
        nc = np.empty(width, dtype=times.dtype)
        k_cast = np.zeros(1, dtype=times.dtype)  # k as the array dtype: zero + k would be float64
        for b in range(batch):
            longest = zero
            for j in range(width):
                a[j] = grad_scaled[b, lo + j]
                t_j[j] = anchor[b, lo + j]
                nc[j] = n_causal[b, lo + j]
                longest = max(longest, nc[j] if a[j] != zero else zero)
            for k in range(int(longest)):
                t_i = times[b, k]
                k_cast[0] = k
                kf = k_cast[0]
                g = grad_weight_t[order[b, k], lo : lo + width]
                for j in range(width):
                    g[j] += a[j] * (t_i - t_j[j]) * (kf < nc[j])


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def relpsp_linear_backward_input(weight_t, grad_scaled, n_causal, order, n_spikes, grad_in):  # pragma: no cover
    """``grad_in[b, i] = sum_j a[b, j] * w_ij`` over neurons ``j`` for which ``i`` is causal (eq. 15).

    ``grad_in`` is ``(B, N_in)`` and must be zeroed by the caller. The sum over ``j`` may be
    reassociated (vectorised), which is deterministic for a given machine and build.
    """
    batch = grad_in.shape[0]
    n_out = weight_t.shape[1]
    zero = np.zeros(1, dtype=grad_in.dtype)[0]
    for b in prange(batch):
        a = grad_scaled[b].copy()
        nc = n_causal[b].copy()
        k_cast = np.zeros(1, dtype=grad_in.dtype)
        for k in range(n_spikes[b]):
            i = order[b, k]
            row = weight_t[i]
            k_cast[0] = k
            kf = k_cast[0]
            acc = zero
            for j in range(n_out):
                acc += a[j] * row[j] * (kf < nc[j])
            grad_in[b, i] = acc


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
