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


@njit(cache=True, nogil=True)
def pool_plane(plane, k_h, k_w, s_h, s_w, t_out, argmin, inf):  # pragma: no cover - compiled
    """One ``(H, W)`` plane: ``t_out`` ``(H_out, W_out)`` the earliest time of each window,
    ``argmin`` (int32) its flat index ``y * W + x``, or -1 for a window without spikes
    (also used by the fused convolution and pooling of ``numba_conv``)."""
    width = plane.shape[1]
    for oy in range(t_out.shape[0]):
        for ox in range(t_out.shape[1]):
            best = inf
            where = -1
            for dy in range(k_h):
                y = oy * s_h + dy
                for dx in range(k_w):
                    x = ox * s_w + dx
                    v = plane[y, x]
                    earlier = v < best  # branch-free: which input wins is unpredictable
                    where = y * width + x if earlier else where
                    best = v if earlier else best
            t_out[oy, ox] = best
            argmin[oy, ox] = where


@njit(cache=True, nogil=True)
def pool_plane_backward(grad_out, argmin, grad_in):  # pragma: no cover - compiled
    """One plane of :func:`pool_backward`: ``grad_in`` (``H * W``, zeroed by the caller) gets each
    window's gradient (``grad_out``, ``argmin`` flat ``(H_out * W_out)``) at its earliest spike."""
    for o in range(grad_out.shape[0]):
        where = argmin[o]
        if where >= 0:
            grad_in[where] += grad_out[o]


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
    inf = np.full(1, np.inf, dtype=t_in.dtype)[0]
    zero = np.zeros(1, dtype=t_in.dtype)[0]
    bad = 0
    for p in prange(t_in.shape[0]):
        for y in range(t_in.shape[1]):
            for x in range(t_in.shape[2]):
                bad += np.int64(not t_in[p, y, x] >= zero)
        pool_plane(t_in[p], k_h, k_w, s_h, s_w, t_out[p], argmin[p], inf)
    return bad


@njit(parallel=True, cache=True)
def pool_backward(grad_out, argmin, grad_in):  # pragma: no cover - compiled
    """``grad_in`` (``(P, H * W)``, written): each window's gradient at its earliest spike, 0 elsewhere."""
    zero = np.zeros(1, dtype=grad_in.dtype)[0]
    for p in prange(grad_out.shape[0]):
        grad_in[p] = zero
        pool_plane_backward(grad_out[p].reshape(-1), argmin[p].reshape(-1), grad_in[p])
