"""NIR export and import against an independent continuous-time interpreter of NIR's node equations.

The interpreter below is written from NIR's definitions only (``Linear``: y = W x; ``Conv2d``:
PyTorch's cross-correlation; ``SumPool2d``: window sums; ``Flatten``; ``I``: v' = r I;
``IF``: v' = r I, a spike when v > v_threshold, then v = v_reset; every state 0 at t = 0),
in float64, exactly: a spike is a Dirac pulse of area 1, so ``I`` turns weighted spikes into a
piecewise-constant current, and ``IF`` integrates that into a piecewise-linear potential whose
first passage above threshold is solved on each segment. It uses nothing of stdbp's kernels.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from stdbp import StdbpError, build, export_nir, import_nir  # noqa: E402
from stdbp.checkpoint import load_model  # noqa: E402
from stdbp.cli import main  # noqa: E402
from stdbp.encoding import latency_encode  # noqa: E402
from stdbp.functional import first_spike_decision  # noqa: E402
from stdbp.interop.nir import require_nir, write_nir  # noqa: E402
from stdbp.training.data import load_dataset  # noqa: E402

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"
FC = PRETRAINED / "mnist-784-800-10.pt"
CONV = PRETRAINED / "mnist-28x28-6C5-P2-16C5-P2-1024-128-10.pt"


# ---------------------------------------------------------------- the interpreter


@dataclass
class Events:
    """Dirac pulses for one sample: pulse ``e`` has area ``amount[e]`` at ``time[e]`` on neuron
    ``index[e]`` (a flat C-order index into ``shape``). A spike train has amounts 1."""

    time: np.ndarray
    index: np.ndarray
    amount: np.ndarray
    shape: tuple[int, ...]


@dataclass
class Dense:
    """A signal on the grid ``times`` (K,): Dirac areas ``pulses[k]`` at ``times[k]`` and the
    piecewise-constant value ``levels[k]`` on ``[times[k], times[k+1])`` (0 before ``times[0]``);
    ``pulses`` and ``levels`` are ``(K, N)`` over the flat neurons of ``shape``."""

    times: np.ndarray
    pulses: np.ndarray
    levels: np.ndarray
    shape: tuple[int, ...]


def _dense(events: Events) -> Dense:
    times, slot = np.unique(events.time, return_inverse=True)
    pulses = np.zeros((len(times), math.prod(events.shape)))
    np.add.at(pulses, (slot, events.index), events.amount)
    return Dense(times, pulses, np.zeros_like(pulses), events.shape)


def _linear(signal: Events | Dense, weight: np.ndarray) -> Dense:
    """y = W x: pulse by pulse for a spike train, on the grid for a dense signal."""
    w = np.asarray(weight, dtype=np.float64)  # (N_out, N_in)
    if isinstance(signal, Events):
        times, slot = np.unique(signal.time, return_inverse=True)
        pulses = np.zeros((len(times), w.shape[0]))
        np.add.at(pulses, slot, w[:, signal.index].T * signal.amount[:, None])
        return Dense(times, pulses, np.zeros_like(pulses), (w.shape[0],))
    return Dense(signal.times, signal.pulses @ w.T, signal.levels @ w.T, (w.shape[0],))


def _conv2d(signal: Events, node: Any) -> Dense:
    """Each pulse at input (c, y, x) adds ``W[:, c, i, j]`` to output (oy, ox) where
    ``oy * s_h - p_h + i = y`` (and likewise x): PyTorch's cross-correlation, pulse by pulse."""
    w = np.asarray(node.weight, dtype=np.float64)
    c_out, _, k_h, k_w = w.shape
    (s_h, s_w), (p_h, p_w) = tuple(node.stride), tuple(node.padding)
    _, height, width = signal.shape
    h_out, w_out = (height + 2 * p_h - k_h) // s_h + 1, (width + 2 * p_w - k_w) // s_w + 1
    times, slot = np.unique(signal.time, return_inverse=True)
    c, y, x = np.unravel_index(signal.index, signal.shape)
    out = np.zeros((len(times), h_out, w_out, c_out))
    for i in range(k_h):
        for j in range(k_w):
            oy, ox = y + p_h - i, x + p_w - j
            ok = (oy % s_h == 0) & (ox % s_w == 0) & (oy >= 0) & (ox >= 0)
            oy, ox = oy // s_h, ox // s_w
            ok &= (oy < h_out) & (ox < w_out)
            np.add.at(out, (slot[ok], oy[ok], ox[ok]), w[:, c[ok], i, j].T * signal.amount[ok, None])
    pulses = out.transpose(0, 3, 1, 2).reshape(len(times), -1)
    bias = np.broadcast_to(np.asarray(node.bias, dtype=np.float64)[:, None, None], (c_out, h_out, w_out))
    if np.any(bias != 0):
        raise NotImplementedError("a bias is a constant current from t = 0; not needed here")
    return Dense(times, pulses, np.zeros_like(pulses), (c_out, h_out, w_out))


