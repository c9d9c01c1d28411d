"""``stdbp analyze``: the paper's Fig. 5 for any checkpoint: when hidden neurons fire, when the network decides, at what cost.

Every test image is simulated event by event (:mod:`stdbp.sim.events`, float64). The definitions
below are also written into the result, under ``"definitions"``:

* **Simulation window**: from the first input spike until no event is left, i.e. until every
  neuron that will ever fire has fired (unbounded; ``t_end`` bounds it). A ReL-PSP neuron whose
  potential still rises after its last input fires eventually, however late, so this counts
  every spike the network would ever emit; ``last_spike_time`` says how long that took.
* **Hidden neurons**: the ReL-PSP neurons of every layer between the input and the output
  (convolutional and fully connected). Pooling units copy the first spike of their window and
  are not neurons: they are reported per layer but left out of the hidden totals.
* **Fire at all**: a spike inside the window.
* **Decision**: the first output spike (ties to the lowest class), at the decision time
  ``t_d``; an image without output spikes has no decision (it counts as wrong, ``t_d = inf``).
* **Fire before the decision**: spike time strictly before ``t_d`` (every spike, without a decision).
* **Never fire**: a neuron silent for every image analysed; ``hidden_never_fired_fraction`` and each
  layer's ``never_fired_fraction`` are shares of neurons, not of images x neurons.
* **Fractions**: spikes summed over images and hidden neurons, divided by images x hidden
  neurons: the mean over images of each image's share.
* **SynOps per image**: one per spike and outgoing weighted synapse (into a conv or fully
  connected layer), whether or not the target has fired; "up to the decision" counts the spikes
  strictly before ``t_d``. Mean over images.
* **Dense MACs per image**: the multiply-accumulates of the same-shape ANN, the sum over conv
  and fully connected layers of fan-in x neurons (pooling: none). It is also the SynOps count
  if every neuron fired.
* **Accuracy**: share of images whose decision is their label.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import (
    atomic_write_text,
    load_checkpoint,
    load_model,
)
from ..encoding import latency_encode
from ..errors import StdbpError
from ..nn.network import SpikingNetwork
from ..sim.events import (
    CONV,
    DENSE,
    KH,
    KIND,
    KW,
    PH,
    PW,
    SH,
    SW,
    C,
    EventNetwork,
    H,
    N,
    W,
    event_network,
    simulate,
)
from ..training.data import Split, load_dataset
from .analysis_plots import save_figures
from .reporting import fmt, json_safe

__all__ = [
    "analyze",
    "dense_macs",
    "add_parser",
    "run",
]

DEFINITIONS = {
    "simulation_window": "each image runs until no event is left: every neuron that will ever fire has fired (bounded by t_end if given)",
    "hidden_neurons": "ReL-PSP neurons of the conv and fully connected layers between input and output; pooling units are not counted",
    "fired": "a spike inside the simulation window",
    "decision": "the first output spike, ties to the lowest class; none (-1, counted wrong, time inf) if every output neuron is silent",
    "never_fired": "share of a layer's neurons that fire for none of the images analysed (silent for this data)",
    "fired_before_decision": "spike time strictly before the decision time (every spike if there is no decision)",
    "fractions": "spikes summed over images and hidden neurons / (images x hidden neurons)",
    "synops": "one per spike and outgoing weighted synapse (into conv or fully connected layers), whether or not the target fired; "
    "'to decision' counts spikes strictly before the decision time; mean per image",
    "dense_macs": "multiply-accumulates of the same-shape ANN: sum over conv and fully connected layers of fan-in x neurons",
    "accuracy": "share of images whose decision (first output spike, event simulation in float64) is the label",
    "hidden_fired_fraction_by_time": "the hidden_fired_fraction of a window that ends at k * t_max, for each key k",
}
#: Width of the fine histogram bins, as a fraction of the coding window ``t_max``; spikes later
#: than ``HISTOGRAM_SPAN * t_max`` are counted but not binned.
BIN_FRACTION, HISTOGRAM_SPAN = 1 / 500, 100.0
#: Window ends, in units of ``t_max``, at which the share of hidden neurons fired so far is reported.
WINDOW_ENDS = (1, 2, 5, 10, 100)


def dense_macs(net: EventNetwork) -> list[int]:
    """Multiply-accumulates per layer of the same-shape ANN (input and pooling: 0), counting in-bounds fan-in only."""
    macs = [0]
    for l in range(1, net.table.shape[0]):
        row, prev = net.table[l], net.table[l - 1]
        if row[KIND] == DENSE:
            macs.append(int(prev[N] * row[N]))
        elif row[KIND] == CONV:
            pairs = 1  # (output position, kernel tap) pairs that fall inside the input, per axis
            for size, n_out, k, s, p in (
                (prev[H], row[H], row[KH], row[SH], row[PH]),
                (prev[W], row[W], row[KW], row[SW], row[PW]),
            ):
                pairs *= sum(1 for o in range(n_out) for tap in range(k) if 0 <= o * s - p + tap < size)
            macs.append(int(prev[C] * row[C] * pairs))  # C_in x C_out x in-bounds (position, tap) pairs
        else:
            macs.append(0)
    return macs


class _TimeHistogram:
    """Counts of spike times in fine bins of width ``width`` on ``[0, span)``, growing as needed; later spikes are counted apart."""

    def __init__(self, width: float, span: float) -> None:
        self.width, self.span = width, span
        self.counts = np.zeros(0, dtype=np.int64)
        self.late = 0
        self.total = 0
        self.sum = 0.0
        self.max = -math.inf

    def add(self, times: np.ndarray) -> None:
        """Add the finite entries of ``times``."""
        times = times[np.isfinite(times)]
        if not times.size:
            return
        self.total += times.size
        self.sum += float(times.sum())
        self.max = max(self.max, float(times.max()))
        inside = times[times < self.span]
        self.late += times.size - inside.size
        counts = np.bincount((inside / self.width).astype(np.int64), minlength=self.counts.size)
        counts[: self.counts.size] += self.counts
        self.counts = counts

    def summary(self) -> dict[str, Any]:
        """``n``, ``mean``, ``max`` and ``p50``/``p90``/``p99`` (to one bin width; None past ``span``) of the spike times."""
        out: dict[str, Any] = {
            "n": self.total,
            "mean": self.sum / self.total if self.total else None,
            "max": self.max if self.total else None,
        }
        cumulative = np.cumsum(self.counts)
        for key, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            k = int(np.searchsorted(cumulative, q * self.total)) if self.total else len(cumulative)
            out[key] = (k + 1) * self.width if k < len(cumulative) else None
        out["after_span"] = self.late
        return out

    def count_before(self, t: float) -> int:
        """Spikes before ``t`` (``t`` a multiple of the bin width, at most ``span``)."""
        return int(self.counts[: int(round(t / self.width))].sum())

    def upper(self, q: float = 0.999) -> float:
        """The end of the bin where a share ``q`` of the spikes has fired (0 without spikes)."""
        cumulative = np.cumsum(self.counts)
        k = int(np.searchsorted(cumulative, q * self.total)) if self.total else 0
        return min(k + 1, len(cumulative)) * self.width

    def coarse(self, t_hi: float, bins: int = 100) -> dict[str, Any]:
        """``edges`` and ``counts`` of ``bins`` equal bins on ``[0, t_hi]``, and ``beyond`` (spikes after ``t_hi``)."""
        per_bin = max(1, math.ceil(t_hi / self.width / bins))
        n_fine = per_bin * bins
        fine = np.zeros(n_fine, dtype=np.int64)
        fine[: min(n_fine, self.counts.size)] = self.counts[:n_fine]
        counts = fine.reshape(bins, per_bin).sum(axis=1)
        edges = np.arange(bins + 1) * per_bin * self.width
        return {"edges": edges.tolist(), "counts": counts.tolist(), "beyond": int(self.total - counts.sum())}


def _stats(values: np.ndarray) -> dict[str, Any]:
    """``n`` (finite values), ``mean``, ``p50``/``p90``/``p99`` and ``max`` of the finite ``values`` (None if none)."""
    finite = values[np.isfinite(values)]
    out: dict[str, Any] = {"n": int(finite.size), "mean": float(finite.mean()) if finite.size else None}
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
        out[key] = float(np.percentile(finite, q)) if finite.size else None
    return out


def analyze(
    model: SpikingNetwork,
    split: Split,
    t_max: float = 1.0,
    limit: int | None = None,
    t_end: float = math.inf,
    chunk: int = 500,
    progress: bool = False,
) -> dict[str, Any]:
    """Fig. 5 and the sparsity and cost numbers of ``model`` on ``split`` (see the module docstring).

    Args:
        model: a ReL-PSP network (fully connected, convolutional, pooling).
        split: test images ``(N, H, W)`` uint8 and labels; latency coded with ``t_max``.
        t_max: the coding window the network was trained with, in time units.
        limit: the first ``limit`` images only.
        t_end: end of the simulation window (default: until no event is left).
        chunk: images simulated per call.
        progress: a progress bar over images.

    Returns:
        A JSON-ready dictionary: the summary keys (``hidden_fired_fraction``,
        ``hidden_fired_before_decision_fraction``, ``synops_per_image``, ``dense_macs_per_image``,
        ``accuracy``, ...), ``layers`` (per layer), ``histograms`` and ``definitions``.
    """
    start = time.perf_counter()
    net = event_network(model)
    n_layers = net.table.shape[0]
    hidden = [l for l in range(1, n_layers - 1) if net.table[l, KIND] in (DENSE, CONV)]
    n_images = len(split) if limit is None else min(limit, len(split))
    width = BIN_FRACTION * t_max
    hists = {l: _TimeHistogram(width, HISTOGRAM_SPAN * t_max) for l in range(1, n_layers - 1)}
    decision_hist = _TimeHistogram(width, HISTOGRAM_SPAN * t_max)
    decision_times, last_times = np.empty(n_images), np.empty(n_images)  # per image
    fired, before = np.zeros(n_layers, dtype=np.int64), np.zeros(n_layers, dtype=np.int64)
    ever = {l: np.zeros(int(net.table[l, N]), dtype=bool) for l in range(1, n_layers - 1)}  # fired for some image
    synops_dec, synops_tot = np.zeros(n_layers, dtype=np.int64), np.zeros(n_layers, dtype=np.int64)
    correct = undecided = 0
    bar = tqdm(total=n_images, desc="analyze", unit="img", disable=not progress, leave=False)
    for lo in range(0, n_images, chunk):
        images = split.images[lo : min(lo + chunk, n_images)]
        t_in = latency_encode(images, t_max, dtype=torch.float64).reshape(len(images), -1)
        result = simulate(net, t_in, t_end=t_end)
        t_dec = result.decision_time[:, None]  # (B, 1)
        last = np.full(len(images), -math.inf)
        for l in range(1, n_layers):
            times = result.spike_times[l].reshape(len(images), -1)  # (B, N_l)
            spiking = np.isfinite(times)
            last = np.maximum(last, np.where(spiking, times, -math.inf).max(axis=1))
            if l < n_layers - 1:
                fired[l] += int(spiking.sum())
                ever[l] |= spiking.any(axis=0)
                before[l] += int((times < t_dec).sum())
                hists[l].add(times[spiking])
        last_times[lo : lo + len(images)] = last
        decision_times[lo : lo + len(images)] = result.decision_time
        decision_hist.add(result.decision_time)
        synops_dec += result.synops_to_decision.sum(axis=0)
        synops_tot += result.synops_total.sum(axis=0)
        correct += int((result.decision == split.labels[lo : lo + len(images)].numpy()).sum())
        undecided += int((result.decision < 0).sum())
        bar.update(len(images))
    bar.close()

    macs = dense_macs(net)
    n_hidden = sum(int(net.table[l, N]) for l in hidden)
    denominator = max(n_images * n_hidden, 1)
    # Figures show the first 90 % of hidden spikes and every decision; the late tail is counted apart.
    t_hi = max([h.upper(0.9) for h in hists.values()] + [decision_hist.upper(1.0), width])
    layers = []
    for l in range(1, n_layers):
        entry: dict[str, Any] = {
            "layer": l,
            "kind": net.kinds[l],
            "shape": list(net.shapes[l]),
            "neurons": int(net.table[l, N]),
        }
        if l < n_layers - 1:
            share = max(n_images * int(net.table[l, N]), 1)
            entry.update(
                fired_fraction=fired[l] / share,
                fired_before_decision_fraction=before[l] / share,
                never_fired_fraction=float(1 - ever[l].mean()) if ever[l].size else 0.0,
                spike_time=hists[l].summary(),
            )
        entry.update(
            synops_per_image=synops_dec[l] / max(n_images, 1),
            synops_per_image_total=synops_tot[l] / max(n_images, 1),
            dense_macs_per_image=macs[l],
        )
        layers.append(entry)
    hidden_fired = sum(int(fired[l]) for l in hidden)
    hidden_before = sum(int(before[l]) for l in hidden)
    synops = float(synops_dec.sum()) / max(n_images, 1)
    return {
        "arch": model.arch,
        "n_images": n_images,
        "t_max": t_max,
        "simulation_window": {
            "t_end": t_end if math.isfinite(t_end) else None,
            "definition": DEFINITIONS["simulation_window"],
        },
        "hidden_neurons": n_hidden,
        "hidden_fired_fraction": hidden_fired / denominator,
        "hidden_fired_before_decision_fraction": hidden_before / denominator,
        "hidden_fired_before_decision_share_of_fired": hidden_before / hidden_fired if hidden_fired else None,
        "hidden_never_fired_fraction": sum(int((~ever[l]).sum()) for l in hidden) / max(n_hidden, 1),
        # How the share that fires "during the simulation time" depends on where the window ends.
        "hidden_fired_fraction_by_time": {
            f"{k:g}": sum(hists[l].count_before(k * t_max) for l in hidden) / denominator for k in WINDOW_ENDS
        },
        "decision_time_mean": _stats(decision_times)["mean"],
        "decision_time": _stats(decision_times),
        "undecided": undecided,
        "last_spike_time": _stats(last_times),
        "synops_per_image": synops,
        "synops_per_image_total": float(synops_tot.sum()) / max(n_images, 1),
        "dense_macs_per_image": int(sum(macs)),
        "synops_to_dense_ratio": synops / sum(macs) if sum(macs) else None,
        "accuracy": correct / max(n_images, 1),
        "layers": layers,
        "histograms": {
            "hidden": {str(l): hists[l].coarse(t_hi) for l in hists},
            "decision": decision_hist.coarse(t_hi),
            "fine_bin_width": width,
        },
        "definitions": DEFINITIONS,
        "wall_seconds": time.perf_counter() - start,
    }


def analyze_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
    t_end: float = math.inf,
    progress: bool = False,
) -> dict[str, Any]:
    """:func:`analyze` a checkpoint on its test set; write ``analysis.json`` and the figures into ``out``."""
    if limit is not None and limit < 1:
        raise StdbpError("--limit must be at least 1")
    if not t_end > 0:
        raise StdbpError("--t-end must be positive")
    trained = load_checkpoint(checkpoint).get("config", {})
    model = load_model(checkpoint)
    if model.neuron != "relpsp":
        raise StdbpError(
            f"{checkpoint} holds a {model.neuron}-PSP network; the event simulator runs ReL-PSP networks only"
        )
    dataset = dataset or trained.get("dataset", "mnist")
    test = load_dataset(dataset, data_dir, splits=("test",))["test"]
    model.shape_input(test.images[:1].unsqueeze(1).double())  # the data must fit the architecture
    result = analyze(model, test, trained.get("t_max", 1.0), limit, t_end, progress=progress)
    result.update(checkpoint=str(checkpoint), dataset=dataset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result["figures"] = save_figures(result, out)
    atomic_write_text(out / "analysis.json", json.dumps(json_safe(result), indent=1, allow_nan=False) + "\n")
    return result


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``stdbp analyze`` on the CLI's subparsers; it runs :func:`run`."""
    p = subparsers.add_parser(
        "analyze",
        help="spike-time histograms, sparsity and SynOps of a checkpoint (paper Fig. 5)",
        description="Simulate every test image event by event: histograms of hidden and earliest output spike times (Fig. 5), "
        "the share of hidden neurons that fire at all and before the decision, SynOps up to the decision against the dense "
        "network's MACs, and the accuracy of first-spike decisions.",
    )
    p.add_argument("checkpoint", help="a .pt file written by stdbp train")
    p.add_argument("--out", help="directory for analysis.json and the PNGs (default runs/analyze-ARCH)")
    p.add_argument("--dataset", help="dataset (default: the one it was trained on)")
    p.add_argument("--data-dir", help="directory with the four IDX files")
    p.add_argument("--limit", type=int, help="the first N test images only (default: all)")
    p.add_argument(
        "--t-end", type=float, default=math.inf, help="end of the simulation window (default: until no event is left)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (the summary, without histograms)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``stdbp analyze`` from parsed arguments; return the exit status."""
    out = args.out
    if out is None:
        out = f"runs/analyze-{load_checkpoint(args.checkpoint)['model'].get('arch', 'model')}"
    result = analyze_checkpoint(
        args.checkpoint,
        out,
        args.dataset,
        args.data_dir,
        args.limit,
        args.t_end,
        not args.no_progress and sys.stderr.isatty(),
    )
    summary = {k: v for k, v in result.items() if k not in ("histograms", "definitions")}
    summary["out"] = str(out)
    if args.json:
        print(json.dumps(json_safe(summary), allow_nan=False))
        return 0
    print(
        f"{result['arch']} on {result['n_images']} {result['dataset']} test images: accuracy {100 * result['accuracy']:.2f}% "
        f"({result['undecided']} undecided), mean decision time {fmt(result['decision_time_mean'])}"
    )
    print(
        f"hidden neurons firing: {100 * result['hidden_fired_fraction']:.1f}% at all, "
        f"{100 * result['hidden_fired_before_decision_fraction']:.1f}% before the decision; "
        f"{100 * result['hidden_never_fired_fraction']:.1f}% fire for no image"
    )
    print(
        f"SynOps per image up to the decision {result['synops_per_image']:.0f} (all {result['synops_per_image_total']:.0f}) "
        f"vs {result['dense_macs_per_image']} dense MACs; wrote {out}/analysis.json and {len(result['figures'])} figures "
        f"({result['wall_seconds']:.0f} s)"
    )
    return 0
