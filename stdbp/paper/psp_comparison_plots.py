"""Figures of ``stdbp compare-psp``, drawn from its result dictionary (the content of ``compare_psp.json``).

Each ``plot_*`` function draws on the ``ax`` it is given and returns it. :func:`save_figures`
writes the three PNG files with matplotlib's Agg canvas, without touching pyplot's global state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "plot_membrane_traces",
    "plot_dead_share",
    "plot_accuracy",
    "plot_grad_norm_steps",
    "plot_train_loss_steps",
    "plot_dtdv_histogram",
    "plot_grad_norm_histogram",
    "save_figures",
]

LABELS = {"relpsp": "ReL-PSP (eqs. 8-15)", "alpha": "alpha-PSP, SpikeProp (eqs. 2-7)"}
COLORS = {"relpsp": "tab:blue", "alpha": "tab:orange"}


def _finite(values: list[float | None]) -> np.ndarray:
    array = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    return array[np.isfinite(array)]


def plot_membrane_traces(ax: Axes, traces: dict[str, Any], kernel: str) -> Axes:
    """V(t) of one neuron with large (blue) and scaled-down (green) weights, as in Figs. 2c and 3c."""
    t = np.asarray(traces["t"])
    threshold = traces["threshold"]
    for size, color, label in (
        ("large", "tab:blue", "weights w"),
        ("small", "tab:green", f"weights {traces['scale']:.2f} w"),
    ):
        v = np.asarray(traces[kernel][size])
        t_fire = traces[kernel][f"t_fire_{size}"]
        state = "dead" if t_fire is None else f"fires at {t_fire:.3f}"
        ax.plot(t, v, color=color, label=f"{label}: {state}")
        if t_fire is not None:
            ax.plot([t_fire], [threshold], "o", color=color)
    ax.axhline(threshold, color="k", linestyle="--", linewidth=0.8, label="threshold")
    ax.plot(
        traces["input_times"],
        np.zeros(len(traces["input_times"])),
        "|",
        color="0.5",
        markersize=8,
        label="input spikes",
    )
    ax.set_ylim(-0.5 * threshold, 2.0 * threshold)
    ax.set_xlabel("time")
    ax.set_ylabel("membrane potential V(t)")
    boost = "" if traces.get("boost", 1.0) == 1.0 else f", weights x{traces['boost']:.2f}"
    ax.set_title(f"{LABELS[kernel]}\nneuron {traces['neuron']}{boost}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return ax


def plot_accuracy(ax: Axes, result: dict[str, Any]) -> Axes:
    """Test accuracy per epoch (epoch 0 = the shared initial weights)."""
    for kernel, run in result["kernels"].items():
        rows = run["history"]
        ax.plot(
            [r["epoch"] for r in rows],
            [100 * r["test_accuracy"] for r in rows],
            "o-",
            color=COLORS[kernel],
            label=LABELS[kernel],
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    return ax


def plot_dead_share(ax: Axes, result: dict[str, Any]) -> Axes:
    """Share of hidden neurons that never fire on the held-out batch, per epoch."""
    n = result["config"]["heldout"]
    for kernel, run in result["kernels"].items():
        rows = run["history"]
        ax.plot(
            [r["epoch"] for r in rows],
            [100 * r["dead_share"] for r in rows],
            "o-",
            color=COLORS[kernel],
            label=LABELS[kernel],
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("dead hidden neurons (%)")
    ax.set_title(f"silent on all {n} held-out test images", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    return ax


def plot_grad_norm_steps(ax: Axes, result: dict[str, Any]) -> Axes:
    """Gradient norm of every training step (log scale); steps with NaN/inf are counted in the legend."""
    for kernel, run in result["kernels"].items():
        norms = np.array([math.nan if v is None else v for v in run["grad_norms"]], dtype=np.float64)
        bad = int((~np.isfinite(norms)).sum())
        ax.plot(
            np.arange(1, len(norms) + 1),
            norms,
            linewidth=0.5,
            color=COLORS[kernel],
            label=f"{LABELS[kernel]}; NaN/inf steps: {bad}",
        )
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("gradient norm ||dL/dw||")
    ax.legend(fontsize=7)
    return ax


def plot_train_loss_steps(ax: Axes, result: dict[str, Any], window: int = 25) -> Axes:
    """Training loss per step (running mean over ``window`` steps), and the share of undecided samples."""
    kernel_lines = []
    for kernel, run in result["kernels"].items():
        losses = np.array([math.nan if v is None else v for v in run["train_losses"]], dtype=np.float64)
        undecided = np.asarray(run["train_undecided"], dtype=np.float64)
        kernel_lines.append((kernel, _running_mean(losses, window), _running_mean(undecided, window)))
    twin = ax.twinx()
    for kernel, loss, undecided in kernel_lines:
        steps = np.arange(1, len(loss) + 1)
        ax.plot(steps, loss, color=COLORS[kernel], label=f"{LABELS[kernel]}: loss")
        twin.plot(steps, 100 * undecided, color=COLORS[kernel], linestyle=":", label=f"{LABELS[kernel]}: output silent")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"training loss (mean of {window} steps)")
    twin.set_ylabel("batch samples with all outputs silent (%), dotted")
    twin.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="lower left")
    return ax


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    finite = np.isfinite(values)
    sums = np.convolve(np.where(finite, values, 0.0), np.ones(window), mode="same")
    counts = np.convolve(finite.astype(np.float64), np.ones(window), mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def plot_dtdv_histogram(ax: Axes, result: dict[str, Any], epoch: int = -1) -> Axes:
    """Distribution of |dt/dV| = 1/|V'(t_j)| over hidden spikes of the held-out batch (log-log).

    Solid: all hidden spikes; dashed: those that precede a spike of the next layer (the ones a
    gradient can reach).
    """
    edges = 10.0 ** np.asarray(result["dtdv_log10_edges"])
    for kernel, run in result["kernels"].items():
        row = run["history"][epoch]
        for part, style, note in (("all", "-", "all hidden spikes"), ("effective", "--", "reached by gradients")):
            counts = np.asarray(run["dtdv_histograms"][epoch][part], dtype=np.float64)
            label = f"{LABELS[kernel]}, {note} (epoch {row['epoch']})"
            ax.stairs(np.where(counts > 0, counts, np.nan), edges, color=COLORS[kernel], linestyle=style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|dt/dV| at the hidden spike (time / threshold)")
    ax.set_ylabel("hidden spikes")
    ax.legend(fontsize=7)
    return ax


def plot_grad_norm_histogram(ax: Axes, result: dict[str, Any]) -> Axes:
    """Distribution of per-step gradient norms over the whole run (log-spaced bins)."""
    runs = {kernel: _finite(run["grad_norms"]) for kernel, run in result["kernels"].items()}
    positive = np.concatenate([v[v > 0] for v in runs.values()] + [np.array([1.0])])
    bins = np.logspace(math.floor(np.log10(positive.min())), math.ceil(np.log10(positive.max())) + 1e-9, 60)
    for kernel, norms in runs.items():
        ax.hist(
            norms[norms > 0],
            bins=cast("Sequence[float]", bins),
            histtype="step",
            color=COLORS[kernel],
            label=LABELS[kernel],
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5)
    ax.set_xlabel("gradient norm per step")
    ax.set_ylabel("steps")
    ax.legend(fontsize=7)
    return ax


def _save(fig: Figure, path: Path) -> str:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return str(path)


def save_figures(result: dict[str, Any], out: Path) -> list[str]:
    """Write ``compare_psp_traces.png``, ``compare_psp_curves.png`` and ``compare_psp_distributions.png`` into ``out``."""
    out = Path(out)
    paths = []
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharey=True)
    plot_membrane_traces(axes[0], result["traces"], "alpha")
    plot_membrane_traces(axes[1], result["traces"], "relpsp")
    paths.append(_save(fig, out / "compare_psp_traces.png"))

    fig = Figure(figsize=(14, 8))
    axes = fig.subplots(2, 2)
    plot_accuracy(axes[0, 0], result)
    plot_dead_share(axes[0, 1], result)
    plot_grad_norm_steps(axes[1, 0], result)
    plot_train_loss_steps(axes[1, 1], result)
    paths.append(_save(fig, out / "compare_psp_curves.png"))

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    plot_dtdv_histogram(axes[0], result)
    plot_grad_norm_histogram(axes[1], result)
    paths.append(_save(fig, out / "compare_psp_distributions.png"))
    return paths
