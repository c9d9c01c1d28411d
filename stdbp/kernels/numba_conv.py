"""Event-driven convolutional ReL-PSP kernel for the CPU, compiled with numba.

Per sample, and in parallel over the batch, the forward pass sorts the sample's ``C_in*H*W``
input spikes once and scans them in time order. Each input pixel lies in the receptive field
of at most ``kH*kW`` output positions, and each spike is scattered to those positions' ``C_out``
neurons. Every neuron keeps ``s = sum w`` and ``q = sum w t`` over the inputs of its field seen
so far; between two of its inputs its potential is linear, so when its next input arrives at
``t_k`` the neuron has already fired iff ``s > 0`` and ``threshold + q <= t_k * s``. It then fires
at ``(threshold + q) / s`` (eq. 12), with the inputs scanned before ``t_k`` as its causal set,
and takes no further input. A neuron that has not fired by its field's last input fires after
it if ``s > 0``, and is silent otherwise. Inputs with equal times: the ones scanned after the
first of the group do not change the test (their PSP is 0 at ``t_k``), so ties enter together.

The causal set of a neuron is a prefix of the sample's global time order (the field's inputs
with global position below ``n_causal``), so the backward pass replays the same scan: for each
spiking input and each neuron it reaches, eq. 15 adds ``a_j w_ij`` to the input's gradient
and eq. 14 adds ``a_j (t_i - t_j)`` to the weight's, with ``a_j = dL/dt_j / sum_C w``. Weight
gradients are summed per sample, then over samples in order: reproducible bitwise and
independent of the thread count.

Silent neurons follow the reference (``conv_reference``): in the backward pass they act as if
they fired at ``t_ref`` = latest input spike of their receptive field + ``SILENT_HORIZON``, with
every spiking input of the field causal and unit slope.

Arrays are float32 or float64. Neuron state is laid out ``(H_out, W_out, C_pad)`` and weights
``(C_in*kH, kW*C_pad)`` with ``kx`` flipped, so that at stride 1 the neurons one input reaches
in an output row, and their weights, are each one contiguous run (``kW*C_pad`` long): the inner
loops run over slices (which also spares numba's negative-index checks) and LLVM vectorises
them. ``C_pad`` is ``C_out`` rounded up to a multiple of 8 with zero weights (never firing, no
gradient), so that every run is whole vectors (for 6 channels: 2.5 -> 1.8 ms for a forward of 64
samples). Output times are written in PyTorch's ``(C_out, H_out, W_out)`` order; where each input
lands (a table per geometry, :func:`reach_table`) is computed once, not per spike. As in
``numba_linear``, constants are cast to the array dtype and hot loops write only local arrays.

A convolution followed by earliest-spike pooling can run in the same call: each sample's output
is pooled plane by plane right after its scan (``numba_pool.pool_plane``) and only the pooled
times are written. Only a window's earliest neuron receives a gradient, so only its state
(anchor, slope, causal length) is kept: a quarter of the neurons' for 2x2 pooling. The backward
pass first sends the pooled gradient to each window's earliest spike
(``numba_pool.pool_plane_backward``), then replays the scan as above.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_linear import count_invalid, sorted_spikes
from .numba_pool import pool_plane, pool_plane_backward
from .reference import SILENT_HORIZON


@njit(cache=True, nogil=True, inline="always")
def _field_range(pos, pad, stride, kernel, n_out):  # pragma: no cover - compiled
    """Output positions ``[lo, hi]`` along one axis whose receptive field holds input ``pos`` (empty if ``hi < lo``)."""
    r = pos + pad
    hi = min(r // stride, n_out - 1)
    lo = max(0, (r - kernel + stride) // stride)
    return lo, hi


@njit(cache=True, nogil=True, inline="always")
def _scan_run(s, q, nc, w, t, kf, threshold, zero):  # pragma: no cover - compiled
    """One input spike at time ``t`` (position ``kf`` in time order) reaches a run of neurons.

    A neuron that has not fired yet first checks whether it fired before ``t``, and if not,
    adds the spike: ``s += w``, ``q += w t``. All arrays are slices of equal length.
    """
    for e in range(s.shape[0]):
        se = s[e]
        qe = q[e]
        ne = nc[e] + kf * ((nc[e] == zero) & (se > zero) & (threshold + qe <= t * se))
        nc[e] = ne
        m = w[e] * (ne == zero)
        s[e] = se + m
        q[e] = qe + m * t


@njit(cache=True, nogil=True)
def _finish_state(s, nc, fire, t_ref, count, anchor, inv_slope, n_causal, zero, one):  # pragma: no cover - compiled
    """After a sample's scan, the state the backward pass needs, for all its neurons (flat arrays in
    the ``(H_out, W_out, C_pad)`` order). ``fire`` is each neuron's time, ``(threshold + q) / s``,
    or ``inf`` if it has not fired; ``t_ref`` the latest spike of its field + ``SILENT_HORIZON``.

    A neuron that has not fired before its field's last input fires after it if ``s > 0``; its
    causal set, like a silent neuron's, is then every spike of the sample (``count``). A silent
    neuron gets ``t_ref`` as its anchor and a unit slope (padding channels are silent).
    """
    for j in range(s.shape[0]):
        fired = (nc[j] > zero) | (s[j] > zero)
        anchor[j] = fire[j] if fired else t_ref[j]
        inv_slope[j] = one / s[j] if fired else one
        n_causal[j] = nc[j] if nc[j] > zero else count


@njit(cache=True, nogil=True, inline="always")
def _grad_run(a, t_j, nc, w, g, t_i, kf, zero):  # pragma: no cover - compiled
    """Eqs. 14-15 for one input spike and a run of neurons: add to ``g``, return the input's gradient."""
    acc = zero
    for e in range(a.shape[0]):
        m = a[e] * (kf < nc[e])
        acc += m * w[e]
        g[e] += m * (t_i - t_j[e])
    return acc


