"""What Section 2 measures inside a network: hidden-layer statistics (dead neurons, ``|dt/dV|``)
and membrane-potential traces, for ReL-PSP and alpha-PSP layers alike."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from .. import functional as F
from ..alpha_psp import KERNELS, alpha_psp_linear, membrane_potential, membrane_slope
from ..nn.layers import AlphaSpikingLinear
from ..nn.network import SpikingNetwork

__all__ = ["hidden_statistics", "membrane_traces", "percentiles"]


def _kernel_of(layer: torch.nn.Module) -> str:
    return "alpha" if isinstance(layer, AlphaSpikingLinear) else "relpsp"


def _layer_times(layer: torch.nn.Module, t_in: Tensor, weight: Tensor) -> Tensor:
    if isinstance(layer, AlphaSpikingLinear):
        return alpha_psp_linear(t_in, weight, layer.threshold, layer.tau)
    return F.relpsp_linear(t_in, weight, cast(float, layer.threshold))


def percentiles(values: np.ndarray) -> dict[str, Any]:
    """``{"p50", "p90", "p99", "max", "n", "n_nonfinite"}`` of the finite ``values`` (None if there are none)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    out: dict[str, Any] = {"n": int(values.size), "n_nonfinite": int(values.size - finite.size)}
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
        out[key] = float(np.percentile(finite, q)) if finite.size else None
    return out


@torch.no_grad()
def hidden_statistics(model: SpikingNetwork, t_in: Tensor) -> dict[str, Any]:
    """Dead hidden neurons and ``|dt/dV|`` of hidden spikes, in float64, on one held-out batch.

    Args:
        model: a network of ``SpikingLinear`` or ``AlphaSpikingLinear`` layers.
        t_in: ``(B, N_in)`` input spike times of the held-out batch.

    Returns:
        ``dead_share`` (hidden neurons silent on all ``B`` samples / hidden neurons),
        ``dead_per_layer``, ``silent_fraction`` (silent (sample, hidden neuron) pairs),
        ``dtdv`` (array of ``|dt/dV| = 1/|V'(t_j)|`` over all hidden spikes), ``dtdv_effective``
        (over the hidden spikes that precede at least one spike of the next layer, so that a
        gradient can reach them: the paper's argument of Section 3.1.2), ``dtdv_output``, and
        ``output_dead_share`` / ``output_silent_fraction`` for the output layer.
    """
    times = [t_in.to(torch.float64)]
    weights = [cast(Tensor, layer.weight).detach().to(torch.float64) for layer in model.layers]
    for layer, weight in zip(model.layers, weights, strict=True):
        times.append(_layer_times(layer, times[-1], weight))
    dead, dtdv, effective = [], [], []
    silent = pairs = 0
    dtdv_out = np.empty(0)
    for index, (layer, weight) in enumerate(zip(model.layers, weights, strict=True)):
        t_prev, t_out = times[index], times[index + 1]
        fired = torch.isfinite(t_out)
        slope = membrane_slope(t_out, t_prev, weight, _kernel_of(layer), getattr(layer, "tau", 1.0))
        with np.errstate(divide="ignore"):
            inv = 1.0 / np.abs(slope.numpy())  # (B, N_out), NaN where silent
        if index == len(model.layers) - 1:
            dtdv_out = inv[fired.numpy()]
            output_dead = float((~fired.any(dim=0)).double().mean())
            output_silent = float((~fired).double().mean())
            break
        t_next = times[index + 2]
        latest_next = torch.where(torch.isfinite(t_next), t_next, torch.full_like(t_next, -math.inf)).amax(
            dim=1, keepdim=True
        )
        dead.append(float((~fired.any(dim=0)).double().mean()))
        silent += int((~fired).sum())
        pairs += fired.numel()
        dtdv.append(inv[fired.numpy()])
        effective.append(inv[(fired & (t_out < latest_next)).numpy()])
    hidden = [cast(int, layer.out_features) for layer in model.layers[:-1]]
    return {
        "dead_share": float(sum(d * n for d, n in zip(dead, hidden, strict=True)) / sum(hidden)),
        "dead_per_layer": dead,
        "silent_fraction": silent / max(pairs, 1),
        "dtdv": np.concatenate(dtdv),
        "dtdv_effective": np.concatenate(effective),
        "dtdv_output": dtdv_out,
        "output_dead_share": output_dead,
        "output_silent_fraction": output_silent,
    }