def _sumpool2d(signal: Events, node: Any) -> Events:
    """Each pulse is added to every window that holds it (no padding)."""
    (k_h, k_w), (s_h, s_w) = tuple(node.kernel_size), tuple(node.stride)
    assert tuple(node.padding) == (0, 0)
    channels, height, width = signal.shape
    h_out, w_out = (height - k_h) // s_h + 1, (width - k_w) // s_w + 1
    c, y, x = np.unravel_index(signal.index, signal.shape)
    parts = []
    for i in range(k_h):
        for j in range(k_w):
            oy, ox = y - i, x - j
            ok = (oy % s_h == 0) & (ox % s_w == 0) & (oy >= 0) & (ox >= 0)
            oy, ox = oy // s_h, ox // s_w
            ok &= (oy < h_out) & (ox < w_out)
            flat = np.ravel_multi_index((c[ok], oy[ok], ox[ok]), (channels, h_out, w_out))
            parts.append((signal.time[ok], flat, signal.amount[ok]))
    return Events(*(np.concatenate(p) for p in zip(*parts)), (channels, h_out, w_out))  # type: ignore[call-arg]


def _integrator(signal: Events | Dense, r: np.ndarray) -> Dense:
    """``I``: v' = r I. Pulses become steps; a constant input would make ramps, which no graph here has."""
    dense = _dense(signal) if isinstance(signal, Events) else signal
    if np.any(dense.levels != 0):
        raise NotImplementedError("I of a piecewise-constant current (a ramp) is not needed here")
    levels = np.cumsum(dense.pulses, axis=0) * r.reshape(-1)
    return Dense(dense.times, np.zeros_like(levels), levels, dense.shape)


def _integrate_and_fire(signal: Events | Dense, node: Any) -> Events:
    """``IF``: v' = r I (a pulse of area a makes v jump by r a), a spike at the first instant
    where v > v_threshold, then v = v_reset. Exact on the piecewise-linear potential: the first
    passage of every neuron at once, then (for a finite v_reset only) the next ones one by one."""
    dense = _dense(signal) if isinstance(signal, Events) else signal
    r = np.asarray(node.r, dtype=np.float64).reshape(-1)
    theta = np.asarray(node.v_threshold, dtype=np.float64).reshape(-1)
    reset = np.asarray(node.v_reset, dtype=np.float64).reshape(-1)
    times, jumps, slopes = dense.times, dense.pulses * r, dense.levels * r
    if len(times) == 0 or times[0] > 0:  # the potential is 0 at t = 0
        times = np.concatenate([[0.0], times])
        jumps, slopes = np.vstack([np.zeros_like(r), jumps]), np.vstack([np.zeros_like(r), slopes])
    ends = np.append(times[1:], np.inf)  # segment k is [times[k], ends[k])
    ramp = np.vstack([np.zeros_like(r), np.cumsum(slopes[:-1] * np.diff(times)[:, None], axis=0)])
    v_after = np.cumsum(jumps, axis=0) + ramp  # (K, N): v just after the pulses at times[k]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_star = times[:, None] + (theta - v_after) / slopes  # where the segment's line reaches theta
    on_pulse = v_after > theta
    on_ramp = ~on_pulse & (slopes > 0) & (t_star < ends[:, None])
    crossing = on_pulse | on_ramp
    fired = np.flatnonzero(crossing.any(axis=0))
    k = crossing[:, fired].argmax(axis=0)
    first = np.where(on_pulse[k, fired], times[k], t_star[k, fired])
    spike_time, spike_index = list(first), list(fired)
    for neuron, k_n, t_n in zip(fired, k, first):
        t_from, v_from = t_n, reset[neuron]
        while v_from > -np.inf and k_n < len(times):  # after a spike: v = v_reset, then on
            slope = slopes[k_n, neuron]
            if v_from > theta[neuron]:
                spike_time.append(t_from)
                spike_index.append(neuron)
                v_from = reset[neuron]
            elif slope > 0 and (t_next := t_from + (theta[neuron] - v_from) / slope) < ends[k_n]:
                spike_time.append(t_next)
                spike_index.append(neuron)
                t_from, v_from = t_next, reset[neuron]
            else:
                k_n += 1
                if k_n < len(times):
                    v_from += slope * (times[k_n] - t_from) + jumps[k_n, neuron]
                    t_from = times[k_n]
    order = np.lexsort((np.array(spike_index, dtype=np.int64), np.array(spike_time)))
    return Events(
        np.array(spike_time)[order],
        np.array(spike_index, dtype=np.int64)[order],
        np.ones(len(order)),
        dense.shape,
    )


