"""Thin ``torch.nn`` modules over the functional core. They hold weights and no other state."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import functional as F
from ..alpha_psp import alpha_psp_linear

__all__ = ["SpikingLinear", "SpikingConv2d", "EarliestSpikePool2d", "AlphaSpikingLinear"]


class SpikingLinear(nn.Module):
    """A fully connected layer of ReL-PSP neurons: ``(B, in_features)`` -> ``(B, out_features)`` spike times.

    Weights are drawn from a normal distribution with a positive mean, so that at the start of
    training most neurons reach threshold within a few time units of their inputs:
    ``mean = weight_mean / in_features``, ``std = weight_std / sqrt(in_features)``.

    ``weight`` is ``(out_features, in_features)`` as in :class:`torch.nn.Linear`, a view of the
    parameter ``weight_t`` ``(in_features, out_features)``: the scan reads one input's row of
    weights over all neurons, and a contiguous parameter keeps the fused Adam update on its fast
    path. State dicts hold ``weight``, as for ``nn.Linear``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        threshold: float = 1.0,
        weight_mean: float = 5.0,
        weight_std: float = 1.0,
        backend: str | None = None,
        backward: str = "auto",
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = threshold
        self.weight_mean = weight_mean
        self.weight_std = weight_std
        self.backend = backend
        self.backward = backward
        self.weight_t = nn.Parameter(torch.empty(in_features, out_features))
        self.reset_parameters()

    @property
    def weight(self) -> Tensor:
        """``(out_features, in_features)`` view of ``weight_t``."""
        return self.weight_t.t()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        weight_t = self.weight_t if keep_vars else self.weight_t.detach()
        destination[prefix + "weight"] = weight_t.t()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "weight" in state_dict:
            state_dict[prefix + "weight_t"] = state_dict.pop(prefix + "weight").t()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(self.weight_mean / self.in_features, self.weight_std / math.sqrt(self.in_features))

    def forward(self, t_in: Tensor) -> Tensor:
        return F.relpsp_linear(t_in, self.weight, self.threshold, self.backend, self.backward)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}"


class SpikingConv2d(nn.Module):
    """A convolutional layer of ReL-PSP neurons: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H_out, W_out)`` spike times.

    Shapes and arguments follow :class:`torch.nn.Conv2d` (no bias, dilation or groups). Weights
    are initialised as in :class:`SpikingLinear` with the fan-in ``in_channels * kH * kW``:
    ``mean = weight_mean / fan_in``, ``std = weight_std / sqrt(fan_in)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        threshold: float = 1.0,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        weight_mean: float = 5.0,
        weight_std: float = 1.0,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.threshold = threshold
        self.stride = stride
        self.padding = padding
        self.weight_mean = weight_mean
        self.weight_std = weight_std
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        with torch.no_grad():
            self.weight.normal_(self.weight_mean / fan_in, self.weight_std / math.sqrt(fan_in))

    def forward(self, t_in: Tensor) -> Tensor:
        return F.relpsp_conv2d(t_in, self.weight, self.threshold, self.stride, self.padding, self.backend)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, threshold={self.threshold}"
        )


class EarliestSpikePool2d(nn.Module):
    """Earliest-spike pooling, :func:`stdbp.functional.earliest_spike_pool2d`: ``(B, C, H, W)`` -> ``(B, C, H // k, W // k)`` for the default stride."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.backend = backend

    def forward(self, t_in: Tensor) -> Tensor:
        return F.earliest_spike_pool2d(t_in, self.kernel_size, self.stride, self.backend)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class AlphaSpikingLinear(nn.Module):
    """A fully connected layer of alpha-PSP neurons: ``(B, in_features)`` -> ``(B, out_features)`` spike times.

    Initialised as :class:`SpikingLinear`: normal weights with
    ``mean = weight_mean / in_features`` and ``std = weight_std / sqrt(in_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        threshold: float = 1.0,
        tau: float = 1.0,
        weight_mean: float = 5.0,
        weight_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = threshold
        self.tau = tau
        self.weight_mean = weight_mean
        self.weight_std = weight_std
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(self.weight_mean / self.in_features, self.weight_std / math.sqrt(self.in_features))

    def forward(self, t_in: Tensor) -> Tensor:
        return alpha_psp_linear(t_in, self.weight, self.threshold, self.tau)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}, tau={self.tau}"
