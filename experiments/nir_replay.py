"""Replay exported stdbp networks in another library, time-stepped, and compare decisions with stdbp's exact ones.

Usage (from the repository root, with ``pip install 'stdbp[nir]' norse snntorch``; norse and
snntorch with ``--no-deps`` so that pip keeps the installed torch)::

    nice -n 10 python experiments/nir_replay.py --out results/nir-replay

For each shipped network (784-800-10 and the paper's convolutional network) the script

1. exports it with ``stdbp.export_nir``, writes it with ``nir.write`` and reads it back with
   ``nir.read``;
2. tries each library's own NIR import on that graph as it is (``norse.torch.from_nir``,
   ``snntorch.import_nir.import_from_nir``) and records what happens;
3. replays the graph in Norse through :func:`adapt_for_norse`, the closest faithful mapping onto
   nodes Norse imports (below), at time steps ``dt`` of 1/10, 1/100 and 1/1000 of the coding
   window, and measures how often Norse's decision (the first output step with a spike, ties to
   the lowest class) agrees with stdbp's exact one, the accuracy, and the decision-time error;
4. with ``--exact N``, runs the exact continuous-time NIR interpreter of ``tests/test_nir.py``
   on the first N images, as the ``dt -> 0`` row;
5. with ``--layers N`` instead, measures each layer's spike-time error in the Norse replay on
   the first N images (``layers-ARCH.json``).

The commands behind ``results/nir-replay/`` are in docs/interchange.md.

The adapter. Neither library maps NIR's ``I`` node. A ReL-PSP layer ``W -> I(r=1) -> IF`` is
given to Norse as ``W -> CubaLIF`` with ``tau_syn = tau_mem = r = T`` (``T = 1e6`` coding
windows, so that the leaks vanish), ``w_in = T / dt`` and the same threshold: Norse's Euler step
then reads ``I += sum(w z)`` and ``v += dt * I``, an integrator into an integrate-and-fire
neuron. Norse feeds a spike as a value 1 for one step, hence ``w_in = T / dt``, which makes its
synapse jump by the spike's weight (the area of NIR's Dirac pulse). A pooling ``IF`` (one
spike crosses its threshold at once) becomes ``CubaLIF`` with ``tau_syn = dt``, ``w_in = 1 /
dt``, whose synapse passes each step's spike count straight into the potential. Norse's
``from_nir`` drops NIR's ``v_reset`` and resets to 0; the single-spike rule (``v_reset = -inf``)
goes in through its ``reset_method`` argument as a reset to ``-1e30`` (``-inf`` itself makes
Norse's Euler step ``-inf + inf = NaN``). NIR shapes have no batch dimension, so
``Flatten(start_dim=0)`` becomes ``start_dim=1`` for batched tensors. An input spike at ``t``
is given in the step ``floor(t / dt)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import stdbp
from stdbp.checkpoint import load_model
from stdbp.functional import first_spike_decision
from stdbp.interop.nir import require_nir, write_nir
from stdbp.training.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {
    "784-800-10": ROOT / "pretrained" / "mnist-784-800-10.pt",
    "28x28-6C5-P2-16C5-P2-1024-128-10": ROOT / "pretrained" / "mnist-28x28-6C5-P2-16C5-P2-1024-128-10.pt",
}
#: Leak time constant of the adapter's CubaLIF nodes, in coding windows: no leak in practice.
TAU = 1e6
#: What Norse's reset sets a neuron to after its spike: a finite stand-in for NIR's -inf.
RESET = -1e30


def adapt_for_norse(graph: Any, dt: float, nir: Any) -> Any:
    """The graph with every ``I -> IF`` pair and every pooling ``IF`` replaced by an equivalent
    ``CubaLIF`` for Norse's time step ``dt`` (see the module docstring), ``Flatten`` batched."""
    order = [name for name, _ in _chain(graph)]
    nodes: dict[str, Any] = {}
    skip = set()
    for position, name in enumerate(order):
        node = graph.nodes[name]
        if name in skip:
            continue
        if isinstance(node, nir.I):
            neuron = graph.nodes[order[position + 1]]
            shape = np.shape(neuron.v_threshold)
            nodes[name] = nir.CubaLIF(
                tau_syn=np.full(shape, TAU),
                tau_mem=np.full(shape, TAU),
                r=np.full(shape, TAU),
                v_leak=np.zeros(shape),
                v_threshold=np.asarray(neuron.v_threshold, dtype=np.float64),
                w_in=np.full(shape, TAU / dt),
            )
            skip.add(order[position + 1])
        elif isinstance(node, nir.IF):  # a pooling IF: pulses straight into the potential
            shape = np.shape(node.v_threshold)
            nodes[name] = nir.CubaLIF(
                tau_syn=np.full(shape, dt),
                tau_mem=np.full(shape, TAU),
                r=np.full(shape, TAU),
                v_leak=np.zeros(shape),
                v_threshold=np.asarray(node.v_threshold, dtype=np.float64),
                w_in=np.full(shape, 1.0 / dt),
            )
        elif isinstance(node, nir.Flatten):
            nodes[name] = nir.Flatten(input_type=node.input_type, start_dim=1, end_dim=-1)
        else:
            nodes[name] = node
    kept = [name for name in order if name in nodes]
    return nir.NIRGraph(nodes=nodes, edges=list(zip(kept[:-1], kept[1:])), metadata={}, type_check=False)


