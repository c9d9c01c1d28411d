"""Thin ``torch.nn`` modules over the functional core. They hold weights and no other state."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import functional as F

__all__ = ["SpikingLinear"]


class SpikingLinear(nn.Module):
    """A fully connected layer of ReL-PSP neurons: ``(B, in_features)`` -> ``(B, out_features)`` spike times.

    Weights are drawn from a normal distribution with a positive mean, so that at the start of
    training most neurons reach threshold within a few time units of their inputs:
    ``mean = weight_mean / in_features``, ``std = weight_std / sqrt(in_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        threshold: float = 1.0,
        weight_mean: float = 5.0,
        weight_std: float = 1.0,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = threshold
        self.weight_mean = weight_mean
        self.weight_std = weight_std
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(self.weight_mean / self.in_features, self.weight_std / math.sqrt(self.in_features))

    def forward(self, t_in: Tensor) -> Tensor:
        return F.relpsp_linear(t_in, self.weight, self.threshold, self.backend)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}"
