"""``torch.nn`` modules over the functional core, and networks built from the paper's notation."""

from .layers import AlphaSpikingLinear, EarliestSpikePool2d, SpikingConv2d, SpikingLinear
from .network import NEURONS, LayerSpec, SpikingNetwork, build, parse_arch

__all__ = [
    "AlphaSpikingLinear",
    "EarliestSpikePool2d",
    "LayerSpec",
    "NEURONS",
    "SpikingConv2d",
    "SpikingLinear",
    "SpikingNetwork",
    "build",
    "parse_arch",
]
