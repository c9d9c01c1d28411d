"""Fig. 5's plots from an analysis result (:func:`stdbp.paper.analysis.analyze`): spike-time
histograms of each hidden layer and of the decision, as PNG files. Plots take an ``ax`` and return it."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..checkpoint import atomic_write_bytes

__all__ = ["plot_decision_times", "plot_spike_times", "save_figures"]


def plot_spike_times(ax: Axes, histogram: dict[str, Any], label: str, decision_time: float | None = None) -> Axes:
    """Histogram of spike times (one of ``result["histograms"]``); a dashed line at the mean decision time."""
    edges, counts = np.asarray(histogram["edges"]), np.asarray(histogram["counts"])
    ax.stairs(counts, edges, fill=True, alpha=0.6, label=label)
    if decision_time is not None:
        ax.axvline(
            decision_time, color="k", linestyle="--", linewidth=0.8, label=f"mean decision time {decision_time:.3f}"
        )
    if histogram["beyond"]:
        ax.text(
            0.98,
            0.97,
            f"{histogram['beyond']} spikes after {edges[-1]:.2f}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
        )
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("spike time (time units; input coded in [0, t_max])")
    ax.set_ylabel("spikes")
    ax.legend(fontsize=7, loc="center right")
    return ax


def plot_decision_times(ax: Axes, histogram: dict[str, Any], accuracy: float | None = None) -> Axes:
    """Histogram of the earliest output spike time of each image (the decision)."""
    note = "" if accuracy is None else f" (accuracy {100 * accuracy:.2f}%)"
    plot_spike_times(ax, histogram, f"earliest output spike{note}")
    ax.set_ylabel("images")
    return ax


def _png(fig: Figure, path: Path) -> str:
    """Render ``fig`` and write it to ``path`` atomically."""
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path.name


def save_figures(result: dict[str, Any], out: Path) -> list[str]:
    """Write ``fig5.png`` (all panels) and one PNG per panel into ``out``; return the file names."""
    layers = {entry["layer"]: entry for entry in result["layers"]}
    hidden = result["histograms"]["hidden"]
    panels = [
        (
            f"spike_times_layer{l}.png",
            f"layer {l} ({layers[int(l)]['kind']} {'x'.join(map(str, layers[int(l)]['shape']))})",
            hist,
        )
        for l, hist in hidden.items()
    ]
    names = []
    n_cols = min(len(panels) + 1, 3)
    n_rows = math.ceil((len(panels) + 1) / n_cols)
    fig = Figure(figsize=(4.8 * n_cols, 3.6 * n_rows))
    axes = list(fig.subplots(n_rows, n_cols, squeeze=False).flat)
    for ax, (_, label, hist) in zip(axes, panels):
        plot_spike_times(ax, hist, label, result["decision_time_mean"])
    plot_decision_times(axes[len(panels)], result["histograms"]["decision"], result["accuracy"])
    for ax in axes[len(panels) + 1 :]:
        ax.remove()
    fig.suptitle(f"{result['arch']}: spike times over {result['n_images']} test images (paper Fig. 5)", fontsize=10)
    names.append(_png(fig, out / "fig5.png"))
    for name, label, hist in panels:
        fig = Figure(figsize=(5, 3.6))
        plot_spike_times(fig.subplots(), hist, label, result["decision_time_mean"])
        names.append(_png(fig, out / name))
    fig = Figure(figsize=(5, 3.6))
    plot_decision_times(fig.subplots(), result["histograms"]["decision"], result["accuracy"])
    names.append(_png(fig, out / "decision_times.png"))
    return names