def interpret(graph: Any, t_in: np.ndarray) -> dict[str, Events]:
    """Run ``graph`` on one sample's input spike times ``t_in`` (``inf`` = no spike): the
    output of every node, by name, in the graph's edge order (a chain from its Input)."""
    after = dict(graph.edges)
    name = next(n for n, node in graph.nodes.items() if isinstance(node, nir.Input))
    shape = tuple(int(d) for d in graph.nodes[name].input_type["input"])
    fired = np.flatnonzero(np.isfinite(t_in.reshape(-1)))
    signal: Events | Dense = Events(t_in.reshape(-1)[fired].astype(np.float64), fired, np.ones(len(fired)), shape)
    outputs: dict[str, Any] = {name: signal}
    while name in after:
        name = after[name]
        node = graph.nodes[name]
        if isinstance(node, nir.Linear):
            signal = _linear(signal, node.weight)
        elif isinstance(node, nir.Conv2d):
            assert isinstance(signal, Events)
            signal = _conv2d(signal, node)
        elif isinstance(node, nir.SumPool2d):
            assert isinstance(signal, Events)
            signal = _sumpool2d(signal, node)
        elif isinstance(node, nir.Flatten):
            assert isinstance(signal, Events) and node.start_dim == 0 and node.end_dim == -1
            signal = Events(signal.time, signal.index, signal.amount, (math.prod(signal.shape),))
        elif isinstance(node, nir.I):
            signal = _integrator(signal, np.asarray(node.r, dtype=np.float64))
        elif isinstance(node, nir.IF):
            signal = _integrate_and_fire(signal, node)
        elif not isinstance(node, nir.Output):
            raise NotImplementedError(type(node).__name__)
        outputs[name] = signal
    return outputs


def first_spikes(events: Events) -> np.ndarray:
    """Each neuron's spike time (``inf`` if none), asserting that none spikes twice."""
    assert len(np.unique(events.index)) == len(events.index), "a neuron spiked twice"
    times = np.full(math.prod(events.shape), np.inf)
    times[events.index] = events.time
    return times.reshape(events.shape)


# ---------------------------------------------------------------- exactness


@pytest.fixture(scope="module")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    test = load_dataset("mnist", splits=("test",))["test"]
    return test.images, test.labels


def compare(path: Path, images: torch.Tensor, tmp_path: Path) -> float:
    """Every IF node's spike times from the written and re-read graph against ``forward_all``
    (float64), image by image, and every decision; returns the largest relative difference
    ``|t_nir - t_stdbp| / max(1, t_stdbp)`` (late spikes, up to ~1e6 time units, have
    absolute differences of a few 1e-11)."""
    model = load_model(path)
    write_nir(export_nir(model), tmp_path / "net.nir")
    graph = nir.read(tmp_path / "net.nir")
    neurons = [name for name, node in graph.nodes.items() if isinstance(node, nir.IF)]
    assert len(neurons) == len(model.layers)
    t_in = latency_encode(images, dtype=torch.float64).reshape(len(images), -1)
    reference = [t.detach().numpy() for t in model.double().forward_all(t_in)]
    worst = 0.0
    for b in range(len(images)):
        outputs = interpret(graph, reference[0][b])
        for layer, name in enumerate(neurons, start=1):
            got, want = first_spikes(outputs[name]), reference[layer][b]
            assert got.shape == want.shape
            assert np.array_equal(np.isfinite(got), np.isfinite(want)), f"image {b}, {name}: other neurons fire"
            fired = np.isfinite(want)
            if fired.any():
                error = np.abs(got[fired] - want[fired]) / np.maximum(1.0, want[fired])
                worst = max(worst, float(error.max()))
        decision = first_spike_decision(torch.from_numpy(first_spikes(outputs["output"]))[None])
        assert int(decision) == int(first_spike_decision(torch.from_numpy(reference[-1][b : b + 1])))
    return worst


