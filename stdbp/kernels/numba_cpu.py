"""Event-driven ReL-PSP kernel for the CPU, compiled with numba.

Per sample, and in parallel over the batch, the forward pass scans only the inputs that spike,
in time order. Each neuron accumulates ``s = sum w`` and ``q = sum w t`` over the inputs seen
so far; between two input times its potential is linear, so it fires in ``(t_k, t_next]`` when
``s > 0`` and ``threshold + q <= t_next * s``, at ``(threshold + q) / s`` (eq. 12). The scan
stops as soon as every neuron has fired.

The backward pass reuses what the forward pass recorded: the time-sorted spiking inputs, and
for each neuron ``1 / s`` and the length of its causal prefix in that order, so that eqs. 14-15
are sums over a prefix. Weight gradients are reduced over the batch in a fixed order (parallel
over blocks of output neurons), so results are bitwise reproducible.

Arrays are float32 or float64; every constant is cast to the array's type, since a Python
constant in a float32 loop silently promotes it to float64 and stops LLVM vectorising it.
Loops write to local arrays or a single row, for the same reason (alias checks).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .reference import SILENT_HORIZON


@njit(cache=True, nogil=True)
def _radix_sort_indices(keys, order, scratch, count):  # pragma: no cover - compiled
    """Sort ``order[:count]`` by ``keys[order[k]]`` (uint32 bit patterns of times >= 0), stably.

    LSD radix sort on the float bits with the sign bit cleared (so -0.0 sorts as 0.0), four
    passes of 8 bits; a pass whose digit is the same for every key is skipped.
    """
    hist = np.zeros(256, dtype=np.int64)
    src, dst = order, scratch
    for shift in range(0, 32, 8):
        hist[:] = 0
        for k in range(count):
            hist[((keys[src[k]] & 0x7FFFFFFF) >> shift) & 0xFF] += 1
        if hist.max() == count:
            continue
        total = 0
        for d in range(256):
            c = hist[d]
            hist[d] = total
            total += c
        for k in range(count):
            d = ((keys[src[k]] & 0x7FFFFFFF) >> shift) & 0xFF
            dst[hist[d]] = src[k]
            hist[d] += 1
        src, dst = dst, src
    if src is not order:
        order[:count] = src[:count]


@njit(cache=True, nogil=True)
def _sorted_spikes(t_row, key_row, use_radix, order_row, times_row):  # pragma: no cover - compiled
    """Write the indices and times of the finite entries of ``t_row`` in time order.

    Returns the number of spiking inputs. Short lists use insertion sort; longer ones a radix
    sort on ``key_row`` (the uint32 view of a float32 ``t_row``) or, for float64, argsort.
    """
    count = 0
    for i in range(t_row.shape[0]):
        if t_row[i] < np.inf:
            order_row[count] = i
            count += 1
    if count <= 32:
        for a in range(1, count):
            key_i = order_row[a]
            key_t = t_row[key_i]
            c = a - 1
            while c >= 0 and t_row[order_row[c]] > key_t:
                order_row[c + 1] = order_row[c]
                c -= 1
            order_row[c + 1] = key_i
    elif use_radix:
        _radix_sort_indices(key_row, order_row, np.empty(count, dtype=order_row.dtype), count)
    else:
        tt = np.empty(count, dtype=t_row.dtype)
        for a in range(count):
            tt[a] = t_row[order_row[a]]
        perm = np.argsort(tt)
        idx = order_row[:count].copy()
        for a in range(count):
            order_row[a] = idx[perm[a]]
    for a in range(count):
        times_row[a] = t_row[order_row[a]]
    return count


#: Layers with at most this many neurons use the scalar scan (branches, early exit at the
#: last neuron's spike); wider ones the vectorised two-pass scan.
NARROW = 32


@njit(cache=True, nogil=True)
def _scan_narrow(times, order, count, weight_t, threshold, nc, s_fire, q_fire):  # pragma: no cover - compiled
    """Scan for a narrow layer: record each neuron's causal length, ``s`` and ``q`` as it fires."""
    n_out = nc.shape[0]
    zero = np.zeros(1, dtype=times.dtype)[0]
    inf = np.full(1, np.inf, dtype=times.dtype)[0]
    s = np.zeros(n_out, dtype=times.dtype)
    q = np.zeros(n_out, dtype=times.dtype)
    remaining = n_out
    k = 0
    while k < count and remaining > 0:
        t_k = times[k]
        row = weight_t[order[k]]
        k += 1
        for j in range(n_out):
            s[j] += row[j]
            q[j] += row[j] * t_k
        t_next = times[k] if k < count else inf
        if t_next == t_k:  # a tie: the group is checked once its last input is in
            continue
        for j in range(n_out):
            if nc[j] == zero and s[j] > zero and threshold + q[j] <= t_next * s[j]:
                nc[j] = zero + k
                s_fire[j] = s[j]
                q_fire[j] = q[j]
                remaining -= 1


