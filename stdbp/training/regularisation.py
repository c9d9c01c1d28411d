"""Regularisation terms added to the loss's gradient: exact functions of the weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn.layers import SpikingConv2d, SpikingLinear

__all__ = ["weight_sum_penalty"]


def weight_sum_penalty(model: nn.Module, margin: float) -> Tensor:
    """``sum_j max(0, margin - sum_i w_ij)`` over every neuron ``j`` of the spiking layers of ``model``
    (a convolution's neurons: its output channels, ``i`` over input channels and kernel taps).

    Mostafa (2017) adds this to the loss so that neurons cannot fall silent for good: a neuron that
    fires for no input gets no gradient from the loss, while this term still raises its weights.
    With ``margin`` the threshold, a neuron whose inputs all spike at time 0 fires by one time unit
    exactly when it is not penalised. Returns a scalar tensor with the weights' graph.
    """
    terms = []
    for layer in model.modules():
        if isinstance(layer, SpikingLinear):
            sums = layer.weight.sum(1)
        elif isinstance(layer, SpikingConv2d):
            sums = layer.weight.sum((1, 2, 3))
        else:
            continue
        terms.append(torch.relu(margin - sums).sum())
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()