def test_fully_connected_spike_times_are_exact(mnist_test, tmp_path: Path) -> None:
    """784-800-10 on 300 MNIST test images: every spike of every layer, and every decision."""
    assert compare(FC, mnist_test[0][:300], tmp_path) <= 1e-12


def test_convolutional_spike_times_are_exact(mnist_test, tmp_path: Path) -> None:
    """The paper's convolutional network (conv, pooling, flatten) on 30 MNIST test images."""
    assert compare(CONV, mnist_test[0][:30], tmp_path) <= 1e-12


# ---------------------------------------------------------------- the interpreter itself, by hand


def _tiny_graph(weight: list[list[float]], threshold: float, reset: float) -> Any:
    n_out, n_in = np.shape(weight)
    ones = np.ones(n_out)
    return nir.NIRGraph.from_list(
        nir.Input(input_type={"input": np.array([n_in])}),
        nir.Linear(weight=np.array(weight, dtype=np.float64)),
        nir.I(r=ones),
        nir.IF(r=ones, v_threshold=ones * threshold, v_reset=ones * reset),
    )


def test_interpreter_by_hand() -> None:
    """V_0 = 2 (t - 0.5) reaches 0.5 at t = 0.75; V_1 = 0.5 (t - 0.5) is 0.25 at t = 1, then
    rises with slope 1.5 and reaches 0.5 at t = 7/6; V_2 = -(t - 0.5) + (t - 1) never does."""
    graph = _tiny_graph([[2.0, 0.0], [0.5, 1.0], [-1.0, 1.0]], threshold=0.5, reset=-np.inf)
    spikes = interpret(graph, np.array([0.5, 1.0]))["if"]
    np.testing.assert_allclose(first_spikes(spikes), [0.75, 1 + 0.25 / 1.5, np.inf], rtol=1e-15)


def test_interpreter_with_a_finite_reset_fires_again() -> None:
    """A unit current on [0, 3.5) into IF(v_threshold=1, v_reset=0) fires at 1, 2 and 3."""
    node = nir.IF(r=np.ones(1), v_threshold=np.ones(1), v_reset=np.zeros(1))
    current = Dense(np.array([0.0, 3.5]), np.zeros((2, 1)), np.array([[1.0], [0.0]]), (1,))
    np.testing.assert_allclose(_integrate_and_fire(current, node).time, [1.0, 2.0, 3.0], rtol=1e-15)


def test_interpreter_pools_the_first_spike() -> None:
    """SumPool2d into IF(0.5): the window's first spike fires it at once; later ones do not."""
    pool = nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))
    neuron = nir.IF(r=np.ones((1, 1, 2)), v_threshold=np.full((1, 1, 2), 0.5), v_reset=np.full((1, 1, 2), -np.inf))
    spikes = Events(np.array([0.3, 0.2, 0.9, 0.7]), np.array([0, 1, 2, 6]), np.ones(4), (1, 2, 4))
    out = _integrate_and_fire(_sumpool2d(spikes, pool), neuron)
    np.testing.assert_array_equal(first_spikes(out), [[[0.2, 0.7]]])


# ---------------------------------------------------------------- round trip and metadata


def _same_spikes(a: torch.nn.Module, b: torch.nn.Module, t_in: torch.Tensor) -> None:
    for got, want in zip(b.forward_all(t_in), a.forward_all(t_in)):
        assert got.dtype == want.dtype and torch.equal(got, want)  # bitwise, inf included


@pytest.mark.parametrize("path, count", [(FC, 300), (CONV, 60)], ids=["784-800-10", "conv"])
def test_round_trip_gives_identical_spike_times(mnist_test, tmp_path: Path, path: Path, count: int) -> None:
    model = load_model(path)
    write_nir(export_nir(model, dataset="mnist"), tmp_path / "net.nir")
    again = import_nir(tmp_path / "net.nir")
    assert (again.arch, again.threshold) == (model.arch, model.threshold)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    _same_spikes(model, again, latency_encode(mnist_test[0][:count]).reshape(count, -1))