@njit(cache=True, nogil=True)
def _scan_wide(times, order, count, weight_t, threshold, nc, s_fire, q_fire):  # pragma: no cover - compiled
    """Scan for a wide layer, branch-free so that it vectorises.

    The loop writes only ``s``, ``q`` and the causal length (few enough arrays for LLVM's alias
    checks). A neuron's ``s`` and ``q`` stop changing once it has fired (its inputs are
    multiplied by 0), so at the end they are its values at firing.
    """
    n_out = nc.shape[0]
    zero = np.zeros(1, dtype=times.dtype)[0]
    one = np.ones(1, dtype=times.dtype)[0]
    inf = np.full(1, np.inf, dtype=times.dtype)[0]
    s, q = s_fire, q_fire
    k_cast = np.zeros(1, dtype=times.dtype)  # k as the array dtype: zero + k would be float64
    k = 0
    since_check = 0
    while k < count:
        t_k = times[k]
        row = weight_t[order[k]]
        k += 1
        t_next = times[k] if k < count else inf
        if t_next == t_k:
            for j in range(n_out):
                w = row[j] * (nc[j] == zero)
                s[j] += w
                q[j] += w * t_k
            continue
        k_cast[0] = k
        kf = k_cast[0]
        for j in range(n_out):
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
            for j in range(n_out):
                silent += one * (nc[j] == zero)
            if silent == zero:
                break


@njit(parallel=True, cache=True)
def relpsp_linear_forward(t_in, keys, use_radix, weight_t, threshold, t_out, anchor, inv_slope, n_causal, order, times, n_spikes):  # pragma: no cover
    """Forward scan.

    Args:
        t_in: ``(B, N_in)`` input times, ``inf`` = silent.
        keys: ``t_in`` viewed as uint32 when it is float32 (radix sort), else any ``(B, 1)`` uint32 array.
        use_radix: whether ``keys`` is that view.
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

    Each neuron keeps ``s = sum w`` and ``q = sum w t`` over the inputs seen so far; it fires in
    ``(t_k, t_next]`` when ``threshold + q <= t_next * s`` with ``s > 0``, at
    ``(threshold + q) / s``. Narrow layers use :func:`_scan_narrow`, wide ones :func:`_scan_wide`.
    """
    batch, n_in = t_in.shape
    n_out = weight_t.shape[1]
    inf = np.full(1, np.inf, dtype=t_in.dtype)[0]
    horizon = np.full(1, SILENT_HORIZON, dtype=t_in.dtype)[0]
    one = np.ones(1, dtype=t_in.dtype)[0]
    zero = np.zeros(1, dtype=t_in.dtype)[0]
    for b in prange(batch):
        count = _sorted_spikes(t_in[b], keys[b], use_radix, order[b], times[b])
        n_spikes[b] = count
        nc = np.zeros(n_out, dtype=t_in.dtype)  # local: LLVM vectorises loops over local arrays
        s = np.zeros(n_out, dtype=t_in.dtype)
        q = np.zeros(n_out, dtype=t_in.dtype)
        if n_out <= NARROW:
            _scan_narrow(times[b], order[b], count, weight_t, threshold, nc, s, q)
        else:
            _scan_wide(times[b], order[b], count, weight_t, threshold, nc, s, q)
        t_ref = (times[b, count - 1] if count > 0 else zero) + horizon
        for j in range(n_out):
            if nc[j] > zero:
                t_fire = (threshold + q[j]) / s[j]
                t_out[b, j] = t_fire
                anchor[b, j] = t_fire
                inv_slope[b, j] = one / s[j]
            else:
                t_out[b, j] = inf
                anchor[b, j] = t_ref
                inv_slope[b, j] = one
                nc[j] = zero + count
        n_causal[b] = nc


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