@njit(cache=True, nogil=True, inline="always")
def _grad_run_weight(a, t_j, nc, g, t_i, kf):  # pragma: no cover - compiled
    """Eq. 14 alone (the input's gradient is not wanted): add to ``g``."""
    for e in range(a.shape[0]):
        g[e] += a[e] * (kf < nc[e]) * (t_i - t_j[e])


@njit(cache=True, inline="always")
def _spike_reach(idx, plane, w_in, geometry, c_out):  # pragma: no cover - compiled
    """Where input ``idx`` (flat ``c*H*W + y*W + x``) lands: its ``(c, y, x)``, the output rows and
    columns whose receptive field holds it, and how the scan walks them. With stride 1 it is one
    run over ``(ox, c_out)`` per row ``oy``; otherwise one run over ``c_out`` per ``(oy, ox)``.
    """
    _, _, _, k_h, k_w, stride_h, stride_w, pad_h, pad_w, h_out, w_out = geometry
    c = idx // plane
    y = (idx - c * plane) // w_in
    x = idx - c * plane - y * w_in
    oy_lo, oy_hi = _field_range(y, pad_h, stride_h, k_h, h_out)
    ox_lo, ox_hi = _field_range(x, pad_w, stride_w, k_w, w_out)
    n_runs = 1 if stride_w == 1 else ox_hi - ox_lo + 1
    run = (ox_hi - ox_lo + 1) * c_out if stride_w == 1 else c_out
    return c, y, x, oy_lo, oy_hi, ox_lo, ox_hi, n_runs, run


@njit(cache=True)
def reach_table(geometry, c_out):  # pragma: no cover - compiled
    """:func:`_spike_reach` for every input index, ``(C_in*H*W, 9)`` int64: computed once per
    geometry (by the caller's cache), so that the scans spend no integer divisions per spike."""
    c_in, h_in, w_in = geometry[0], geometry[1], geometry[2]
    plane = h_in * w_in
    table = np.empty((c_in * plane, 9), dtype=np.int64)
    for idx in range(c_in * plane):
        c, y, x, oy_lo, oy_hi, ox_lo, ox_hi, n_runs, run = _spike_reach(idx, plane, w_in, geometry, c_out)
        table[idx, 0], table[idx, 1], table[idx, 2] = c, y, x
        table[idx, 3], table[idx, 4], table[idx, 5], table[idx, 6] = oy_lo, oy_hi, ox_lo, ox_hi
        table[idx, 7], table[idx, 8] = n_runs, run
    return table