@pytest.mark.parametrize(
    "arch, threshold, dtype",
    [
        ("28x28-40-10", 0.3, torch.float32),
        ("3x12x12-4C3-P2-2C2-7", 1.7, torch.float32),
        ("1x14x14-P2-5C3-6", 1.0, torch.float64),
        ("2x10x10-3C3p1-P2-4C5p2-6", 1.0, torch.float32),
    ],
)
def test_round_trip_of_other_networks(arch: str, threshold: float, dtype: torch.dtype) -> None:
    """Thresholds that float32 cannot hold, several channels, pooling first, float64 weights."""
    torch.manual_seed(0)
    model = build(arch, threshold=threshold).to(dtype)
    again = import_nir(export_nir(model))
    assert again.arch == arch.replace("1x14x14", "14x14") and again.threshold == threshold
    assert next(again.parameters()).dtype == dtype
    t_in = torch.rand(16, *model.input_shape, dtype=dtype) * 3
    t_in[t_in > 2.5] = float("inf")
    _same_spikes(model, again, t_in.reshape(16, -1))


def test_metadata_says_what_the_nodes_cannot(tmp_path: Path) -> None:
    write_nir(export_nir(load_model(FC), t_max=1.0, dataset="mnist"), tmp_path / "net.nir")
    meta = nir.read(tmp_path / "net.nir").metadata
    assert meta["arch"] == "784-800-10" and meta["t_max"] == 1.0 and meta["dataset"] == "mnist"
    assert "t = t_max * (1 - x)" in meta["input_encoding"] and "never spikes" in meta["input_encoding"]
    assert "at most once" in meta["single_spike"] and "fires first" in meta["decision"]
    assert "time_unit" in meta and meta["stdbp_nir_format"] == 1


def test_pooling_is_sumpool_into_a_one_spike_if() -> None:
    graph = export_nir(build("8x8-2C3-P2-4"))
    pool, first = graph.nodes["layer2_sumpool"], graph.nodes["layer2_first"]
    assert isinstance(pool, nir.SumPool2d) and tuple(pool.kernel_size) == (2, 2) and tuple(pool.stride) == (2, 2)
    assert isinstance(first, nir.IF) and np.all(first.v_threshold == 0.5) and np.all(first.v_reset == -np.inf)
    assert isinstance(graph.nodes["flatten"], nir.Flatten)


# ---------------------------------------------------------------- refusals


def _graph(arch: str = "6x6-2C3-P2-3-4") -> Any:
    torch.manual_seed(0)
    return export_nir(build(arch))


def _refused(graph: Any, *words: str) -> None:
    with pytest.raises(StdbpError) as caught:
        import_nir(graph)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def _replace(graph: Any, name: str, node: Any) -> Any:
    nodes = {**graph.nodes, name: node}
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata={}, type_check=False)


def test_refuses_other_neuron_models() -> None:
    graph = _graph()
    lif = nir.LIF(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3))
    _refused(_replace(graph, "layer3_neuron", lif), "'layer3_neuron'", "LIF")
    _refused(_replace(graph, "layer3_integrator", nir.I(r=np.full(3, 2.0))), "'layer3_integrator'", "r != 1")
    neuron = graph.nodes["layer4_neuron"]
    _refused(
        _replace(graph, "layer4_neuron", nir.IF(r=neuron.r, v_threshold=neuron.v_threshold, v_reset=np.zeros(4))),
        "'layer4_neuron'",
        "-inf",
    )
    _refused(
        _replace(
            graph, "layer4_neuron", nir.IF(r=neuron.r, v_threshold=neuron.v_threshold * 2, v_reset=neuron.v_reset)
        ),
        "'layer4_neuron'",
        "one threshold",
    )
    pooled = graph.nodes["layer2_first"]
    _refused(
        _replace(graph, "layer2_first", nir.IF(r=pooled.r, v_threshold=pooled.r, v_reset=pooled.v_reset)),
        "'layer2_first'",
        "v_threshold < 1",
    )


