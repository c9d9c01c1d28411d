r"""Event-driven simulation of a spiking network, one image at a time, in global time order.

The tensor forward (:meth:`stdbp.nn.network.SpikingNetwork.forward_all`) computes one layer after
the other for a whole batch. This simulator instead does what a neuromorphic chip would: it
keeps one state per neuron and processes spikes one by one, in time order across *all*
layers, so that it can stop at the decision and count the synaptic events spent up to it.

**State.** Each ReL-PSP neuron keeps its slope :math:`s = \sum w_i` and :math:`q = \sum w_i t_i`
over the inputs it has received, so its potential is :math:`V(t) = s\,t - q` (eqs. 8-9). It is
updated only when an input spike arrives. With :math:`s > 0` the potential reaches threshold at
the tentative crossing :math:`t^* = (\vartheta + q) / s` (eq. 12); the neuron fires there unless
an input arrives before :math:`t^*`, which changes :math:`s, q` and so :math:`t^*`. A neuron
fires once and then ignores its inputs.

**Event order.** The next event anywhere in the network is the earliest of: the next input
spike, the next pending spike of a pooling layer, and the earliest tentative crossing of each
ReL-PSP layer (the minimum over blocks of ``BLOCK`` neurons; a block's minimum is recomputed
when one of its neurons receives a spike or fires). So a
neuron fires in :math:`(t_k, t_{next}]`, where :math:`t_k` is the time of its last input and
:math:`t_{next}` the time of its next one, exactly as in the tensor kernels. A new spike is
delivered at once along every outgoing synapse; it is itself an event for the next layer. At
equal times the deeper layer goes first: a crossing at :math:`t` is caused by inputs strictly
before :math:`t`, and an input at :math:`t` is not causal for a neuron firing at :math:`t`
(:math:`C = \{i : t_i < t_j\}`), so equal input times enter together. Earliest-spike pooling
in event form: a pooled unit spikes at the first input spike of its window.

**Decision and SynOps.** The decision is the first output spike (ties to the lowest class;
``-1`` if every output neuron stays silent) and its time. A *synaptic event* (SynOp) is one
spike delivered along one weighted synapse (into a fully connected or convolutional layer),
whether or not its target has already fired; routing a spike into a pooling window is not one.
"Up to the decision" counts the spikes that occur strictly before the decision time (all of
them if there is no decision). With ``stop_at_decision`` the simulation stops at the first
output spike; otherwise it runs until no event is left (or past ``t_end``).

Times are float64 in the units of the input encoding, ``+inf`` for a neuron that never fires.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit
from torch import Tensor

from ..nn.layers import EarliestSpikePool2d, SpikingConv2d, SpikingLinear
from ..nn.network import SpikingNetwork

__all__ = ["EventNetwork", "EventResult", "event_network", "simulate"]

#: Layer kinds in the layer table.
INPUT, DENSE, CONV, POOL = 0, 1, 2, 3
KIND_NAMES = {INPUT: "input", DENSE: "linear", CONV: "conv", POOL: "pool"}
# Columns of the layer table: kind, neurons, offset of the layer's first neuron, output map
# (C, H, W), the connection into the layer (kernel, stride, padding), offset of its weights,
# offset of its tentative crossings (a multiple of BLOCK) and their number of blocks.
KIND, N, OFF, C, H, W, KH, KW, SH, SW, PH, PW, WOFF, COFF, NB = range(15)
#: Tentative crossings are grouped in blocks of this many neurons, each with its minimum.
BLOCK = 32


@dataclass(frozen=True)
class EventNetwork:
    """A :class:`SpikingNetwork` flattened into arrays for the event loop.

    ``table`` is ``(L + 1, 15)`` int64, one row per layer, input first (columns above);
    ``weights`` float64, each layer's weights in the order the loop reads them (linear
    ``(N_in, N_out)``, conv ``(C_in, kH, kW, C_out)``); ``thresholds`` ``(L + 1,)`` float64;
    ``shapes`` each layer's spike-time shape per sample, as ``forward_all`` returns it.
    """

    table: np.ndarray
    weights: np.ndarray
    thresholds: np.ndarray
    shapes: tuple[tuple[int, ...], ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        """``"input"``, ``"linear"``, ``"conv"`` or ``"pool"`` per layer."""
        return tuple(KIND_NAMES[int(k)] for k in self.table[:, KIND])


@dataclass(frozen=True)
class EventResult:
    """What :func:`simulate` reports for a batch of ``B`` images, each simulated on its own.

    ``spike_times[l]`` is ``(B, *shapes[l])`` float64 (layer 0 = the input as given; ``+inf`` =
    no spike, or none before the simulation stopped). ``decision`` ``(B,)`` int64 and
    ``decision_time`` ``(B,)`` float64 (``+inf`` without a decision). ``synops_to_decision`` and
    ``synops_total`` are ``(B, L + 1)`` int64: column ``l`` counts the synaptic events into
    layer ``l`` (column 0 and pooling layers are always 0).
    """

    spike_times: list[np.ndarray]
    decision: np.ndarray
    decision_time: np.ndarray
    synops_to_decision: np.ndarray
    synops_total: np.ndarray


def _pair(value: int | tuple[int, int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if value is None:
        return default
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def event_network(model: SpikingNetwork) -> EventNetwork:
    """Flatten ``model`` (any ReL-PSP network that :func:`stdbp.build` makes) for :func:`simulate`."""
    shape = tuple(model.input_shape) if model.spatial else (int(np.prod(model.input_shape)),)
    rows = [
        [INPUT, int(np.prod(shape)), 0, *(shape if len(shape) == 3 else (shape[0], 1, 1)), 0, 0, 1, 1, 0, 0, 0, 0, 0]
    ]
    shapes, weights, thresholds = [shape], [], [0.0]
    n_weights = n_cross = n_neurons = 0
    for layer in model.layers:
        prev = rows[-1]
        n_neurons += prev[N]
        if isinstance(layer, SpikingLinear):
            n_out = layer.out_features
            geometry, kind, out = (1, 1, 1, 1, 0, 0), DENSE, (n_out, 1, 1)
            w = layer.weight.detach().double().t()  # (N_in, N_out)
            shape = (n_out,)
        elif isinstance(layer, SpikingConv2d):
            k_h, k_w = layer.kernel_size
            (s_h, s_w), (p_h, p_w) = _pair(layer.stride, (1, 1)), _pair(layer.padding, (0, 0))
            h_out, w_out = (prev[H] + 2 * p_h - k_h) // s_h + 1, (prev[W] + 2 * p_w - k_w) // s_w + 1
            geometry, kind, out = (k_h, k_w, s_h, s_w, p_h, p_w), CONV, (layer.out_channels, h_out, w_out)
            w = layer.weight.detach().double().permute(1, 2, 3, 0)  # (C_in, kH, kW, C_out)
            shape = out
        elif isinstance(layer, EarliestSpikePool2d):
            k_h, k_w = _pair(layer.kernel_size, (1, 1))
            s_h, s_w = _pair(layer.stride, (k_h, k_w))
            out = (prev[C], (prev[H] - k_h) // s_h + 1, (prev[W] - k_w) // s_w + 1)
            geometry, kind, w, shape = (k_h, k_w, s_h, s_w, 0, 0), POOL, None, out
        else:
            raise ValueError(f"the event simulator handles ReL-PSP layers only, not {type(layer).__name__}")
        n = int(np.prod(out))
        blocks = -(-n // BLOCK) if kind in (DENSE, CONV) else 0
        rows.append([kind, n, n_neurons, *out, *geometry, n_weights, n_cross, blocks])
        shapes.append(shape)
        thresholds.append(float(getattr(layer, "threshold", 0.0)))
        if w is not None:
            flat = w.contiguous().numpy().ravel()
            weights.append(flat)
            n_weights += flat.size
        n_cross += blocks * BLOCK
    return EventNetwork(
        table=np.array(rows, dtype=np.int64),
        weights=np.concatenate(weights) if weights else np.zeros(0),
        thresholds=np.array(thresholds, dtype=np.float64),
        shapes=tuple(shapes),
    )


# The event loop below works on one image's ``state``, a tuple of arrays (all float64 unless said):
#   t_spike (all neurons): spike times, inf until a neuron fires (the input layer: as given);
#   s, q (all neurons): sum w and sum w t over the inputs a neuron has received;
#   cross_t (COFF/NB blocks per ReL-PSP layer): tentative crossings, inf if none or fired;
#   block_t, block_i (per block): the earliest crossing of each block and its index in cross_t;
#   layer_t, layer_i (per layer): the earliest crossing of each ReL-PSP layer and its neuron;
#   fifo (all neurons, int64), head, tail (per layer, int64): the queue of pending spikes of the
#       input and pooling layers, in time order;
#   dirty (per block, bool), stack (per block, int64): the blocks a delivery has changed.


@njit(cache=True, nogil=True, inline="always")
def _first_min(x, lo, hi):  # pragma: no cover - compiled
    """``(min, k)`` of ``x[lo:hi]``: the minimum and the first ``k >= lo`` where it occurs."""
    m = np.inf
    for k in range(lo, hi):
        m = min(m, x[k])
    for k in range(lo, hi):
        if x[k] == m:
            return m, k
    return m, lo


@njit(cache=True, nogil=True)
def _refresh_block(cross_t, block_t, block_i, b):  # pragma: no cover - compiled
    """Recompute the earliest tentative crossing of block ``b`` (and its index in ``cross_t``)."""
    block_t[b], block_i[b] = _first_min(cross_t, b * BLOCK, (b + 1) * BLOCK)


@njit(cache=True, nogil=True)
def _refresh_layer(table, layer, block_t, block_i, layer_t, layer_i):  # pragma: no cover - compiled
    """Recompute the earliest tentative crossing of ``layer`` from its blocks; ties go to the lowest neuron."""
    first = table[layer, COFF] // BLOCK
    m, b = _first_min(block_t, first, first + table[layer, NB])
    layer_t[layer] = m
    layer_i[layer] = block_i[b] - table[layer, COFF]


@njit(cache=True, nogil=True, inline="always")
def _receive(g, w, t, threshold, s, q, t_spike, cross_t, c):  # pragma: no cover - compiled
    """Neuron ``g`` receives a spike at ``t`` through weight ``w``; its tentative crossing goes to ``cross_t[c]``."""
    if t_spike[g] == np.inf:  # a neuron that has fired ignores its inputs
        s[g] += w
        q[g] += w * t
        cross_t[c] = (threshold + q[g]) / s[g] if s[g] > 0.0 else np.inf


@njit(cache=True, nogil=True, error_model="numpy")
def _receive_all(w, t, threshold, s, q, t_spike, cross_t):  # pragma: no cover - compiled
    """:func:`_receive` for a whole fully connected layer: all arguments are slices of one length.

    Branch-free (a fired neuron adds ``0 * w``), so that LLVM vectorises it.
    """
    for j in range(s.shape[0]):
        alive = t_spike[j] == np.inf
        sj = s[j] + w[j] * alive
        qj = q[j] + w[j] * t * alive
        s[j] = sj
        q[j] = qj
        cross_t[j] = (threshold + qj) / sj if alive & (sj > 0.0) else np.inf


@njit(cache=True, nogil=True, inline="always")
def _window(pos, pad, stride, kernel, n_out):  # pragma: no cover - compiled
    """Output positions ``[lo, hi]`` along one axis whose window holds input position ``pos``."""
    r = pos + pad
    return max(0, (r - kernel + stride) // stride), min(r // stride, n_out - 1)


@njit(cache=True, nogil=True)
def _deliver(table, weights, thresholds, layer, i, t, state):  # pragma: no cover - compiled
    """Deliver the spike of neuron ``i`` of ``layer - 1`` at time ``t`` to ``layer``; return the SynOps."""
    t_spike, s, q, cross_t, block_t, block_i, layer_t, layer_i, fifo, head, tail, dirty, stack = state
    kind = table[layer, KIND]
    off, c0, threshold = table[layer, OFF], table[layer, COFF], thresholds[layer]
    if kind == DENSE:  # every neuron of the layer, and so every block
        n = table[layer, N]
        row = table[layer, WOFF] + i * n
        _receive_all(
            weights[row : row + n],
            t,
            threshold,
            s[off : off + n],
            q[off : off + n],
            t_spike[off : off + n],
            cross_t[c0 : c0 + n],
        )
        for b in range(c0 // BLOCK, c0 // BLOCK + table[layer, NB]):
            _refresh_block(cross_t, block_t, block_i, b)
        _refresh_layer(table, layer, block_t, block_i, layer_t, layer_i)
        return n
    h_in, w_in = table[layer - 1, H], table[layer - 1, W]
    c, y, x = i // (h_in * w_in), (i // w_in) % h_in, i % w_in
    c_out, h_out, w_out = table[layer, C], table[layer, H], table[layer, W]
    k_h, k_w, s_h, s_w = table[layer, KH], table[layer, KW], table[layer, SH], table[layer, SW]
    y_lo, y_hi = _window(y, table[layer, PH], s_h, k_h, h_out)
    x_lo, x_hi = _window(x, table[layer, PW], s_w, k_w, w_out)
    count = n_dirty = 0
    for yo in range(y_lo, y_hi + 1):
        for xo in range(x_lo, x_hi + 1):
            if kind == POOL:  # the pooled unit spikes at the first spike of its window
                g = off + (c * h_out + yo) * w_out + xo
                if t_spike[g] == np.inf:
                    t_spike[g] = t
                    fifo[off + tail[layer]] = g - off
                    tail[layer] += 1
                continue
            ky = y + table[layer, PH] - yo * s_h
            kx = x + table[layer, PW] - xo * s_w
            row = table[layer, WOFF] + ((c * k_h + ky) * k_w + kx) * c_out
            for co in range(c_out):
                j = (co * h_out + yo) * w_out + xo
                _receive(off + j, weights[row + co], t, threshold, s, q, t_spike, cross_t, c0 + j)
                b = (c0 + j) // BLOCK
                if not dirty[b]:  # refresh each block once, after the whole spike is in
                    dirty[b] = True
                    stack[n_dirty] = b
                    n_dirty += 1
            count += c_out
    if kind == CONV:
        for k in range(n_dirty):
            _refresh_block(cross_t, block_t, block_i, stack[k])
            dirty[stack[k]] = False
        _refresh_layer(table, layer, block_t, block_i, layer_t, layer_i)
    return count


@njit(cache=True, nogil=True)
def _next_event(table, state):  # pragma: no cover - compiled
    """``(time, layer, neuron)`` of the earliest pending event; on equal times the deeper layer wins. Layer -1: none."""
    t_spike, s, q, cross_t, block_t, block_i, layer_t, layer_i, fifo, head, tail, dirty, stack = state
    best_t, best_layer, best_i = np.inf, -1, -1
    for layer in range(table.shape[0] - 1, -1, -1):
        if table[layer, NB] > 0:  # a ReL-PSP layer: its earliest tentative crossing
            t, j = layer_t[layer], layer_i[layer]
        elif head[layer] < tail[layer]:  # the input or a pooling layer: its queue of spikes
            j = fifo[table[layer, OFF] + head[layer]]
            t = t_spike[table[layer, OFF] + j]
        else:
            continue
        if t < best_t:
            best_t, best_layer, best_i = t, layer, j
    return best_t, best_layer, best_i


@njit(cache=True, nogil=True)
def _simulate_one(
    t_in, table, weights, thresholds, stop_at_decision, t_end, state, synops_dec, synops_tot
):  # pragma: no cover - compiled
    """Simulate one image, from a fresh ``state``; fill the SynOps rows; return ``(decision, decision_time)``."""
    t_spike, s, q, cross_t, block_t, block_i, layer_t, layer_i, fifo, head, tail, dirty, stack = state
    for array in (t_spike, cross_t, block_t, layer_t):
        array[:] = np.inf
    s[:] = 0.0
    q[:] = 0.0
    for array in (layer_i, head, tail):
        array[:] = 0
    block_i[:] = np.arange(block_i.shape[0]) * BLOCK
    synops_tot[:] = 0
    out = table.shape[0] - 1
    n_in = table[0, N]
    t_spike[:n_in] = t_in
    order = np.argsort(t_in, kind="mergesort")  # input spikes in time order, then by index
    for k in range(n_in):
        if t_in[order[k]] < np.inf:
            fifo[tail[0]] = order[k]
            tail[0] += 1
    decision, t_decision = -1, np.inf
    while True:
        t, layer, i = _next_event(table, state)
        if layer < 0 or t > t_end:
            break
        if table[layer, NB] > 0:  # a ReL-PSP neuron reaches threshold: it fires
            t_spike[table[layer, OFF] + i] = t
            cross_t[table[layer, COFF] + i] = np.inf
            _refresh_block(cross_t, block_t, block_i, (table[layer, COFF] + i) // BLOCK)
            _refresh_layer(table, layer, block_t, block_i, layer_t, layer_i)
        else:
            head[layer] += 1
        if layer == out:
            if decision < 0:
                decision, t_decision = i, t
                synops_dec[:] = synops_tot
                if stop_at_decision:
                    break
            continue
        synops_tot[layer + 1] += _deliver(table, weights, thresholds, layer + 1, i, t, state)
    if decision < 0:
        synops_dec[:] = synops_tot
    return decision, t_decision


@njit(cache=True, nogil=True)
def _simulate_batch(
    t_in, table, weights, thresholds, stop_at_decision, t_end, spikes, decision, t_decision, synops_dec, synops_tot
):  # pragma: no cover - compiled
    """:func:`_simulate_one` for each row of ``t_in`` ``(B, N_0)``; ``spikes`` is ``(B, all neurons)``."""
    n_all, n_layers = spikes.shape[1], table.shape[0]
    n_cross = table[-1, COFF] + table[-1, NB] * BLOCK
    n_blocks = n_cross // BLOCK
    for b in range(t_in.shape[0]):
        state = (
            spikes[b],  # t_spike: every neuron's spike time
            np.empty(n_all),  # s = sum w over the inputs received
            np.empty(n_all),  # q = sum w t
            np.empty(n_cross),  # cross_t: tentative crossings of the ReL-PSP layers
            np.empty(n_blocks),  # block_t, block_i: earliest crossing of each block
            np.empty(n_blocks, dtype=np.int64),
            np.empty(n_layers),  # layer_t, layer_i: earliest crossing of each layer
            np.empty(n_layers, dtype=np.int64),
            np.empty(n_all, dtype=np.int64),  # fifo: spikes of the input and pooling layers, in order
            np.empty(n_layers, dtype=np.int64),  # head and tail of each layer's fifo
            np.empty(n_layers, dtype=np.int64),
            np.zeros(n_blocks, dtype=np.bool_),  # dirty blocks during a delivery
            np.empty(n_blocks, dtype=np.int64),  # and their stack
        )
        decision[b], t_decision[b] = _simulate_one(
            t_in[b], table, weights, thresholds, stop_at_decision, t_end, state, synops_dec[b], synops_tot[b]
        )


def simulate(
    model: SpikingNetwork | EventNetwork,
    t_in: Tensor | np.ndarray,
    stop_at_decision: bool = False,
    t_end: float = math.inf,
) -> EventResult:
    """Event-driven simulation of each image of a batch, in float64.

    Args:
        model: a ReL-PSP network from :func:`stdbp.build`, or its :func:`event_network`
            (flatten once when simulating many batches).
        t_in: ``(B, ...)`` input spike times with ``N_0`` entries per sample (``(B, 784)``,
            ``(B, 1, 28, 28)``, ...), ``+inf`` = no spike.
        stop_at_decision: stop each image at its first output spike.
        t_end: process no event later than this time (default: run until no event is left).

    Returns:
        An :class:`EventResult`. Run to the end, its spike times equal ``model.forward_all``'s.
    """
    net = model if isinstance(model, EventNetwork) else event_network(model)
    times = t_in.detach().cpu().numpy() if isinstance(t_in, Tensor) else np.asarray(t_in)
    batch = times.shape[0] if times.ndim >= 1 else 0
    times = (
        np.ascontiguousarray(times, dtype=np.float64).reshape(batch, -1)
        if batch
        else np.zeros((0, int(net.table[0, N])))
    )
    if times.shape[1] != net.table[0, N]:
        raise ValueError(f"t_in has {times.shape[1]} times per sample, the network takes {int(net.table[0, N])}")
    if np.isnan(times).any() or (times < 0).any():
        raise ValueError("t_in contains NaN or negative spike times; times must be >= 0, or +inf for no spike")
    n_layers = net.table.shape[0]
    spikes = np.empty((batch, int(net.table[:, N].sum())))
    decision = np.empty(batch, dtype=np.int64)
    t_decision = np.empty(batch)
    synops_dec = np.zeros((batch, n_layers), dtype=np.int64)
    synops_tot = np.zeros((batch, n_layers), dtype=np.int64)
    _simulate_batch(
        times,
        net.table,
        net.weights,
        net.thresholds,
        bool(stop_at_decision),
        float(t_end),
        spikes,
        decision,
        t_decision,
        synops_dec,
        synops_tot,
    )
    bounds = list(net.table[:, OFF]) + [spikes.shape[1]]
    layers = [spikes[:, bounds[l] : bounds[l + 1]].reshape(batch, *net.shapes[l]) for l in range(n_layers)]
    return EventResult(layers, decision, t_decision, synops_dec, synops_tot)
