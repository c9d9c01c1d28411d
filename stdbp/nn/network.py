"""Spiking networks built from the paper's notation (Table 1), e.g. ``784-800-10``.

Layers are separated by ``-``. The first token is the input: a number of neurons (``784``) or a
spatial shape (``28x28`` or ``CxHxW``). After it, ``NCk`` is a convolution of ``N`` channels with
``k x k`` kernels (``NCkpq``: with a border of ``q`` silent inputs on each side, ``q < k``), ``Pk``
an earliest-spike pooling over ``k x k`` windows, and a plain number a fully connected layer of
ReL-PSP neurons, e.g. the paper's ``28x28-6C5-P2-16C5-P2-1024-128-10`` or ``28x28-32C3p1-P2-10``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from .. import functional as F
from ..errors import ArchitectureError
from .layers import AlphaSpikingLinear, EarliestSpikePool2d, SpikingConv2d, SpikingLinear

__all__ = ["LayerSpec", "parse_arch", "build", "SpikingNetwork", "NEURONS"]

#: Neuron kernels: the paper's ReL-PSP, and the alpha-PSP neuron of Section 2.
NEURONS = ("relpsp", "alpha")


@dataclass(frozen=True)
class LayerSpec:
    """One token of an architecture string: ``kind`` is ``"input"``, ``"linear"``, ``"conv"`` or ``"pool"``."""

    kind: str
    size: int = 0
    kernel: int = 0
    shape: tuple[int, ...] = ()
    padding: int = 0


_INPUT_SHAPE = re.compile(r"^\d+(x\d+){1,2}$")
_CONV = re.compile(r"^(\d+)C(\d+)(?:p(\d+))?$")
_POOL = re.compile(r"^P(\d+)$")


def parse_arch(arch: str) -> list[LayerSpec]:
    """Parse an architecture string into layer specs; raise :class:`ArchitectureError` naming the bad token."""
    if not isinstance(arch, str) or not arch.strip():
        raise ArchitectureError("empty architecture string; write layers separated by '-', e.g. 784-800-10")
    tokens = [tok.strip() for tok in arch.strip().split("-")]
    specs: list[LayerSpec] = []
    for pos, tok in enumerate(tokens):
        if pos == 0:
            if tok.isdigit() and int(tok) > 0:
                specs.append(LayerSpec("input", size=int(tok), shape=(int(tok),)))
            elif _INPUT_SHAPE.match(tok) and all(int(d) > 0 for d in tok.split("x")):
                dims = tuple(int(d) for d in tok.split("x"))
                shape = (1, *dims) if len(dims) == 2 else dims
                specs.append(LayerSpec("input", size=int(torch.tensor(shape).prod()), shape=shape))
            else:
                raise ArchitectureError(
                    f"bad input token {tok!r} in architecture {arch!r}: expected a neuron count (784) or a shape (28x28, 1x28x28)"
                )
            continue
        if tok.isdigit() and int(tok) > 0:
            specs.append(LayerSpec("linear", size=int(tok)))
        elif (m := _CONV.match(tok)) and int(m.group(1)) > 0 and int(m.group(2)) > 0:
            padding = int(m.group(3) or 0)
            if padding >= int(m.group(2)):
                raise ArchitectureError(
                    f"bad token {tok!r} in architecture {arch!r}: the padding {padding} must be smaller than the kernel "
                    f"{m.group(2)} (a wider border adds positions that no input reaches)"
                )
            specs.append(LayerSpec("conv", size=int(m.group(1)), kernel=int(m.group(2)), padding=padding))
        elif (m := _POOL.match(tok)) and int(m.group(1)) > 0:
            specs.append(LayerSpec("pool", kernel=int(m.group(1))))
        else:
            raise ArchitectureError(
                f"bad token {tok!r} in architecture {arch!r}: expected a layer size (800), a convolution (16C5, or 16C3p1 padded) or pooling (P2)"
            )
    if len(specs) < 2:
        raise ArchitectureError(f"architecture {arch!r} has no layers after the input; e.g. 784-800-10")
    if specs[-1].kind != "linear":
        raise ArchitectureError(f"architecture {arch!r} must end with a fully connected output layer, e.g. ...-10")
    return specs


def _token(spec: LayerSpec) -> str:
    """The architecture token that ``spec`` was parsed from, for error messages."""
    if spec.kind == "conv":
        return f"{spec.size}C{spec.kernel}" + (f"p{spec.padding}" if spec.padding else "")
    if spec.kind == "pool":
        return f"P{spec.kernel}"
    return str(spec.size)


def _spatial_layer(
    spec: LayerSpec, shape: tuple[int, ...], arch: str, threshold: float, backend: str | None
) -> tuple[nn.Module, tuple[int, int, int]]:
    """The conv or pool layer for ``spec`` on an input map of ``shape = (C, H, W)``, and its output shape."""
    token = _token(spec)
    if len(shape) != 3:
        raise ArchitectureError(
            f"{token!r} in architecture {arch!r} needs a spatial input map, but its input is a flat layer of {shape[0]} neurons; "
            f"start with an input shape such as 28x28 and put convolutions and pooling before fully connected layers"
        )
    channels, height, width = shape
    k = spec.kernel
    height, width = height + 2 * spec.padding, width + 2 * spec.padding
    if k > height or k > width:
        what = "convolution kernel" if spec.kind == "conv" else "pooling window"
        raise ArchitectureError(
            f"{token!r} in architecture {arch!r}: its {what} {k}x{k} is larger than its {height}x{width} input map"
            + (" (padded)" if spec.padding else "")
        )
    if spec.kind == "conv":
        return SpikingConv2d(channels, spec.size, k, padding=spec.padding, threshold=threshold, backend=backend), (
            spec.size,
            height - k + 1,
            width - k + 1,
        )
    return EarliestSpikePool2d(k, backend=backend), (channels, height // k, width // k)


class SpikingNetwork(nn.Module):
    """A feed-forward stack of spiking layers: input spike times -> output spike times.

    Convolutions (``6C5``: 6 channels, 5x5 kernel, stride 1, no padding; ``6C3p1``: padding 1) and earliest-spike
    pooling (``P2``: 2x2 windows, stride 2; rows and columns that do not fill a window are
    dropped, as in ``max_pool2d``) keep the ``(B, C, H, W)`` layout; the first fully connected
    layer after them takes the flattened map ``(B, C*H*W)``.

    ``forward`` takes input times (``+inf`` = no spike) and returns ``(B, classes)`` output
    times. A network with convolutions or pooling takes ``(B, *input_shape)`` or
    ``(B, input_size)``; a fully connected one takes any ``(B, ...)`` with ``input_size`` times
    per sample. ``forward_all`` returns every layer's times, input first, each in the shape the
    layer produced: ``(B, C, H, W)`` for the input and conv/pool layers of a spatial network,
    ``(B, N)`` for fully connected layers (and for the input of a fully connected network).
    """

    def __init__(
        self,
        arch: str,
        threshold: float = 1.0,
        backend: str | None = None,
        neuron: str = "relpsp",
        psp_tau: float = 1.0,
    ) -> None:
        super().__init__()
        if neuron not in NEURONS:
            raise ArchitectureError(f"unknown neuron kernel {neuron!r}; choose one of {', '.join(NEURONS)}")
        self.arch = arch
        self.threshold = threshold
        self.backend = backend
        self.neuron = neuron
        self.psp_tau = psp_tau
        specs = parse_arch(arch)
        self.input_shape = specs[0].shape
        self.spatial = any(spec.kind in ("conv", "pool") for spec in specs)
        layers: list[nn.Module] = []
        shape = self.input_shape if self.spatial else (specs[0].size,)  # (C, H, W) while spatial, then (N,)
        for spec in specs[1:]:
            if spec.kind in ("conv", "pool"):
                if neuron != "relpsp":
                    raise ArchitectureError(
                        f"the {neuron} neuron has fully connected layers only; {_token(spec)!r} in {arch!r} is not available"
                    )
                layer, shape = _spatial_layer(spec, shape, arch, threshold, backend)
            else:
                features = int(torch.tensor(shape).prod())
                if neuron == "alpha":
                    layer = AlphaSpikingLinear(features, spec.size, threshold=threshold, tau=psp_tau)
                else:
                    layer = SpikingLinear(features, spec.size, threshold=threshold, backend=backend)
                shape = (spec.size,)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.num_classes = shape[0]

    @property
    def config(self) -> dict:
        """The arguments that rebuild this network (stored in checkpoints)."""
        return {"arch": self.arch, "threshold": self.threshold, "neuron": self.neuron, "psp_tau": self.psp_tau}

    def shape_input(self, t_in: Tensor) -> Tensor:
        """``t_in`` in the shape the first layer takes: ``(B, *input_shape)`` for a spatial network, else ``(B, input_size)``."""
        size = math.prod(self.input_shape)
        if self.spatial:
            if (t_in.dim() == 4 and tuple(t_in.shape[1:]) == self.input_shape) or (
                t_in.dim() == 2 and t_in.shape[1] == size
            ):
                return t_in.reshape(t_in.shape[0], *self.input_shape)
            expected = f"(batch, {', '.join(map(str, self.input_shape))}) or (batch, {size})"
        else:
            if t_in.dim() >= 2 and t_in[0].numel() == size:
                return t_in.reshape(t_in.shape[0], size)
            expected = f"(batch, {size})"
        raise ArchitectureError(
            f"input of shape {tuple(t_in.shape)} does not fit architecture {self.arch!r}, which expects {expected}"
        )

    def forward_all(self, t_in: Tensor) -> list[Tensor]:
        """Spike times of every layer, input first: ``[t_0, t_1, ...]``, shapes as in the class docstring."""
        times = [self.shape_input(t_in)]
        for layer in self.layers:
            t = times[-1]
            if isinstance(layer, (SpikingLinear, AlphaSpikingLinear)) and t.dim() > 2:
                t = t.flatten(1)  # (B, C, H, W) -> (B, C*H*W)
            times.append(layer(t))
        return times

    def forward(self, t_in: Tensor) -> Tensor:
        """Output spike times ``(B, classes)``: the last entry of :meth:`forward_all`, bit for bit
        (gradients agree to float rounding: see :func:`stdbp.functional.relpsp_linear_stack`).

        Consecutive fully connected ReL-PSP layers with the same ``backend`` and no forward hooks
        run as one :func:`stdbp.functional.relpsp_linear_stack` (one kernel call per pass with
        the numba backend), and a convolution followed by pooling as one
        :func:`stdbp.functional.relpsp_conv2d_pool`.
        """
        t = self.shape_input(t_in)
        for kind, layers in self.groups():
            if kind == "stack":
                t = _run_stack(t, cast("list[SpikingLinear]", layers))
            elif kind == "conv_pool":
                conv, pool = cast("tuple[SpikingConv2d, EarliestSpikePool2d]", layers)
                t = F.relpsp_conv2d_pool(
                    t,
                    conv.weight,
                    conv.threshold,
                    conv.stride,
                    conv.padding,
                    pool.kernel_size,
                    pool.stride,
                    conv.backend,
                )
            else:
                t = layers[0](t.flatten(1) if isinstance(layers[0], AlphaSpikingLinear) and t.dim() > 2 else t)
        return t

    def groups(self) -> list[tuple[str, list[nn.Module]]]:
        """How :meth:`forward` runs the layers, in order: ``("stack", layers)`` for consecutive
        hookless :class:`SpikingLinear` layers with one backend (one layer runs as itself),
        ``("conv_pool", [conv, pool])`` for a hookless convolution and the pooling after it,
        ``("layer", [layer])`` for any other layer."""
        groups: list[tuple[str, list[nn.Module]]] = []
        layers = list(self.layers)
        index = 0
        while index < len(layers):
            layer = layers[index]
            index += 1
            if _stackable(layer):
                if groups and groups[-1][0] == "stack" and groups[-1][1][0].backend == layer.backend:
                    groups[-1][1].append(layer)
                else:
                    groups.append(("stack", [layer]))
            elif index < len(layers) and _fusable(layer, layers[index]):
                groups.append(("conv_pool", [layer, layers[index]]))
                index += 1
            else:
                groups.append(("layer", [layer]))
        return groups


def _hookless(layer: nn.Module) -> bool:
    return not (layer._forward_hooks or layer._forward_pre_hooks)


def _fusable(conv: nn.Module, pool: nn.Module) -> bool:
    """Whether a convolution and the pooling after it may run as one :func:`stdbp.functional.relpsp_conv2d_pool`."""
    return (
        isinstance(conv, SpikingConv2d)
        and isinstance(pool, EarliestSpikePool2d)
        and conv.backend == pool.backend
        and _hookless(conv)
        and _hookless(pool)
    )


def _stackable(layer: nn.Module) -> bool:
    """Whether ``layer`` may run inside a fused stack of fully connected layers (no hooks to call)."""
    return isinstance(layer, SpikingLinear) and _hookless(layer)


def _run_stack(t: Tensor, run: list[SpikingLinear]) -> Tensor:
    """``t`` through the fully connected layers of ``run`` (one after another), flattened first."""
    if not run:
        return t
    t = t.flatten(1) if t.dim() > 2 else t
    if len(run) == 1:
        return run[0](t)
    return F.relpsp_linear_stack(
        t, [layer.weight for layer in run], [layer.threshold for layer in run], run[0].backend, run[0].backward
    )


def build(
    arch: str, threshold: float = 1.0, backend: str | None = None, neuron: str = "relpsp", psp_tau: float = 1.0
) -> SpikingNetwork:
    """Build a spiking network from the paper's notation, e.g. ``build("784-800-10")``.

    ``neuron="alpha"`` builds the same fully connected network of alpha-PSP neurons (eq. 2, time
    constant ``psp_tau``) trained by SpikeProp gradients (eqs. 4-7), for the Section 2 comparison.
    """
    return SpikingNetwork(arch, threshold=threshold, backend=backend, neuron=neuron, psp_tau=psp_tau)
