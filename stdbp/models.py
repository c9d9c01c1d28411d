"""Spiking networks built from the paper's notation (Table 1), e.g. ``784-800-10``.

Layers are separated by ``-``. The first token is the input: a number of neurons (``784``) or a
spatial shape (``28x28`` or ``CxHxW``). Plain numbers after it are fully connected layers of
ReL-PSP neurons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import ArchitectureError
from .layers import SpikingLinear

__all__ = ["LayerSpec", "parse_arch", "build", "SpikingNetwork"]


@dataclass(frozen=True)
class LayerSpec:
    """One token of an architecture string: ``kind`` is ``"input"``, ``"linear"``, ``"conv"`` or ``"pool"``."""

    kind: str
    size: int = 0
    kernel: int = 0
    shape: tuple[int, ...] = ()


_INPUT_SHAPE = re.compile(r"^\d+(x\d+){1,2}$")
_CONV = re.compile(r"^(\d+)C(\d+)$")
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
            specs.append(LayerSpec("conv", size=int(m.group(1)), kernel=int(m.group(2))))
        elif (m := _POOL.match(tok)) and int(m.group(1)) > 0:
            specs.append(LayerSpec("pool", kernel=int(m.group(1))))
        else:
            raise ArchitectureError(
                f"bad token {tok!r} in architecture {arch!r}: expected a layer size (800), a convolution (16C5) or pooling (P2)"
            )
    if len(specs) < 2:
        raise ArchitectureError(f"architecture {arch!r} has no layers after the input; e.g. 784-800-10")
    if specs[-1].kind != "linear":
        raise ArchitectureError(f"architecture {arch!r} must end with a fully connected output layer, e.g. ...-10")
    return specs


class SpikingNetwork(nn.Module):
    """A feed-forward stack of spiking layers: input spike times -> output spike times.

    ``forward`` takes ``(B, *input_shape)`` or ``(B, input_size)`` times (``+inf`` = no spike)
    and returns ``(B, classes)`` output times. ``forward_all`` returns every layer's times.
    """

    def __init__(self, arch: str, threshold: float = 1.0, backend: str | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.threshold = threshold
        self.backend = backend
        specs = parse_arch(arch)
        self.input_shape = specs[0].shape
        layers: list[nn.Module] = []
        features = specs[0].size
        for spec in specs[1:]:
            if spec.kind != "linear":
                raise ArchitectureError(
                    f"layer {spec.kind!r} in {arch!r} is not available in this version of stdbp; use fully connected layers"
                )
            layers.append(SpikingLinear(features, spec.size, threshold=threshold, backend=backend))
            features = spec.size
        self.layers = nn.ModuleList(layers)
        self.num_classes = features

    @property
    def config(self) -> dict:
        """The arguments that rebuild this network (stored in checkpoints)."""
        return {"arch": self.arch, "threshold": self.threshold}

    def _flatten_input(self, t_in: Tensor) -> Tensor:
        size = int(torch.tensor(self.input_shape).prod())
        if t_in.dim() >= 2 and t_in[0].numel() == size:
            return t_in.reshape(t_in.shape[0], size)
        raise ArchitectureError(
            f"input of shape {tuple(t_in.shape)} does not fit architecture {self.arch!r}, which expects (batch, {size})"
        )

    def forward_all(self, t_in: Tensor) -> list[Tensor]:
        """Spike times of every layer, input first: ``[(B, N_0), (B, N_1), ...]``."""
        times = [self._flatten_input(t_in)]
        for layer in self.layers:
            times.append(layer(times[-1]))
        return times

    def forward(self, t_in: Tensor) -> Tensor:
        t = self._flatten_input(t_in)
        for layer in self.layers:
            t = layer(t)
        return t


def build(arch: str, threshold: float = 1.0, backend: str | None = None) -> SpikingNetwork:
    """Build a spiking network from the paper's notation, e.g. ``build("784-800-10")``."""
    return SpikingNetwork(arch, threshold=threshold, backend=backend)