def _chain(graph: Any) -> list[tuple[str, Any]]:
    after = dict(graph.edges)
    name = next(name for name, node in graph.nodes.items() if type(node).__name__ == "Input")
    chain = [(name, graph.nodes[name])]
    while name in after:
        name = after[name]
        chain.append((name, graph.nodes[name]))
    return chain


def _reset_once(z: torch.Tensor, v: torch.Tensor, reset: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Norse ``reset_method``: a neuron that spikes goes to ``RESET`` and never reaches threshold again."""
    return torch.where(z > 0, torch.full_like(v, RESET), v)


def direct_imports(graph_path: Path, nir: Any) -> dict[str, str]:
    """What each library's own NIR import does with the graph as it is."""
    found = {}
    try:
        import norse.torch as norse

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            norse.from_nir(nir.read(graph_path), dt=0.01)
        found["norse.torch.from_nir"] = "imported"
    except Exception as exc:  # noqa: BLE001 - recorded, not handled
        found["norse.torch.from_nir"] = f"{type(exc).__name__}: {exc}"
    try:
        from snntorch.import_nir import import_from_nir

        import_from_nir(nir.read(graph_path))
        found["snntorch.import_nir.import_from_nir"] = "imported"
    except Exception as exc:  # noqa: BLE001
        found["snntorch.import_nir.import_from_nir"] = f"{type(exc).__name__}: {exc}"
    return found


def norse_replay(
    graph: Any, t_in: torch.Tensor, order: np.ndarray, dt: float, t_end: float, batch: int, nir: Any
) -> tuple[np.ndarray, np.ndarray, int]:
    """Run the adapted graph in Norse: decisions ``(N,)`` (-1: none by ``t_end``), decision
    times ``(N,)`` (end of the step with the first output spike) and the number of ties.

    Images run in batches in the given ``order`` (by stdbp's decision time, so that a batch,
    which stops when all its images have decided, holds images that decide together)."""
    import norse.torch as norse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = norse.from_nir(adapt_for_norse(graph, dt, nir), dt=dt, reset_method=_reset_once)
    steps = math.ceil(t_end / dt)
    decisions = np.full(len(t_in), -1)
    times = np.full(len(t_in), np.inf)
    ties = 0
    with torch.no_grad():
        for first in range(0, len(t_in), batch):
            rows = torch.from_numpy(order[first : first + batch])
            chunk = t_in[rows]  # (B, *input_shape)
            step_of = torch.where(torch.isfinite(chunk), torch.floor(chunk / dt), torch.full_like(chunk, -1)).long()
            decided = torch.zeros(len(chunk), dtype=torch.bool)
            state = None
            for k in range(steps):
                spikes = (step_of == k).float()
                out, state = module(spikes, state)
                fresh = (out > 0).any(dim=1) & ~decided
                if fresh.any():
                    index = torch.nonzero(fresh).flatten()
                    decisions[rows[index].numpy()] = out[index].argmax(dim=1).numpy()
                    times[rows[index].numpy()] = (k + 1) * dt
                    ties += int(((out[index] > 0).sum(dim=1) > 1).sum())
                    decided |= fresh
                if decided.all():
                    break
    return decisions, times, ties


def layer_errors(model: Any, graph: Any, t_in: torch.Tensor, dt: float, t_end: float, nir: Any) -> dict[str, Any]:
    """Per spiking layer of the Norse replay: the median and mean of (Norse's spike time - stdbp's
    exact one, float64) over the neurons that fire in both before ``t_end``, and how many fire."""
    import norse.torch as norse

    adapted = adapt_for_norse(graph, dt, nir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = norse.from_nir(adapted, dt=dt, reset_method=_reset_once)
    exact = model.double().forward_all(t_in.reshape(len(t_in), -1).double())[1:]
    names = [name for name, node in adapted.nodes.items() if isinstance(node, nir.CubaLIF)]
    seen: dict[str, torch.Tensor] = {}
    children = dict(module.named_children())
    for name in names:
        children[name].register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out[0]))
    first = {
        name: torch.full((len(t_in), *exact[l].shape[1:]), math.inf, dtype=torch.float64)
        for l, name in enumerate(names)
    }
    step_of = torch.where(torch.isfinite(t_in), torch.floor(t_in / dt), torch.full_like(t_in, -1)).long()
    state = None
    with torch.no_grad():
        for k in range(math.ceil(t_end / dt)):
            _, state = module((step_of == k).float(), state)
            for name in names:
                fresh = (seen[name].reshape(first[name].shape) > 0) & torch.isinf(first[name])
                first[name][fresh] = (k + 1) * dt
    rows = {}
    for name, want in zip(names, exact):
        got = first[name]
        both = torch.isfinite(got) & (want <= t_end)
        error = (got - want)[both]
        rows[name] = {
            "fire_exact_before_t_end": int((want <= t_end).sum()),
            "fire_norse": int(torch.isfinite(got).sum()),
            "error_median": float(error.median()) if error.numel() else None,
            "error_mean": float(error.mean()) if error.numel() else None,
        }
    return rows