@torch.no_grad()
def membrane_traces(
    weight: Tensor, t_in: Tensor, threshold: float = 1.0, tau: float = 1.0, points: int = 600
) -> dict[str, Any]:
    """Membrane traces of one neuron under both kernels, with its weights and with smaller ones (Figs. 2c, 3c).

    Picks the neuron of ``weight`` whose alpha-PSP potential peaks closest to ``1.25 * threshold``
    on this input (so it fires), preferring one for which the story below holds, and a factor
    ``scale < 1`` that brings its alpha peak down to ``0.85 * threshold``: with ``scale * w`` the
    alpha neuron is dead, while the ReL-PSP neuron with the same weights still fires, later. If
    no alpha neuron fires, all weights are first multiplied by ``boost`` so that the strongest
    peaks at ``1.25 * threshold``.

    Args:
        weight: ``(N_out, N_in)`` weights of a first hidden layer (e.g. the shared initial ones).
        t_in: ``(N_in,)`` input spike times of one image.
        threshold, tau: firing threshold and alpha time constant.
        points: grid points.

    Returns:
        ``neuron``, ``scale``, ``boost``, ``input_times`` (finite, sorted), ``t`` (the grid) and, per
        kernel, ``{"large": V(t), "small": V(t), "t_fire_large", "t_fire_small"}`` (None = silent).
    """
    w = weight.detach().to(torch.float64)
    t_row = t_in.detach().to(torch.float64).reshape(1, -1)
    last = float(t_row[torch.isfinite(t_row)].max()) if bool(torch.isfinite(t_row).any()) else 0.0
    grid = torch.linspace(0.0, last + 4.0 * tau, points, dtype=torch.float64)
    peak = membrane_potential(grid, t_row, w, "alpha", tau)[0].max(dim=0).values  # (N_out,)
    boost = 1.0
    if not bool(torch.isfinite(alpha_psp_linear(t_row, w, threshold, tau)).any()) and float(peak.max()) > 0:
        boost = 1.25 * threshold / float(peak.max())
        w, peak = w * boost, peak * boost
    scale = torch.where(peak > 0, 0.85 * threshold / peak, torch.ones_like(peak))
    small = w * scale.unsqueeze(1)
    fire = {
        ("alpha", "large"): alpha_psp_linear(t_row, w, threshold, tau)[0],
        ("alpha", "small"): alpha_psp_linear(t_row, small, threshold, tau)[0],
        ("relpsp", "large"): F.relpsp_linear(t_row, w, threshold)[0],
        ("relpsp", "small"): F.relpsp_linear(t_row, small, threshold)[0],
    }
    alpha_fires = torch.isfinite(fire["alpha", "large"])
    story = (
        alpha_fires
        & torch.isinf(fire["alpha", "small"])
        & torch.isfinite(fire["relpsp", "large"])
        & torch.isfinite(fire["relpsp", "small"])
    )
    pool = story if bool(story.any()) else alpha_fires if bool(alpha_fires.any()) else torch.ones_like(alpha_fires)
    distance = torch.where(pool, (peak - 1.25 * threshold).abs(), torch.full_like(peak, math.inf))
    j = int(torch.argmin(distance))
    latest = max([float(t[j]) for t in fire.values() if math.isfinite(float(t[j]))] + [last])
    grid = torch.linspace(0.0, max(last + 4.0 * tau, 1.1 * latest), points, dtype=torch.float64)
    out: dict[str, Any] = {
        "neuron": j,
        "scale": float(scale[j]),
        "boost": boost,
        "threshold": threshold,
        "tau": tau,
        "input_times": sorted(float(t) for t in t_row[0] if math.isfinite(float(t))),
        "t": grid.tolist(),
    }
    for kernel in KERNELS:
        traces: dict[str, Any] = {}
        for size, wj in (("large", w[j : j + 1]), ("small", small[j : j + 1])):
            traces[size] = membrane_potential(grid, t_row, wj, kernel, tau)[0, :, 0].tolist()
            t_fire = float(fire[kernel, size][j])
            traces[f"t_fire_{size}"] = t_fire if math.isfinite(t_fire) else None
        out[kernel] = traces
    return out
