r"""NIR export and import: stdbp networks as graphs of the Neuromorphic Intermediate Representation.

NIR (the ``nir`` package, an optional extra: ``pip install 'stdbp[nir]'``) describes a spiking
network as continuous-time nodes joined by edges. A ReL-PSP layer is exactly three of them:

.. math::

    \text{Linear}(W) \to I(r{=}1) \to IF(r{=}1,\ v_{th}{=}\vartheta,\ v_{reset}{=}-\infty)

Each input spike at :math:`t_i` is a Dirac pulse; ``Linear`` weighs it, the integrator ``I``
(:math:`\dot v = R\,I`) turns it into the step current :math:`w_{ij} H(t - t_i)`, and the
``IF`` neuron (:math:`\dot v = R\,I`, a spike when :math:`v > v_{th}`, then :math:`v = v_{reset}`)
integrates that into :math:`V_j(t) = \sum_i w_{ij} \max(0, t - t_i)`, the ReL-PSP potential
(eqs. 8-9). It spikes at the first :math:`t` where :math:`V_j` reaches :math:`\vartheta` (eq. 12), and
:math:`v_{reset} = -\infty` keeps it below threshold for ever after: it fires once. A
convolution is ``Conv2d`` in place of ``Linear``; earliest-spike pooling is ``SumPool2d`` into
``IF(r=1, v_threshold=0.5, v_reset=-inf)``, which the first spike of its window (a jump of 1)
fires at once; ``Flatten`` joins the spatial layers to the fully connected ones. Every state
starts at 0 at :math:`t = 0`. The graph's metadata records what the nodes cannot say (time
unit, input encoding, single-spike rule, decision): :data:`METADATA`.

Reading a graph never runs code from it: ``nir.read`` builds NIR's node classes from HDF5
datasets, and :func:`stdbp.interop.nir_graph.parse_graph` refuses, naming the node, any graph
that is not of this form.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..checkpoint import atomic_write_bytes, load_checkpoint, load_model, save_checkpoint
from ..errors import StdbpError
from ..nn.layers import EarliestSpikePool2d, SpikingConv2d, SpikingLinear
from ..nn.network import SpikingNetwork, build
from ..validation import pair, pool_pairs
from ..version import __version__
from .nir_graph import parse_graph

__all__ = ["METADATA", "FORMAT", "export_nir", "import_nir", "read_nir", "write_nir", "add_parser"]

#: Version of the mapping, stored as ``metadata["stdbp_nir_format"]``.
FORMAT = 1
#: Threshold of a pooling ``IF``: one input spike (a jump of 1) crosses it, no spike leaves it at 0.
POOL_THRESHOLD = 0.5

#: What the graph's nodes cannot say, stored in ``graph.metadata`` (``t_max`` and the network's
#: own entries are added by :func:`export_nir`).
METADATA: dict[str, str] = {
    "time_unit": (
        "times are in the units of the input coding window: inputs spike in [0, t_max], and the node equations "
        "use the same unit; to run with a window of T seconds, multiply every time by s = T / t_max and divide "
        "the r of each IF that follows an I by s (a spike's pulse has area 1 in any unit, so the I nodes and "
        "the pooling IF nodes keep r = 1)"
    ),
    "input_encoding": (
        "latency coding: an input of intensity x in [0, 1] spikes once, at t = t_max * (1 - x); "
        "x = 0 (black pixels) never spikes"
    ),
    "initial_state": "every I and IF state is 0 at t = 0; input spikes at t = 0 count",
    "single_spike": (
        "every IF neuron fires at most once: v_reset = -inf keeps it below threshold after its first spike "
        "(stdbp's neurons ignore their inputs once they have fired)"
    ),
    "threshold_crossing": (
        "a ReL-PSP neuron fires at the first t where v reaches v_threshold; in continuous time this is the "
        "instant NIR's v > v_threshold begins, so the times agree; an input spike at that very instant does "
        "not change it (the potential is continuous)"
    ),
    "pooling": (
        "earliest-spike pooling: SumPool2d into IF(r=1, v_threshold=0.5, v_reset=-inf); the window's first "
        "spike fires it at the same instant"
    ),
    "decision": (
        "the class whose output neuron fires first; equal times go to the lowest class index; "
        "no output spike means no decision"
    ),
}


def require_nir() -> ModuleType:
    """The ``nir`` package, or a :class:`StdbpError` that says how to install it."""
    try:
        import nir
    except ImportError:
        raise StdbpError(
            "NIR export and import need the nir package: pip install 'stdbp[nir]' (or pip install 'nir>=1.0.8')"
        ) from None
    return nir


def _refuse_layer(index: int, layer: torch.nn.Module, text: str) -> StdbpError:
    return StdbpError(f"layer {index} ({type(layer).__name__}) {text}")


def _weight(index: int, layer: torch.nn.Module, weight: torch.Tensor) -> np.ndarray:
    """A copy of ``weight`` as a NumPy array in its own dtype; refuse non-finite weights."""
    array = weight.detach().cpu().numpy().copy()
    if not np.isfinite(array).all():
        raise _refuse_layer(index, layer, "has non-finite weights (NaN or inf); NIR graphs need finite ones")
    return array


def export_nir(model: SpikingNetwork, t_max: float = 1.0, dataset: str | None = None) -> Any:
    """The ``nir.NIRGraph`` of ``model``, a network of ReL-PSP layers and earliest-spike pooling.

    Args:
        model: what :func:`stdbp.build` makes (``neuron="relpsp"``), trained or not.
        t_max: the latency-coding window the network was trained with, in its time units;
            recorded in the metadata (the nodes themselves do not depend on it).
        dataset: recorded in the metadata if given, e.g. ``"mnist"``.

    Returns:
        A graph of ``Input`` -> per layer ``Linear``/``Conv2d`` -> ``I`` -> ``IF`` (or
        ``SumPool2d`` -> ``IF`` for pooling, ``Flatten`` before the first fully connected
        layer of a spatial network) -> ``Output``. Weights keep the model's dtype; ``r``,
        thresholds and resets are float64. Node names are ``layer{l}_{role}``, ``l`` counting
        from 1 as in ``model.layers[l - 1]``.

    Raises:
        StdbpError: for alpha-PSP networks, other layer types, or non-finite weights, naming the layer.
    """
    nir = require_nir()
    if not isinstance(model, SpikingNetwork):
        raise StdbpError(f"export_nir takes a stdbp SpikingNetwork, not {type(model).__name__}")
    if model.neuron != "relpsp":
        raise StdbpError(
            f"{model.arch!r} has {model.neuron}-PSP neurons; only ReL-PSP neurons have an exact NIR form (I -> IF)"
        )
    if not (0 < t_max < float("inf")):
        raise StdbpError(f"t_max must be a positive finite time, got {t_max}")
    shape: tuple[int, ...] = tuple(int(d) for d in model.input_shape)  # (N,) or (C, H, W)
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(shape)})}
    chain = ["input"]

    def add(name: str, node: Any) -> None:
        nodes[name] = node
        chain.append(name)

    def neuron(prefix: str, threshold: float) -> None:
        ones = np.ones(shape, dtype=np.float64)
        add(f"{prefix}_integrator", nir.I(r=ones.copy()))
        add(f"{prefix}_neuron", nir.IF(r=ones.copy(), v_threshold=ones * threshold, v_reset=np.full(shape, -np.inf)))

    for index, layer in enumerate(model.layers, start=1):
        prefix = f"layer{index}"
        if isinstance(layer, SpikingLinear):
            if len(shape) == 3:
                add("flatten", nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1))
                shape = (int(np.prod(shape)),)
            add(f"{prefix}_linear", nir.Linear(weight=_weight(index, layer, layer.weight)))
            shape = (layer.out_features,)
            neuron(prefix, float(layer.threshold))
        elif isinstance(layer, SpikingConv2d):
            weight = _weight(index, layer, layer.weight)
            conv = nir.Conv2d(
                input_shape=shape[1:],
                weight=weight,
                stride=pair(layer.stride, "stride", 1),
                padding=pair(layer.padding, "padding", 0),
                dilation=(1, 1),
                groups=1,
                bias=np.zeros(weight.shape[0], dtype=weight.dtype),
            )
            add(f"{prefix}_conv", conv)
            shape = tuple(int(d) for d in conv.output_type["output"])
            neuron(prefix, float(layer.threshold))
        elif isinstance(layer, EarliestSpikePool2d):
            kernel, stride = pool_pairs(layer.kernel_size, layer.stride)
            add(
                f"{prefix}_sumpool",
                nir.SumPool2d(kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array([0, 0])),
            )
            height, width = ((size - k) // s + 1 for size, k, s in zip(shape[1:], kernel, stride))
            shape = (shape[0], height, width)
            ones = np.ones(shape, dtype=np.float64)
            add(
                f"{prefix}_first",
                nir.IF(r=ones, v_threshold=ones * POOL_THRESHOLD, v_reset=np.full(shape, -np.inf)),
            )
        else:
            raise _refuse_layer(
                index, layer, "has no NIR form; stdbp exports SpikingLinear, SpikingConv2d, EarliestSpikePool2d"
            )
    add("output", nir.Output(output_type={"output": np.array(shape)}))
    metadata: dict[str, Any] = {
        "stdbp_nir_format": FORMAT,
        "stdbp_version": __version__,
        "arch": model.arch,
        "threshold": float(model.threshold),
        "t_max": float(t_max),
        **METADATA,
    }
    if dataset is not None:
        metadata["dataset"] = str(dataset)
    try:
        return nir.NIRGraph(nodes=nodes, edges=list(zip(chain[:-1], chain[1:])), metadata=metadata)
    except (ValueError, AssertionError) as exc:  # NIR's own type check of the shapes
        raise StdbpError(f"{model.arch!r} does not make a consistent NIR graph: {exc}") from None


def read_nir(path: str | os.PathLike) -> Any:
    """``nir.read(path)``, with any failure as one line: a :class:`StdbpError` naming the file."""
    nir = require_nir()
    path = Path(path)
    if not path.is_file():
        raise StdbpError(f"no NIR graph at {path}; give the path of a .nir file (e.g. written by 'stdbp export')")
    try:
        _check_hdf5(path)
        _probe_read(path)
        return nir.read(path)
    except StdbpError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py, NIR's asserts and constructors raise many types
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise StdbpError(f"{path} is not a readable NIR graph ({type(exc).__name__}: {detail})") from None


#: Seconds a graph file may take to read in a separate process before it is refused.
READ_TIMEOUT = float(os.environ.get("STDBP_NIR_READ_TIMEOUT", "30"))


def _probe_read(path: Path) -> None:
    """Read ``path`` once in a child process with a time limit: some corrupted HDF5 files make
    h5py loop for ever, and a thread cannot be stopped. A child that fails is left to the
    in-process read, which reports the error."""
    code = "import sys, nir; nir.read(sys.argv[1])"
    try:
        subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=READ_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise StdbpError(
            f"{path}: reading it did not finish within {READ_TIMEOUT:.0f} s; it is corrupt, refused"
        ) from None


#: The datasets of a graph file may hold at most this multiple of the file's size: more is a
#: corrupted or crafted header, whose reading can take unbounded time and memory.
_MAX_EXPANSION = 4


def _check_hdf5(path: Path) -> None:
    """Refuse, before reading any data, an HDF5 file whose datasets declare more data than the
    file can hold (``nir.write`` compresses only small entries)."""
    import h5py

    limit = _MAX_EXPANSION * path.stat().st_size + 2**16
    declared = 0

    def visit(name: str, item: Any) -> None:
        nonlocal declared
        if isinstance(item, h5py.Dataset):
            declared += int(item.size) * int(item.dtype.itemsize)
            if declared > limit:
                raise StdbpError(
                    f"{path}: its datasets declare more than {limit} bytes in a {path.stat().st_size}-byte file; refused"
                )

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)


def write_nir(graph: Any, path: str | os.PathLike) -> None:
    """``nir.write`` to ``path`` atomically (a temporary file in the same directory, then a rename)."""
    nir = require_nir()
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    atomic_write_bytes(path, buffer.getvalue())


def _graph(graph_or_path: Any) -> Any:
    if isinstance(graph_or_path, (str, os.PathLike)):
        return read_nir(graph_or_path)
    nir = require_nir()
    if not isinstance(graph_or_path, nir.NIRGraph):
        raise StdbpError(
            f"import_nir takes a nir.NIRGraph or the path of a .nir file, not {type(graph_or_path).__name__}"
        )
    return graph_or_path


def import_nir(graph_or_path: Any) -> SpikingNetwork:
    """Rebuild a :class:`SpikingNetwork` from a NIR graph of the form :func:`export_nir` writes.

    Args:
        graph_or_path: a ``nir.NIRGraph``, or the path of a ``.nir`` file (read with ``nir.read``).

    Returns:
        The network, its weights copied bit for bit: float32, or float64 if the graph's weights
        are float64. Its architecture string is rebuilt from the nodes (the metadata is not
        needed); ``export_nir`` then ``import_nir`` gives identical spike times.

    Raises:
        StdbpError: for a file that does not read, or a graph of any other form (other node
            types, shapes that do not chain, non-finite weights, other ``r``, thresholds or
            resets, branches, missing nodes or edges), naming the node at fault.
    """
    nir = require_nir()
    parsed = parse_graph(_graph(graph_or_path), nir)
    model = build(parsed.arch, threshold=parsed.threshold)
    weights = [layer.weight for layer in parsed.layers if layer.weight is not None]
    if any(weight.dtype == np.float64 for weight in weights):
        model = model.double()
    dtype = next(model.parameters()).dtype
    state = {}
    for index, read in enumerate(parsed.layers):
        if read.weight is not None:
            state[f"layers.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(read.weight)).to(dtype)
    model.load_state_dict(state)
    return model


def _t_max(metadata: dict[str, Any]) -> float:
    try:
        t_max = float(metadata.get("t_max", 1.0))
    except (TypeError, ValueError):
        return 1.0
    return t_max if 0 < t_max < float("inf") else 1.0


def _check_out(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise StdbpError(f"{path} exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise StdbpError(f"cannot write {path}: directory {path.parent} does not exist")


def _cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_out(out, args.force)
    trained = load_checkpoint(args.checkpoint).get("config", {})
    trained = trained if isinstance(trained, dict) else {}
    model = load_model(args.checkpoint)
    graph = export_nir(model, t_max=_t_max(trained), dataset=trained.get("dataset"))
    write_nir(graph, out)
    print(f"wrote {out}: {model.arch} as {len(graph.nodes)} NIR nodes (threshold {model.threshold})")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_out(out, args.force)
    graph = read_nir(args.graph)
    model = import_nir(graph)
    metadata = graph.metadata if isinstance(graph.metadata, dict) else {}
    config: dict[str, Any] = {"t_max": _t_max(metadata)}
    if isinstance(metadata.get("dataset"), str):
        config["dataset"] = metadata["dataset"]
    save_checkpoint(out, model, config=config, imported_from=str(args.graph))
    print(f"wrote {out}: {model.arch} (threshold {model.threshold}); evaluate it with: stdbp eval {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``stdbp export`` and ``stdbp import`` to the ``stdbp`` command's subparsers."""
    p = sub.add_parser(
        "export",
        help="write a network as a NIR graph",
        description="Write a trained network as a NIR graph (Linear/Conv2d -> I -> IF per layer; needs pip install 'stdbp[nir]').",
    )
    p.add_argument("checkpoint", help="a .pt file written by stdbp train (model.pt or checkpoint.pt)")
    p.add_argument("out", help="the .nir file to write")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser(
        "import",
        help="read a NIR graph into a stdbp model file",
        description="Read a NIR graph of the form 'stdbp export' writes into a model file for stdbp eval.",
    )
    p.add_argument("graph", help="a .nir file")
    p.add_argument("out", help="the .pt model file to write")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=_cmd_import)