def test_refuses_other_weights_and_geometry() -> None:
    graph = _graph()
    weight = graph.nodes["layer3_linear"].weight.copy()
    weight[0, 0] = np.nan
    _refused(_replace(graph, "layer3_linear", nir.Linear(weight=weight)), "'layer3_linear'", "non-finite")
    _refused(_replace(graph, "layer3_linear", nir.Linear(weight=np.ones((3, 7)))), "'layer3_linear'", "weight (3, 7)")
    affine = nir.Affine(weight=graph.nodes["layer3_linear"].weight, bias=np.ones(3))
    _refused(_replace(graph, "layer3_linear", affine), "'layer3_linear'", "nonzero bias")
    conv = graph.nodes["layer1_conv"]
    strided = nir.Conv2d(None, conv.weight, stride=2, padding=0, dilation=1, groups=1, bias=conv.bias)
    _refused(_replace(graph, "layer1_conv", strided), "'layer1_conv'", "stride (2, 2)")
    for padding, message in (([1, 0], "both axes alike"), ([3, 3], "less than the kernel")):
        padded = nir.Conv2d(None, conv.weight, stride=1, padding=padding, dilation=1, groups=1, bias=conv.bias)
        _refused(_replace(graph, "layer1_conv", padded), "'layer1_conv'", message)
    pool = nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([1, 1]), padding=np.array([0, 0]))
    _refused(_replace(graph, "layer2_sumpool", pool), "'layer2_sumpool'", "stride = window")
    avg = nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))
    _refused(_replace(graph, "layer2_sumpool", avg), "'layer2_sumpool'", "AvgPool2d", "not part of stdbp's form")


def test_refuses_graphs_that_are_not_one_chain() -> None:
    graph = _graph("4-3-2")
    edges = list(graph.edges)
    cut = nir.NIRGraph(nodes=dict(graph.nodes), edges=edges[:2] + edges[3:], metadata={}, type_check=False)
    _refused(cut, "'layer1_integrator'", "no outgoing edge")
    branch = nir.NIRGraph(nodes=dict(graph.nodes), edges=[*edges, ("input", "layer2_linear")], type_check=False)
    _refused(branch, "'input'", "feeds two nodes")
    dangling = nir.NIRGraph(nodes=dict(graph.nodes), edges=[*edges, ("layer2_neuron", "ghost")], type_check=False)
    _refused(dangling, "'ghost'", "not in the graph")
    inner = _graph("4-3-2")
    nested = _replace(graph, "layer1_integrator", inner)
    _refused(nested, "'layer1_integrator'", "subgraph")
    no_neuron = {k: v for k, v in graph.nodes.items() if k != "layer2_neuron"}
    short = [e for e in edges if "layer2_neuron" not in e] + [("layer2_integrator", "output")]
    _refused(nir.NIRGraph(nodes=no_neuron, edges=short, type_check=False), "'layer2_integrator'", "IF")
    with pytest.raises(StdbpError, match="NIRGraph"):
        import_nir(nir.LIF(tau=np.ones(1), r=np.ones(1), v_leak=np.zeros(1), v_threshold=np.ones(1)))


def test_refuses_files_that_are_not_graphs(tmp_path: Path) -> None:
    (tmp_path / "junk.nir").write_bytes(b"\x89HDF\r\n not really")
    with pytest.raises(StdbpError, match="junk.nir is not a readable NIR graph"):
        import_nir(tmp_path / "junk.nir")
    with pytest.raises(StdbpError, match="no NIR graph at"):
        import_nir(tmp_path / "missing.nir")


def test_export_refuses_what_nir_cannot_hold() -> None:
    with pytest.raises(StdbpError, match="alpha-PSP"):
        export_nir(build("4-3", neuron="alpha"))
    model = build("4-3-2")
    with torch.no_grad():
        model.layers[1].weight_t[0, 0] = float("nan")
    with pytest.raises(StdbpError, match=r"layer 2 \(SpikingLinear\) has non-finite"):
        export_nir(model)
    model.layers[1] = torch.nn.ReLU()
    with pytest.raises(StdbpError, match=r"layer 2 \(ReLU\) has no NIR form"):
        export_nir(model)


def test_missing_nir_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nir", None)  # import nir now raises ImportError
    with pytest.raises(StdbpError, match=r"pip install 'stdbp\[nir\]'"):
        require_nir()
    assert main(["export", str(FC), "unused.nir"]) == 2


def test_import_stdbp_does_not_import_nir() -> None:
    code = "import sys, stdbp; stdbp.export_nir; print('nir' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


# ---------------------------------------------------------------- command line


