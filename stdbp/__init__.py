"""stdbp: deep spiking neural networks trained by exact spike-time backpropagation (STDBP).

Implements Zhang et al., "Spike-Timing-Dependent Back Propagation in Deep Spiking Neural
Networks": ReL-PSP neurons, latency coding and exact gradients of first-spike times.
"""

import logging

from . import functional
from .encoding import latency_encode
from .errors import StdbpError
from .interop import export_nir, import_nir
from .nn import EarliestSpikePool2d, SpikingConv2d, SpikingLinear, SpikingNetwork, build, parse_arch
from .version import __version__

__all__ = [
    "functional",
    "latency_encode",
    "build",
    "parse_arch",
    "SpikingNetwork",
    "SpikingLinear",
    "SpikingConv2d",
    "EarliestSpikePool2d",
    "StdbpError",
    "export_nir",
    "import_nir",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