@njit(parallel=True, cache=True)
def relpsp_conv2d_forward(
    t_flat,
    keys,
    weight_f,
    threshold,
    geometry,
    reach,
    t_out,
    anchor,
    inv_slope,
    n_causal,
    order,
    times,
    n_spikes,
    pool,
    t_pool,
    argmin,
):  # pragma: no cover
    """Forward scan, and earliest-spike pooling of its output if ``pool`` says so.

    Args:
        t_flat: ``(B, C_in*H*W)`` input times, ``inf`` = silent, C-contiguous.
        keys: ``|t_flat|`` viewed as int32 or int64: sort keys (see ``numba_linear.sorted_spikes``).
        weight_f: ``(C_in*kH, kW*C_pad)`` weights, ``weight_f[c*kH + ky, (kW-1-kx)*C_pad + co] =
            weight[co, c, ky, kx]``: ``kx`` is flipped so that, at stride 1, the output positions
            ``ox, ox+1, ...`` reached by one input use consecutive weights. ``C_pad >= C_out``
            channels: the extra ones have zero weights (the caller pads to whole vectors).
        threshold: scalar of the same dtype as ``t_flat``.
        geometry: ``(C_in, H, W, kH, kW, sH, sW, pH, pW, H_out, W_out)`` ints, in pixels.
        reach: :func:`reach_table` of the geometry.
        t_out: ``(B, C_out*H_out*W_out)`` output times, in PyTorch's ``(C, H, W)`` order (written).
        anchor: ``(B, H_out*W_out*C_pad)`` time the backward uses: the output time, or
            ``t_ref`` for a silent neuron (written). With pooling, ``(B, C_out*PH*PW)``: only
            each window's earliest neuron gets a gradient, so only its state is kept (0 for a
            window without spikes).
        inv_slope: ``1 / sum_C w``, or 1 when silent; laid out as ``anchor`` (written).
        n_causal: causal prefix length in the sample's time order, in the float dtype; laid out
            as ``anchor`` (written).
        order: ``(B, C_in*H*W)`` int32 spiking input indices in time order (written).
        times: ``(B, C_in*H*W)`` their times (written).
        n_spikes: ``(B,)`` int32 number of spiking inputs (written).
        pool: ``(kH, kW, sH, sW)`` of an earliest-spike pooling applied to each sample's output
            as soon as it is computed (``numba_pool.pool_plane``), or ``kH = 0`` for none.
            With pooling, ``t_out`` is not written (pass a ``(0, ...)`` array) and
        t_pool: ``(B, C_out*PH*PW)`` the pooled times, ``(C_out, PH, PW)`` order (written), and
        argmin: ``(B, C_out*PH*PW)`` int32 where in its ``(H_out, W_out)`` plane each window's
            earliest spike is, -1 if none (written); both ``(B, 0)`` without pooling.

    Returns the number of input entries that are not spike times (NaN or negative).
    """
    batch = t_flat.shape[0]
    _, h_in, w_in, k_h, k_w, stride_h, stride_w, pad_h, pad_w, h_out, w_out = geometry
    c_out = weight_f.shape[1] // k_w  # C_pad: the state's channels
    c_real = t_out.shape[1] // (h_out * w_out)
    n_out = h_out * w_out * c_out
    plane_out = h_out * w_out
    pool_h, pool_w, pool_sh, pool_sw = pool
    pooled_h = (h_out - pool_h) // pool_sh + 1 if pool_h > 0 else 0
    pooled_w = (w_out - pool_w) // pool_sw + 1 if pool_h > 0 else 0
    pooled = pooled_h * pooled_w
    inf = np.full(1, np.inf, dtype=t_flat.dtype)[0]
    horizon = np.full(1, SILENT_HORIZON, dtype=t_flat.dtype)[0]
    one = np.ones(1, dtype=t_flat.dtype)[0]
    zero = np.zeros(1, dtype=t_flat.dtype)[0]
    bad = 0
    for b in prange(batch):
        bad += count_invalid(t_flat[b])
        count = sorted_spikes(t_flat[b], keys[b], order[b], times[b])
        n_spikes[b] = count
        s = np.zeros(n_out, dtype=t_flat.dtype)
        q = np.zeros(n_out, dtype=t_flat.dtype)
        nc = np.zeros(n_out, dtype=t_flat.dtype)  # 0 until the neuron fires
        latest = np.zeros(
            h_out * w_out if pool_h == 0 else 0, dtype=t_flat.dtype
        )  # latest spike of each field, 0 if none
        kbuf = np.zeros(1, dtype=t_flat.dtype)  # casts k to the dtype (zero + k would be float64)
        for k in range(count):
            idx = order[b, k]
            t = times[b, k]
            kbuf[0] = k
            kf = kbuf[0]
            c, y, x = reach[idx, 0], reach[idx, 1], reach[idx, 2]
            oy_lo, oy_hi, ox_lo, ox_hi, n_runs, run = (
                reach[idx, 3],
                reach[idx, 4],
                reach[idx, 5],
                reach[idx, 6],
                reach[idx, 7],
                reach[idx, 8],
            )
            if ox_hi < ox_lo:
                continue
            for oy in range(oy_lo, oy_hi + 1):
                if pool_h == 0:  # the silent neurons' reference time; pooling keeps no silent neuron's state
                    latest[oy * w_out + ox_lo : oy * w_out + ox_hi + 1] = t  # spikes come in time order
                w_row = weight_f[c * k_h + y + pad_h - oy * stride_h]
                for r in range(n_runs):
                    ox = ox_lo + r
                    j0 = (oy * w_out + ox) * c_out
                    w0 = (k_w - 1 - (x + pad_w - ox * stride_w)) * c_out
                    _scan_run(
                        s[j0 : j0 + run],
                        q[j0 : j0 + run],
                        nc[j0 : j0 + run],
                        w_row[w0 : w0 + run],
                        t,
                        kf,
                        threshold,
                        zero,
                    )
        kbuf[0] = count
        cnt = kbuf[0]  # the count as the dtype
        # every neuron's time, inf if it has not fired: one flat loop over the state (it vectorises;
        # a loop per output position over C_pad neurons would not)
        fire = np.empty(n_out, dtype=t_flat.dtype)
        for j in range(n_out):
            fire[j] = (threshold + q[j]) / s[j] if (nc[j] > zero) | (s[j] > zero) else inf
        row = t_out[b] if pool_h == 0 else np.empty(c_real * plane_out, dtype=t_flat.dtype)
        for e in range(c_real):  # PyTorch's (C_out, H_out, W_out) order
            for p in range(plane_out):
                row[e * plane_out + p] = fire[p * c_out + e]
        if pool_h == 0:
            t_ref = np.empty(n_out, dtype=t_flat.dtype)
            for p in range(plane_out):
                t_ref[p * c_out : (p + 1) * c_out] = latest[p] + horizon
            _finish_state(s, nc, fire, t_ref, cnt, anchor[b], inv_slope[b], n_causal[b], zero, one)
        for e in range(c_real if pool_h > 0 else 0):  # pooled while the output is in cache
            w_lo, w_hi = e * pooled, (e + 1) * pooled
            pool_plane(
                row[e * plane_out : (e + 1) * plane_out].reshape(h_out, w_out),
                pool_h,
                pool_w,
                pool_sh,
                pool_sw,
                t_pool[b, w_lo:w_hi].reshape(pooled_h, pooled_w),
                argmin[b, w_lo:w_hi].reshape(pooled_h, pooled_w),
                inf,
            )
            for o in range(w_lo, w_hi):  # the state of each window's earliest neuron (one that fired)
                where = argmin[b, o]
                j = where * c_out + e
                anchor[b, o] = fire[j] if where >= 0 else zero
                inv_slope[b, o] = one / s[j] if where >= 0 else zero
                n_causal[b, o] = (nc[j] if nc[j] > zero else cnt) if where >= 0 else zero
    return bad


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def relpsp_conv2d_backward(
    weight_f,
    grad_out,
    pool,
    argmin,
    inv_slope,
    anchor,
    n_causal,
    order,
    times,
    n_spikes,
    geometry,
    reach,
    want_input,
    grad_in,
    grad_w_partial,
):  # pragma: no cover
    """Input and weight gradients by eqs. 15 and 14, replaying the forward scan.

    Args:
        weight_f: ``(C_in*kH, kW*C_out)`` weights in the layout of :func:`relpsp_conv2d_forward`.
        grad_out: ``(B, C_out*H_out*W_out)`` ``dL/dt_out`` in PyTorch's ``(C, H, W)`` order; the
            kernel scales it by ``inv_slope`` into the neuron-state order. After a fused pooling
            (``argmin`` not ``(B, 0)``), ``(B, C_out*PH*PW)``: the gradient of the pooled times,
            which goes to each window's earliest spike first (``numba_pool.pool_plane_backward``).
        pool, argmin: the pooling of :func:`relpsp_conv2d_forward` (``kH = 0`` for none) and the
            ``argmin`` it wrote (``(B, 0)`` for none).
        inv_slope, anchor, n_causal: as written by :func:`relpsp_conv2d_forward` (per window
            after a fused pooling).
        order, times, n_spikes: the sorted spikes written by the forward pass.
        geometry, reach: as for :func:`relpsp_conv2d_forward`.
        want_input: whether to compute ``grad_in`` (a first layer's input needs none).
        grad_in: ``(B, C_in*H*W)`` input-time gradient, zeroed by the caller (written at spiking
            inputs when ``want_input``).
        grad_w_partial: ``(B, C_in*kH, kW*C_out)`` per-sample weight gradients in the layout of
            ``weight_f`` (written); the caller sums them over the batch in order.

    The sum over the neurons an input reaches may be reassociated (vectorised): deterministic
    for a given machine and build.
    """
    batch = grad_in.shape[0]
    _, h_in, w_in, k_h, k_w, stride_h, stride_w, pad_h, pad_w, h_out, w_out = geometry
    c_out = weight_f.shape[1] // k_w
    zero = np.zeros(1, dtype=grad_in.dtype)[0]
    plane_out = h_out * w_out
    pooled = pool[0] > 0
    per_plane = ((h_out - pool[0]) // pool[2] + 1) * ((w_out - pool[1]) // pool[3] + 1) if pooled else plane_out
    c_real = grad_out.shape[1] // per_plane
    for b in prange(batch):
        if pooled:  # the state of each window's earliest neuron, 0 for the others (no gradient)
            g = np.zeros(c_real * plane_out, dtype=grad_in.dtype)
            inv = np.zeros(plane_out * c_out, dtype=grad_in.dtype)
            t_j = np.zeros(plane_out * c_out, dtype=grad_in.dtype)
            nc = np.zeros(plane_out * c_out, dtype=grad_in.dtype)
            for e in range(c_real):
                w_lo, w_hi = e * per_plane, (e + 1) * per_plane
                pool_plane_backward(
                    grad_out[b, w_lo:w_hi], argmin[b, w_lo:w_hi], g[e * plane_out : (e + 1) * plane_out]
                )
                for o in range(w_lo, w_hi):
                    where = argmin[b, o]
                    if where >= 0:
                        j = where * c_out + e
                        inv[j], t_j[j], nc[j] = inv_slope[b, o], anchor[b, o], n_causal[b, o]
        else:
            g = grad_out[b]
            inv = inv_slope[b]
            t_j = anchor[b].copy()
            nc = n_causal[b].copy()
        a = np.zeros(plane_out * c_out, dtype=grad_in.dtype)  # padding channels: no gradient
        for p in range(plane_out):
            for e in range(c_real):
                a[p * c_out + e] = g[e * plane_out + p] * inv[p * c_out + e]
        gw = np.zeros(weight_f.shape, dtype=grad_in.dtype)
        kbuf = np.zeros(1, dtype=grad_in.dtype)
        for k in range(n_spikes[b]):
            idx = order[b, k]
            t_i = times[b, k]
            kbuf[0] = k
            kf = kbuf[0]
            c, y, x = reach[idx, 0], reach[idx, 1], reach[idx, 2]
            oy_lo, oy_hi, ox_lo, ox_hi, n_runs, run = (
                reach[idx, 3],
                reach[idx, 4],
                reach[idx, 5],
                reach[idx, 6],
                reach[idx, 7],
                reach[idx, 8],
            )
            if ox_hi < ox_lo:
                continue
            acc = zero
            for oy in range(oy_lo, oy_hi + 1):
                row = c * k_h + y + pad_h - oy * stride_h
                w_row = weight_f[row]
                g_row = gw[row]
                for r in range(n_runs):
                    ox = ox_lo + r
                    j0 = (oy * w_out + ox) * c_out
                    w0 = (k_w - 1 - (x + pad_w - ox * stride_w)) * c_out
                    if want_input:
                        acc += _grad_run(
                            a[j0 : j0 + run],
                            t_j[j0 : j0 + run],
                            nc[j0 : j0 + run],
                            w_row[w0 : w0 + run],
                            g_row[w0 : w0 + run],
                            t_i,
                            kf,
                            zero,
                        )
                    else:
                        _grad_run_weight(
                            a[j0 : j0 + run], t_j[j0 : j0 + run], nc[j0 : j0 + run], g_row[w0 : w0 + run], t_i, kf
                        )
            if want_input:
                grad_in[b, idx] = acc
        grad_w_partial[b] = gw


@njit(cache=True)
def weight_layout(weight, c_pad):  # pragma: no cover - compiled
    """``weight`` ``(C_out, C_in, kH, kW)`` in the layout of :func:`relpsp_conv2d_forward`:
    ``(C_in*kH, kW*c_pad)``, ``kx`` flipped, zero weights for the padding channels."""
    c_out, c_in, k_h, k_w = weight.shape
    out = np.zeros((c_in * k_h, k_w * c_pad), dtype=weight.dtype)
    for co in range(c_out):
        for c in range(c_in):
            for ky in range(k_h):
                for kx in range(k_w):
                    out[c * k_h + ky, (k_w - 1 - kx) * c_pad + co] = weight[co, c, ky, kx]
    return out


@njit(cache=True)
def weight_gradient(grad_w_partial, c_out, k_h, k_w):  # pragma: no cover - compiled
    """The weight gradient ``(C_out, C_in, kH, kW)`` from the per-sample gradients of
    :func:`relpsp_conv2d_backward` (``(B, C_in*kH, kW*C_pad)``), summed over the batch in order
    (reproducible for any thread count) and saturated as ``numba_linear.saturate_`` does."""
    batch, rows, cols = grad_w_partial.shape
    total = np.zeros((rows, cols), dtype=grad_w_partial.dtype)
    for b in range(batch):
        total += grad_w_partial[b]
    c_in, c_pad = rows // k_h, cols // k_w
    big = np.full(1, np.finfo(total.dtype).max, dtype=total.dtype)[0]
    zero = np.zeros(1, dtype=total.dtype)[0]
    out = np.empty((c_out, c_in, k_h, k_w), dtype=total.dtype)
    for co in range(c_out):
        for c in range(c_in):
            for ky in range(k_h):
                for kx in range(k_w):
                    g = total[c * k_h + ky, (k_w - 1 - kx) * c_pad + co]
                    out[co, c, ky, kx] = g if abs(g) <= big else (zero if g != g else (big if g > zero else -big))
    return out