def test_cli_export_import_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph, model_file = tmp_path / "fc.nir", tmp_path / "fc.pt"
    assert main(["export", str(FC), str(graph)]) == 0
    assert nir.read(graph).metadata["dataset"] == "mnist"
    assert main(["export", str(FC), str(graph)]) == 2  # exists: needs --force
    assert main(["export", str(FC), str(graph), "--force"]) == 0
    assert main(["import", str(graph), str(model_file)]) == 0
    original, imported = load_model(FC), load_model(model_file)
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), imported.state_dict().values()))
    capsys.readouterr()
    assert main(["eval", str(model_file), "--json"]) == 0
    assert '"accuracy": 0.9883' in capsys.readouterr().out


def test_cli_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.nir").write_text("not a graph")
    assert main(["import", str(tmp_path / "junk.nir"), str(tmp_path / "out.pt")]) == 2
    assert main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "out.nir")]) == 2
    write_nir(_replace(_graph("4-3-2"), "layer2_integrator", nir.I(r=np.full(2, 3.0))), tmp_path / "bad.nir")
    assert main(["import", str(tmp_path / "bad.nir"), str(tmp_path / "out.pt")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("stdbp: error: ") for line in errors)
    assert "'layer2_integrator'" in errors[2]
    assert not (tmp_path / "out.pt").exists()


# ---------------------------------------------------------------- replay in Norse (when installed)


def test_norse_replay_of_the_adapted_graph(mnist_test) -> None:
    """experiments/nir_replay.py's replay of 784-800-10 in Norse at dt = 1/100 of the coding
    window decides as stdbp does on (nearly) every image. Norse is not in the dev extra (it
    pins torchvision): this runs where it is installed."""
    pytest.importorskip("norse")
    import importlib.util

    spec = importlib.util.spec_from_file_location("nir_replay", FC.parents[1] / "experiments" / "nir_replay.py")
    assert spec is not None and spec.loader is not None
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    model, images = load_model(FC), mnist_test[0][:40]
    t_in = latency_encode(images).reshape(len(images), -1)
    t_out = model(t_in).detach()
    got, times, _ = replay.norse_replay(export_nir(model), t_in, np.arange(len(images)), 0.01, 3.0, 40, nir)
    assert np.mean(got == first_spike_decision(t_out).numpy()) >= 0.95
    assert np.all(np.abs(times - t_out.min(dim=1).values.numpy()) <= 0.03)


def test_same_padding_imports_as_the_notations_padding() -> None:
    torch.manual_seed(0)
    model = build("6x6-2C3p1-P2-3-4")
    graph = export_nir(model)
    conv = graph.nodes["layer1_conv"]
    same = nir.Conv2d(conv.input_shape, conv.weight, stride=1, padding="same", dilation=1, groups=1, bias=conv.bias)
    again = import_nir(_replace(graph, "layer1_conv", same))
    assert again.arch == "6x6-2C3p1-P2-3-4"
    t_in = torch.rand(8, 36) * 1.5
    _same_spikes(model, again, t_in)


def test_strided_padded_convolution_exports_exactly_but_does_not_import() -> None:
    """Stride (which no architecture string makes) is exported as NIR says it; the interpreter
    agrees with stdbp, and import refuses it by name."""
    from stdbp.nn.layers import SpikingConv2d, SpikingLinear

    torch.manual_seed(1)
    model = build("1x9x9-2C3-4", threshold=0.5).double()
    model.layers[0] = SpikingConv2d(1, 2, 3, threshold=0.5, stride=2, padding=1, weight_mean=0.5).double()  # (2, 5, 5)
    model.layers[1] = SpikingLinear(50, 4, threshold=0.5, weight_mean=1.0).double()
    t_in = torch.rand(5, 81, dtype=torch.float64) * 1.5
    t_in[t_in > 1.2] = float("inf")
    graph = export_nir(model)
    reference = [t.detach().numpy() for t in model.forward_all(t_in)]
    assert all(0 < np.isfinite(times).mean() < 1 for times in reference[1:])  # firing and silent neurons
    for b in range(5):
        outputs = interpret(graph, reference[0][b])
        for layer, name in ((1, "layer1_neuron"), (2, "layer2_neuron")):
            np.testing.assert_allclose(first_spikes(outputs[name]), reference[layer][b], rtol=1e-12)
    _refused(graph, "'layer1_conv'", "stride (2, 2)")


def test_refuses_a_flatten_that_keeps_channels() -> None:
    graph = _graph("6x6-2C3-3")
    keep = nir.Flatten(input_type={"input": np.array([2, 4, 4])}, start_dim=1, end_dim=-1)
    _refused(_replace(graph, "flatten", keep), "'flatten'", "flattens dims 1..-1")
