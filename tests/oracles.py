"""Independent float64 oracles for the kernels: no sorting tricks, no cumulative sums."""

from __future__ import annotations

import numpy as np
import torch


def relpsp_brute_force(t_in: np.ndarray, weight: np.ndarray, threshold: float) -> np.ndarray:
    """First-spike times by evaluating ``V(t)`` at every distinct input time, in float64.

    ``t_in`` is ``(B, N_in)`` (``inf`` = silent), ``weight`` is ``(N_out, N_in)``. Between two
    distinct input times ``u_{k-1} < u_k`` the potential is linear with slope
    ``sum_{t_i <= u_{k-1}} w_i``; the neuron fires in the first segment where ``V`` reaches
    ``threshold``, or after the last input if the final slope is positive.
    """
    t_in = np.asarray(t_in, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    batch = t_in.shape[0]
    out = np.full((batch, weight.shape[0]), np.inf)
    for b in range(batch):
        spikes = np.isfinite(t_in[b])
        times, w = t_in[b, spikes], weight[:, spikes]  # (K,), (N_out, K)
        grid = np.unique(times)
        for j in range(weight.shape[0]):

            def potential(t: float, w_j: np.ndarray = w[j], times: np.ndarray = times) -> float:
                return float(np.sum(w_j * np.maximum(0.0, t - times)))

            for k in range(1, len(grid) + 1):
                start = grid[k - 1]
                slope = float(np.sum(w[j][times <= start]))
                v_start = potential(start)
                end = grid[k] if k < len(grid) else np.inf
                if slope > 0 and v_start + slope * (end - start) >= threshold:
                    out[b, j] = start + (threshold - v_start) / slope
                    break
    return out


def random_case(
    rng: np.random.Generator,
    batch: int = 6,
    n_in: int = 24,
    n_out: int = 7,
    dtype: torch.dtype = torch.float64,
    p_silent: float = 0.3,
    ties: bool = True,
    weight_mean: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random input times (with ties, silent inputs and a silent sample) and mixed-sign weights."""
    t = rng.uniform(0.0, 2.0, size=(batch, n_in))
    t[rng.random((batch, n_in)) < p_silent] = np.inf
    if ties:
        t = np.where(rng.random((batch, n_in)) < 0.3, np.round(t * 4) / 4, t)  # many equal times
    if batch > 1:
        t[-1] = np.inf  # a silent sample
    w = rng.normal(weight_mean, 0.5, size=(n_out, n_in))
    return torch.tensor(t, dtype=dtype), torch.tensor(w, dtype=dtype)


def relpsp_conv2d_brute_force(
    t: np.ndarray, w: np.ndarray, threshold: float, stride: tuple[int, int], padding: tuple[int, int]
) -> np.ndarray:
    """First threshold crossing of V(t) = sum w max(0, t - t_i) over each explicit receptive field, in float64.

    V is evaluated at every distinct input time of the field; on the segment after ``u_k`` it
    rises with slope ``sum_{t_i <= u_k} w_i``, so a crossing there is at
    ``u_k + (theta - V(u_k)) / slope`` if that is no later than the next input time.
    """
    batch, c_in, height, width = t.shape
    c_out, _, k_h, k_w = w.shape
    h_out = (height + 2 * padding[0] - k_h) // stride[0] + 1
    w_out = (width + 2 * padding[1] - k_w) // stride[1] + 1
    out = np.full((batch, c_out, h_out, w_out), np.inf)
    for b in range(batch):
        for oy in range(h_out):
            for ox in range(w_out):
                times, rows = [], []
                for ky in range(k_h):
                    for kx in range(k_w):
                        y, x = oy * stride[0] - padding[0] + ky, ox * stride[1] - padding[1] + kx
                        if 0 <= y < height and 0 <= x < width:
                            for c in range(c_in):
                                if np.isfinite(t[b, c, y, x]):
                                    times.append(t[b, c, y, x])
                                    rows.append(w[:, c, ky, kx])
                if not times:
                    continue
                ti, wi = np.array(times), np.array(rows)  # (n,), (n, C_out)
                u = np.unique(ti)
                for co in range(c_out):
                    for k, uk in enumerate(u):
                        v = float(np.sum(wi[:, co] * np.maximum(0.0, uk - ti)))
                        slope = float(np.sum(wi[ti <= uk, co]))
                        nxt = u[k + 1] if k + 1 < len(u) else np.inf
                        if slope > 0 and uk + (threshold - v) / slope <= nxt:
                            out[b, co, oy, ox] = uk + (threshold - v) / slope
                            break
    return out
