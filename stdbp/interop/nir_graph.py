"""Reading a NIR graph of stdbp's form back into layers, refusing anything else by name.

A graph of stdbp's form is one chain from its ``Input`` node to its ``Output`` node:

* a ReL-PSP layer is ``Linear`` (or ``Affine`` with a zero bias, or ``Conv2d`` with stride 1,
  symmetric zero padding smaller than the kernel, no dilation, one group and a zero bias) -> ``I(r=1)`` -> ``IF(r=1,
  v_threshold=theta, v_reset=-inf)``;
* earliest-spike pooling is ``SumPool2d`` (square window, stride = window, no padding) ->
  ``IF(r=1, 0 <= v_threshold < 1)`` whose reset keeps it silent after its first spike;
* ``Flatten`` (all dimensions) goes between the last spatial layer and the first ``Linear``.

Every ReL-PSP layer has the same threshold, the last layer is fully connected, and shapes
chain. :func:`parse_graph` checks all of it on the node objects alone (it never trusts the
graph's own type inference) and raises :class:`StdbpError` naming the node at fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import StdbpError

__all__ = ["GraphLayer", "ParsedGraph", "parse_graph"]

#: The node types a graph of stdbp's form may hold.
SUPPORTED = "Input, Output, Linear, Affine (zero bias), Conv2d, I, IF, SumPool2d and Flatten"


@dataclass(frozen=True)
class GraphLayer:
    """One stdbp layer read from a graph: ``kind`` is ``"linear"``, ``"conv"`` or ``"pool"``.

    ``weight`` is ``(N_out, N_in)`` for linear, ``(C_out, C_in, k, k)`` for conv, ``None`` for
    pool; ``kernel`` is the conv or pooling window side; ``node`` the name of its weight or
    ``SumPool2d`` node.
    """

    kind: str
    node: str
    weight: np.ndarray | None = None
    kernel: int = 0
    padding: int = 0


@dataclass
class ParsedGraph:
    """A graph of stdbp's form: input shape (``(N,)`` or ``(C, H, W)``), layers, threshold, metadata."""

    input_shape: tuple[int, ...]
    layers: list[GraphLayer] = field(default_factory=list)
    threshold: float = 1.0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        """The architecture string, in the paper's notation, that builds this network."""
        shape = self.input_shape
        if len(shape) == 1:
            tokens = [str(shape[0])]
        else:
            tokens = [f"{shape[1]}x{shape[2]}" if shape[0] == 1 else "x".join(map(str, shape))]
        for layer in self.layers:
            if layer.kind == "conv":
                assert layer.weight is not None
                tokens.append(
                    f"{layer.weight.shape[0]}C{layer.kernel}" + (f"p{layer.padding}" if layer.padding else "")
                )
            elif layer.kind == "pool":
                tokens.append(f"P{layer.kernel}")
            else:
                assert layer.weight is not None
                tokens.append(str(layer.weight.shape[0]))
        return "-".join(tokens)


def _error(text: str) -> StdbpError:
    """A one-line :class:`StdbpError`: whitespace (array reprs span lines) folded, at most 400 characters."""
    line = " ".join(text.split())
    return StdbpError(line if len(line) <= 400 else line[:397] + "...")


def _refuse(name: str, node: Any, text: str) -> StdbpError:
    return _error(f"node {name!r} ({type(node).__name__}) {text}")


