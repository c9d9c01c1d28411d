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
            def potential(t: float) -> float:
                return float(np.sum(w[j] * np.maximum(0.0, t - times)))

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