def exact_replay(graph_path: Path, t_in: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The continuous-time interpreter of tests/test_nir.py (float64): decisions and decision times."""
    sys.path.insert(0, str(ROOT))
    from tests.test_nir import first_spikes, interpret

    nir = require_nir()
    graph = nir.read(graph_path)
    decisions, times = np.full(len(t_in), -1), np.full(len(t_in), np.inf)
    for b in range(len(t_in)):
        out = torch.from_numpy(first_spikes(interpret(graph, t_in[b].double().numpy())["output"])[None])
        decisions[b] = int(first_spike_decision(out))
        times[b] = float(out.min())
    return decisions, times


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarise(decisions: np.ndarray, times: np.ndarray, reference: dict[str, np.ndarray]) -> dict[str, Any]:
    n = len(decisions)
    decided = decisions >= 0
    error = np.abs(times[decided] - reference["time"][:n][decided])
    differ = np.flatnonzero((decisions != reference["decision"][:n]) & decided)
    t_out = reference["t_out"][:n]
    # how far behind stdbp's winner the class the replay chose fired, in stdbp's exact times
    gap = t_out[differ, decisions[differ]] - t_out[differ, reference["decision"][differ]]
    return {
        "images": n,
        "agreement": float(np.mean(decisions == reference["decision"][:n])),
        "disagreements": int(len(differ)),
        "disagreement_gap_median": float(np.median(gap)) if gap.size else None,
        "disagreement_gap_max": float(gap.max()) if gap.size else None,
        "accuracy": float(np.mean(decisions == reference["label"][:n])),
        "stdbp_accuracy_same_images": float(np.mean(reference["decision"][:n] == reference["label"][:n])),
        "undecided": int(n - decided.sum()),
        "decision_time_error_median": float(np.median(error)) if error.size else math.nan,
        "decision_time_error_max": float(error.max()) if error.size else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/nir-replay", help="directory for replay-ARCH.json")
    parser.add_argument("--arch", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--dt", nargs="+", type=float, default=[0.1, 0.01, 0.001], help="time steps (t_max = 1)")
    parser.add_argument(
        "--limit", nargs="+", type=int, default=[10000, 10000, 1000], help="test images per time step (first N)"
    )
    parser.add_argument("--exact", type=int, default=0, help="images for the exact interpreter row (0: none)")
    parser.add_argument("--t-end", type=float, default=4.0, help="stop a time-stepped run here (coding windows)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--layers", type=int, default=0, help="only measure per-layer spike-time errors on N images (layers-ARCH.json)"
    )
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    nir = require_nir()
    import nirtorch
    import norse
    import snntorch

    test = load_dataset("mnist", splits=("test",))["test"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": {
            "processor": _processor(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {
            "stdbp": stdbp.__version__,
            "nir": nir.__version__,
            "nirtorch": nirtorch.__version__,
            "norse": getattr(norse, "__version__", "unknown"),
            "snntorch": snntorch.__version__,
            "torch": torch.__version__,
        },
        "adapter": {"tau": TAU, "reset": RESET, "input_step": "floor(t / dt)", "t_end": args.t_end},
        "command": " ".join(sys.argv),
    }
    for arch in args.arch:
        model = load_model(NETWORKS[arch])
        t_in = stdbp.latency_encode(test.images).reshape(len(test.images), *model.input_shape)
        with torch.no_grad():
            t_out = model(t_in.reshape(len(t_in), -1))
        reference = {
            "decision": first_spike_decision(t_out).numpy(),
            "time": t_out.min(dim=1).values.double().numpy(),
            "t_out": t_out.double().numpy(),
            "label": test.labels.numpy(),
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "net.nir"
            write_nir(stdbp.export_nir(model, dataset="mnist"), path)
            graph = nir.read(path)
            entry: dict[str, Any] = {
                "stdbp_accuracy": float(np.mean(reference["decision"] == reference["label"])),
                "nodes": len(graph.nodes),
                "direct_import": direct_imports(path, nir),
                "replay": [],
            }
            if args.layers:
                per_dt = {
                    str(dt): layer_errors(model, graph, t_in[: args.layers], dt, args.t_end, nir) for dt in args.dt
                }
                result = {**report, "arch": arch, "images": args.layers, "layers": per_dt}
                (out / f"layers-{arch}.json").write_text(json.dumps(result, indent=2) + "\n")
                print(json.dumps(per_dt, indent=1))
                continue
            print(f"{arch}: stdbp accuracy {entry['stdbp_accuracy']:.4f}; direct imports {entry['direct_import']}")
            if args.exact:
                start = time.perf_counter()
                decisions, times = exact_replay(path, t_in[: args.exact])
                row = {"simulator": "exact NIR interpreter", "dt": 0.0, **summarise(decisions, times, reference)}
                row["seconds"] = round(time.perf_counter() - start, 1)
                entry["replay"].append(row)
                print(json.dumps(row))
            for dt, limit in zip(args.dt, args.limit):
                start = time.perf_counter()
                order = np.argsort(reference["time"][:limit], kind="stable")
                decisions, times, ties = norse_replay(graph, t_in[:limit], order, dt, args.t_end, args.batch, nir)
                row = {"simulator": "norse (adapted)", "dt": dt, **summarise(decisions, times, reference), "ties": ties}
                row["seconds"] = round(time.perf_counter() - start, 1)
                entry["replay"].append(row)
                print(json.dumps(row), flush=True)
        (out / f"replay-{arch}.json").write_text(json.dumps({**report, "arch": arch, **entry}, indent=2) + "\n")


if __name__ == "__main__":
    main()