def _numbers(name: str, node: Any, attribute: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``node.attribute`` as a float64 array (of ``shape`` if given), refused unless numeric."""
    value = getattr(node, attribute, None)
    try:
        array = np.asarray(value)
    except Exception:  # any object that does not convert  # noqa: BLE001
        array = np.asarray(None)
    if array.dtype.kind not in "fiu":
        raise _refuse(name, node, f"has no numeric {attribute} (found {type(value).__name__})")
    if shape is not None and array.shape != shape:
        raise _refuse(name, node, f"has {attribute} of shape {array.shape}, expected {shape} (the shape of its input)")
    return array.astype(np.float64)


def _ints(name: str, node: Any, attribute: str, default: int | None = None) -> tuple[int, int]:
    """``node.attribute`` as an ``(H, W)`` pair of ints (an int stands for both)."""
    value = getattr(node, attribute, default)
    array = np.asarray(value)
    if array.dtype.kind not in "iu" or array.size not in (1, 2) or array.ndim > 1:
        raise _refuse(name, node, f"has {attribute} {value!r}; expected an int or a pair of ints")
    flat = array.reshape(-1)
    return (int(flat[0]), int(flat[-1]))


def _weight(name: str, node: Any, ndim: int) -> np.ndarray:
    weight = getattr(node, "weight", None)
    array = np.asarray(weight) if isinstance(weight, np.ndarray) else None
    if array is None or array.dtype.kind not in "fiu" or array.ndim != ndim or 0 in array.shape:
        found = "none" if array is None else f"shape {array.shape}, dtype {array.dtype}"
        raise _refuse(name, node, f"needs a numeric {ndim}-D weight array, found {found}")
    if not np.isfinite(array).all():
        raise _refuse(name, node, "has non-finite weights (NaN or inf)")
    return array if array.dtype == np.float64 else array.astype(np.float32)


def _zero_bias(name: str, node: Any, size: int) -> None:
    bias = _numbers(name, node, "bias")
    if bias.size not in (1, size) or bias.ndim > 1:
        raise _refuse(name, node, f"has a bias of shape {bias.shape}, expected ({size},)")
    if np.any(bias != 0):
        raise _refuse(name, node, "has a nonzero bias; a ReL-PSP layer has none (its only input current is spikes)")


def _chain(graph: Any, nir: Any) -> list[tuple[str, Any]]:
    """The graph's nodes in order from its ``Input`` to its ``Output``; refuse any other shape of graph."""
    nodes, edges = getattr(graph, "nodes", None), getattr(graph, "edges", None)
    if not isinstance(nodes, dict) or not nodes or edges is None:
        raise _error("not a NIR graph of stdbp's form: it has no nodes or no edges")
    for name, node in nodes.items():
        if not isinstance(name, str):
            raise _error(f"node name {name!r} is not a string")
        if isinstance(node, nir.NIRGraph):
            raise _refuse(name, node, "is a subgraph; stdbp networks are one flat chain of nodes")
        if not isinstance(node, nir.NIRNode):
            raise _refuse(name, node, "is not a NIR node")
    starts = [name for name, node in nodes.items() if isinstance(node, nir.Input)]
    ends = [name for name, node in nodes.items() if isinstance(node, nir.Output)]
    if len(starts) != 1 or len(ends) != 1:
        raise _error(
            f"a graph of stdbp's form has one Input and one Output node; this one has inputs {starts} and outputs {ends}"
        )
    after: dict[str, str] = {}
    before: dict[str, str] = {}
    for edge in edges:
        if not (isinstance(edge, (tuple, list)) and len(edge) == 2 and all(isinstance(e, str) for e in edge)):
            raise _error(f"edge {edge!r} is not a pair of node names")
        source, target = edge
        for end in (source, target):
            if end not in nodes:
                raise _error(f"edge ({source!r}, {target!r}) names node {end!r}, which is not in the graph")
        if source in after:
            raise _refuse(
                source, nodes[source], f"feeds two nodes ({after[source]!r} and {target!r}); stdbp reads one chain"
            )
        if target in before:
            raise _refuse(
                target, nodes[target], f"has two inputs ({before[target]!r} and {source!r}); stdbp reads one chain"
            )
        after[source], before[target] = target, source
    chain, name = [starts[0]], starts[0]
    while name != ends[0]:
        if name not in after:
            raise _refuse(
                name, nodes[name], f"has no outgoing edge: the chain from {starts[0]!r} stops before the output"
            )
        name = after[name]
        if name in chain:
            raise _refuse(name, nodes[name], "closes a cycle; stdbp networks are feed-forward")
        chain.append(name)
    for name, node in nodes.items():
        if name not in chain:
            raise _refuse(name, node, f"is not on the chain from {starts[0]!r} to {ends[0]!r}")
    return [(name, nodes[name]) for name in chain]


class _Reader:
    """Walks the chain, checking each node against the shape it receives."""

    def __init__(self, chain: list[tuple[str, Any]], nir: Any) -> None:
        self.chain, self.nir, self.pos = chain, nir, 1
        name, node = chain[0]
        raw = node.input_type.get("input") if isinstance(node.input_type, dict) else None
        dims = np.asarray(raw) if raw is not None else np.zeros(0)
        if dims.dtype.kind not in "iuf" or dims.ndim != 1 or len(dims) not in (1, 3) or not np.all(dims >= 1):
            raise _refuse(name, node, f"has shape {raw!r}; stdbp networks take (N,) or (C, H, W) spike trains")
        self.shape: tuple[int, ...] = tuple(int(d) for d in dims)
        self.parsed = ParsedGraph(input_shape=self.shape)
        self.thresholds: list[tuple[str, Any, float]] = []

    def next(self, expected: str, after: str) -> tuple[str, Any]:
        if self.pos >= len(self.chain) - 1:
            raise _error(f"the chain ends after node {after!r}; expected {expected} node there")
        item = self.chain[self.pos]
        self.pos += 1
        return item

    def relpsp_neuron(self, after: str) -> None:
        """The ``I`` and ``IF`` nodes that follow a weight node."""
        shape = self.shape
        name, node = self.next("an I", after)
        if not isinstance(node, self.nir.I):
            raise _refuse(
                name, node, f"follows {after!r}; a ReL-PSP layer is weights -> I(r=1) -> IF(r=1, v_reset=-inf)"
            )
        if np.any(_numbers(name, node, "r", shape) != 1.0):
            raise _refuse(name, node, "has r != 1; the ReL-PSP layer's current is its weighted input spikes, r = 1")
        integrator = name
        name, node = self.next("an IF", integrator)
        if not isinstance(node, self.nir.IF):
            raise _refuse(
                name, node, f"follows {integrator!r}; a ReL-PSP layer is weights -> I(r=1) -> IF(r=1, v_reset=-inf)"
            )
        if np.any(_numbers(name, node, "r", shape) != 1.0):
            raise _refuse(name, node, "has r != 1; stdbp's potential integrates the current with r = 1")
        threshold = _numbers(name, node, "v_threshold", shape)
        if not (np.all(threshold == threshold.flat[0]) and 0 < threshold.flat[0] < math.inf):
            raise _refuse(name, node, "needs one positive finite v_threshold for all its neurons")
        if np.any(_numbers(name, node, "v_reset", shape) != -math.inf):
            raise _refuse(
                name, node, "has v_reset != -inf; a ReL-PSP neuron fires once, which NIR says as v_reset = -inf"
            )
        self.thresholds.append((name, node, float(threshold.flat[0])))

    def linear(self, name: str, node: Any) -> None:
        if len(self.shape) != 1:
            raise _refuse(name, node, f"receives a {self.shape} map; put a Flatten node before it")
        weight = _weight(name, node, 2)
        if weight.shape[1] != self.shape[0]:
            raise _refuse(name, node, f"has weight {weight.shape} (out, in), but its input has {self.shape[0]} neurons")
        if isinstance(node, self.nir.Affine):
            _zero_bias(name, node, weight.shape[0])
        self.shape = (weight.shape[0],)
        self.relpsp_neuron(name)
        self.parsed.layers.append(GraphLayer("linear", name, weight))

    def conv(self, name: str, node: Any) -> None:
        if len(self.shape) != 3:
            raise _refuse(name, node, f"receives {self.shape}; a convolution needs a (C, H, W) map")
        weight = _weight(name, node, 4)
        c_out, c_in, k_h, k_w = weight.shape
        channels, height, width = self.shape
        if c_in != channels or k_h != k_w:
            raise _refuse(name, node, f"has weight {weight.shape}; expected (C_out, {channels}, k, k), square kernels")
        if isinstance(node.padding, str) and node.padding not in ("valid", "same"):
            raise _refuse(name, node, f"has padding {node.padding!r}; expected 'valid', 'same' or a number")
        if isinstance(node.padding, str) and node.padding == "same" and k_h % 2 == 0:
            raise _refuse(
                name, node, f"has padding 'same' with an even {k_h}x{k_w} kernel; stdbp pads both sides alike"
            )
        padding = (
            {"valid": (0, 0), "same": ((k_h - 1) // 2,) * 2}[node.padding]
            if isinstance(node.padding, str)
            else _ints(name, node, "padding")
        )
        if padding[0] != padding[1] or not 0 <= padding[0] < k_h:
            raise _refuse(name, node, f"has padding {padding}; stdbp pads both axes alike, by less than the kernel")
        if k_h > height + 2 * padding[0] or k_w > width + 2 * padding[1]:
            raise _refuse(name, node, f"has a {k_h}x{k_w} kernel, larger than its {height}x{width} input (padded)")
        settings = {"stride": _ints(name, node, "stride"), "dilation": _ints(name, node, "dilation")}
        for key, want in (("stride", (1, 1)), ("dilation", (1, 1))):
            if settings[key] != want:
                raise _refuse(name, node, f"has {key} {settings[key]}; stdbp's architecture strings make {want}")
        if int(np.asarray(node.groups)) != 1:
            raise _refuse(name, node, f"has groups={node.groups}; stdbp convolutions have one group")
        if node.input_shape is not None and tuple(int(d) for d in np.asarray(node.input_shape)) != (height, width):
            raise _refuse(name, node, f"has input_shape {node.input_shape}, but receives {height}x{width} maps")
        _zero_bias(name, node, c_out)
        p = padding[0]
        self.shape = (c_out, height + 2 * p - k_h + 1, width + 2 * p - k_w + 1)
        self.relpsp_neuron(name)
        self.parsed.layers.append(GraphLayer("conv", name, weight, kernel=k_h, padding=p))

    def pool(self, name: str, node: Any) -> None:
        if len(self.shape) != 3:
            raise _refuse(name, node, f"receives {self.shape}; pooling needs a (C, H, W) map")
        kernel, stride = _ints(name, node, "kernel_size"), _ints(name, node, "stride")
        padding = _ints(name, node, "padding")
        k = kernel[0]
        if kernel[1] != k or stride != kernel or padding != (0, 0) or k < 1:
            raise _refuse(
                name,
                node,
                f"has kernel {kernel}, stride {stride}, padding {padding}; stdbp pools square windows with stride = window, no padding",
            )
        channels, height, width = self.shape
        if k > height or k > width:
            raise _refuse(name, node, f"has a {k}x{k} window, larger than its {height}x{width} input")
        self.shape = (channels, height // k, width // k)
        first, neuron = name, self.next("an IF", name)
        name, node = neuron
        if not isinstance(node, self.nir.IF):
            raise _refuse(
                name, node, f"follows {first!r}; earliest-spike pooling is SumPool2d -> IF(r=1, v_threshold=0.5)"
            )
        if np.any(_numbers(name, node, "r", self.shape) != 1.0):
            raise _refuse(name, node, "has r != 1; a pooling IF counts its window's spikes with r = 1")
        threshold = _numbers(name, node, "v_threshold", self.shape)
        if not np.all((threshold >= 0) & (threshold < 1)):
            raise _refuse(name, node, "needs 0 <= v_threshold < 1, so that the first spike of its window fires it")
        if np.any(_numbers(name, node, "v_reset", self.shape) > threshold - (k * k - 1)):
            raise _refuse(name, node, "has a v_reset from which the rest of its window could fire it again; use -inf")
        self.parsed.layers.append(GraphLayer("pool", first, kernel=k))

    def flatten(self, name: str, node: Any) -> None:
        ndim = len(self.shape)
        start, end = int(np.asarray(node.start_dim)), int(np.asarray(node.end_dim))
        if ndim != 3 or start != 0 or end not in (-1, ndim - 1):
            raise _refuse(
                name, node, f"flattens dims {start}..{end} of {self.shape}; stdbp flattens a whole (C, H, W) map"
            )
        given = node.input_type.get("input") if isinstance(node.input_type, dict) else None
        if given is not None and tuple(int(d) for d in np.asarray(given)) != self.shape:
            raise _refuse(name, node, f"expects input {tuple(np.asarray(given))}, but receives {self.shape}")
        self.shape = (math.prod(self.shape),)

    def read(self) -> ParsedGraph:
        nir = self.nir
        last = self.chain[-1]
        while self.pos < len(self.chain) - 1:
            name, node = self.chain[self.pos]
            self.pos += 1
            try:
                if isinstance(node, (nir.Linear, nir.Affine)):
                    self.linear(name, node)
                elif isinstance(node, nir.Conv2d):
                    self.conv(name, node)
                elif isinstance(node, nir.SumPool2d):
                    self.pool(name, node)
                elif isinstance(node, nir.Flatten):
                    self.flatten(name, node)
                else:
                    raise _refuse(
                        name, node, f"is not part of stdbp's form; a graph of it holds {SUPPORTED} nodes only"
                    )
            except (TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:  # a field of the wrong kind
                name, node = self.chain[self.pos - 1]
                raise _refuse(name, node, f"is malformed ({type(exc).__name__}: {exc})") from None
        layers = self.parsed.layers
        if not layers or layers[-1].kind != "linear":
            raise _refuse(
                *last, "follows a layer that is not fully connected; stdbp networks end with Linear -> I -> IF"
            )
        given = last[1].output_type.get("output") if isinstance(last[1].output_type, dict) else None
        if given is not None and tuple(int(d) for d in np.asarray(given)) != self.shape:
            raise _refuse(*last, f"has shape {tuple(np.asarray(given))}, but the last layer gives {self.shape}")
        values = {threshold for _, _, threshold in self.thresholds}
        if len(values) > 1:
            name, node, value = next(t for t in self.thresholds if t[2] != self.thresholds[0][2])
            raise _refuse(
                name,
                node,
                f"has v_threshold {value}, another layer {self.thresholds[0][2]}; a stdbp network has one threshold",
            )
        self.parsed.threshold = self.thresholds[0][2]
        return self.parsed


def parse_graph(graph: Any, nir: Any) -> ParsedGraph:
    """Read ``graph`` (a ``nir.NIRGraph``) as a stdbp network, or raise :class:`StdbpError` naming the node at fault.

    ``nir`` is the imported ``nir`` package (imported by the caller, so that this module does
    not need it). Weights are returned as float32 arrays, float64 ones kept as they are.
    """
    chain = _chain(graph, nir)
    parsed = _Reader(chain, nir).read()
    metadata = getattr(graph, "metadata", None)
    parsed.metadata = dict(metadata) if isinstance(metadata, dict) else {}
    return parsed
