"""Earliest-spike pooling for the CPU, compiled with numba: one pass forward, one scatter back.

The reference is ``-max_pool2d(-t)`` in PyTorch (``stdbp.kernels.earliest_spike_pool2d_reference``),
four passes over the input each way. Here each window's earliest spike and its position are
found in one pass (the first of equal times in row-major order, as ``max_pool2d`` picks), and the
backward pass adds each window's gradient to that position; a window without spikes (``inf``)
passes no gradient. Parallel over the ``B * C`` planes.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def pool_forward(t_in, k_h, k_w, s_h, s_w, t_out, argmin):  # pragma: no cover - compiled
    """``t_out[p, oy, ox]`` = earliest time in the window, ``argmin`` its flat index ``y * W + x``
    in the plane, or -1 when the window has no spike.

    Args:
        t_in: ``(P, H, W)`` spike times of ``P = B * C`` planes.
        k_h, k_w, s_h, s_w: window and stride.
        t_out: ``(P, H_out, W_out)`` (written).
        argmin: ``(P, H_out, W_out)`` int32 (written).

    Returns the number of input entries that are not spike times (NaN or negative).
    """
    n_planes, _, width = t_in.shape
    _, h_out, w_out = t_out.shape
    inf = np.full(1, np.inf, dtype=t_in.dtype)[0]
    zero = np.zeros(1, dtype=t_in.dtype)[0]
    bad = 0
    for p in prange(n_planes):
        for y in range(t_in.shape[1]):
            for x in range(width):
                bad += np.int64(not t_in[p, y, x] >= zero)
        for oy in range(h_out):
            for ox in range(w_out):
                best = inf
                where = -1
                for dy in range(k_h):
                    y = oy * s_h + dy
                    for dx in range(k_w):
                        x = ox * s_w + dx
                        v = t_in[p, y, x]
                        earlier = v < best  # branch-free: which input wins is unpredictable
                        where = y * width + x if earlier else where
                        best = v if earlier else best
                t_out[p, oy, ox] = best
                argmin[p, oy, ox] = where
    return bad


@njit(parallel=True, cache=True)
def pool_backward(grad_out, argmin, grad_in):  # pragma: no cover - compiled
    """``grad_in`` (``(P, H * W)``, written): each window's gradient at its earliest spike, 0 elsewhere."""
    n_planes, h_out, w_out = grad_out.shape
    zero = np.zeros(1, dtype=grad_in.dtype)[0]
    for p in prange(n_planes):
        grad_in[p] = zero
        for oy in range(h_out):
            for ox in range(w_out):
                where = argmin[p, oy, ox]
                if where >= 0:
                    grad_in[p, where] += grad_out[p, oy, ox]
