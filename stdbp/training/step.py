"""One training step's forward pass, loss and backward pass without building an autograd graph.

:func:`loss_and_backward` is ``loss = first_spike_cross_entropy(model(t_in), labels, tau);
loss.backward()`` for a :class:`~stdbp.nn.network.SpikingNetwork` whose layers all run on the numba
kernels: it calls the forward and backward of the kernels' ``torch.autograd.Function`` classes
(``stdbp.kernels``) itself, group by group as ``SpikingNetwork.forward`` runs
them, releases each group's saved state as soon as its backward pass is done, and computes the
loss and its gradient in one numba call (``stdbp.kernels.cross_entropy_and_gradient``) instead of a dozen small
tensor operations and their backward. Spike times are those of the autograd path bit for bit,
the loss and gradients agree with it to float rounding (``tests/test_fused_step.py``); what it
saves is the autograd engine, the layer functions' argument checks, the graph and the loss's
small operations (see the README's "Speed"). Networks it cannot run (other backends, forward
hooks, alpha-PSP neurons, input times that require a gradient) take the autograd path.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from ..functional import first_spike_cross_entropy
from ..kernels import (
    NO_POOL,
    EarliestSpikePoolNumba,
    RelpspConv2dNumba,
    RelpspLinearNumba,
    RelpspStackNumba,
    cross_entropy_and_gradient,
    resolve_backend,
)
from ..nn import EarliestSpikePool2d, SpikingConv2d, SpikingLinear, SpikingNetwork
from ..validation import pair, pool_pairs

__all__ = ["loss_and_backward"]


def loss_and_backward(
    model: SpikingNetwork, t_in: Tensor, labels: Tensor, tau: float = 1.0, silent_time: float | None = None
) -> tuple[Tensor, Tensor]:
    """The loss of ``model`` on a batch, and its gradients added to every parameter's ``.grad``.

    Args:
        model: the network; its parameters' ``.grad`` are accumulated into (``None`` becomes the
            gradient), as :meth:`torch.Tensor.backward` does.
        t_in: input spike times, as ``model`` takes them.
        labels: ``(B,)`` target classes.
        tau, silent_time: as for :func:`stdbp.functional.first_spike_cross_entropy`.

    Returns:
        ``(loss, t_out)``, both detached: the scalar loss and the ``(B, classes)`` output times.
    """
    plan = _plan(model, t_in)
    if plan is None:
        t_out = model(t_in)
        loss = first_spike_cross_entropy(t_out, labels, tau=tau, silent_time=silent_time)
        loss.backward()
        return loss.detach(), t_out.detach()
    t = model.shape_input(t_in).detach()
    tape: list[tuple[Any, SimpleNamespace, list[torch.nn.Parameter]]] = []
    for index, (function, args, params) in enumerate(plan):
        if function is RelpspLinearNumba or function is RelpspStackNumba:
            t = t.reshape(t.shape[0], -1)
        # single_backward: backward runs once, so it may drop state as it goes (RelpspStackNumba)
        ctx = SimpleNamespace(needs_input_grad=(index > 0, *_needs(function, params)), single_backward=True)
        t = function.forward(ctx, t, *args)
        tape.append((function, ctx, params))
    t_out, (loss, grad) = t.detach(), _loss_and_gradient(t, labels, tau, silent_time)
    while tape:
        function, ctx, params = tape.pop()
        grads = function.backward(ctx, grad)
        del ctx  # the group's saved state goes now, not when the step ends
        grad = grads[0]
        for param, param_grad in zip(params, _param_grads(function, grads)):
            if param.requires_grad:
                _accumulate(param, param_grad)
    return loss, t_out


def _loss_and_gradient(t_out: Tensor, labels: Tensor, tau: float, silent_time: float | None) -> tuple[Tensor, Tensor]:
    """:func:`stdbp.functional.first_spike_cross_entropy` (mean) and its gradient, in one numba call."""
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if t_out.dim() != 2 or labels.shape != t_out.shape[:1] or labels.is_floating_point():
        raise ValueError(
            f"expected t_out (batch, classes) and integer labels (batch,), got {tuple(t_out.shape)} and {tuple(labels.shape)} {labels.dtype}"
        )
    t_np = t_out.detach().numpy()
    grad = np.empty_like(t_np)
    loss = cross_entropy_and_gradient(
        t_np, labels.numpy(), float(tau), math.nan if silent_time is None else float(silent_time), grad
    )
    return torch.tensor(loss, dtype=t_out.dtype), torch.from_numpy(grad)


def _needs(function: Any, params: list[torch.nn.Parameter]) -> tuple[bool, ...]:
    """``needs_input_grad`` after the input: one flag per argument of ``function.forward``."""
    wants = [p.requires_grad for p in params]
    if function is RelpspStackNumba:
        return (False, False, *wants)  # thresholds, backward method, then the weights
    return (
        *wants,
        *([False] * 4),
    )  # the weight, then threshold and method, or threshold, stride, padding, pool (or kernel, stride)


def _param_grads(function: Any, grads: tuple) -> list[Tensor | None]:
    """The gradients of the group's parameters, laid out as the parameters are."""
    if function is RelpspStackNumba:
        return [None if g is None else g.t() for g in grads[3:]]  # weight_t = weight.t()
    if function is RelpspLinearNumba:
        return [None if grads[1] is None else grads[1].t()]
    if function is RelpspConv2dNumba:
        return [grads[1]]
    return []


def _accumulate(param: torch.nn.Parameter, grad: Tensor | None) -> None:
    if grad is None:
        return
    if param.grad is None:
        param.grad = grad if grad.is_contiguous() else grad.contiguous()
    else:
        param.grad += grad


#: The layers the fused step runs, and their kind for ``resolve_backend``.
_KINDS = {SpikingLinear: "linear", SpikingConv2d: "conv", EarliestSpikePool2d: "pool"}


def _plan(model: SpikingNetwork, t_in: Tensor) -> list[tuple[Any, tuple, list[torch.nn.Parameter]]] | None:
    """``(Function, forward arguments after the input, parameters)`` per group of
    ``model.groups()``, or ``None`` where the autograd path must run."""
    params = list(model.parameters())
    if t_in.requires_grad or not params or t_in.dtype not in (torch.float32, torch.float64):
        return None
    if any(p.dtype != t_in.dtype or p.device != t_in.device for p in params):
        return None  # the autograd path raises the layer functions' errors
    plan: list[tuple[Any, tuple, list[torch.nn.Parameter]]] = []
    for kind, layers in model.groups():
        if any(layer._forward_hooks or layer._forward_pre_hooks for layer in layers):
            return None
        layer = cast("SpikingLinear | SpikingConv2d | EarliestSpikePool2d", layers[0])  # exactly one: checked below
        if type(layer) not in _KINDS or resolve_backend(t_in.device, layer.backend, _KINDS[type(layer)]) != "numba":
            return None
        if kind == "stack" and len(layers) > 1:
            stack = cast("list[SpikingLinear]", layers)  # model.groups() stacks SpikingLinear layers only
            plan.append(
                (
                    RelpspStackNumba,
                    (tuple(float(x.threshold) for x in stack), stack[0].backward, *(x.weight for x in stack)),
                    [x.weight_t for x in stack],
                )
            )
        elif isinstance(layer, SpikingLinear):
            plan.append((RelpspLinearNumba, (layer.weight, float(layer.threshold), layer.backward), [layer.weight_t]))
        elif isinstance(layer, SpikingConv2d):
            pool = NO_POOL
            if kind == "conv_pool":
                pooling = cast(EarliestSpikePool2d, layers[1])  # model.groups() pairs a convolution with its pooling
                if resolve_backend(t_in.device, pooling.backend, "pool") != "numba":
                    return None
                window, step = pool_pairs(pooling.kernel_size, pooling.stride)
                pool = (*window, *step)
            stride, padding = pair(layer.stride, "stride", 1), pair(layer.padding, "padding", 0)
            plan.append(
                (RelpspConv2dNumba, (layer.weight, float(layer.threshold), stride, padding, pool), [layer.weight])
            )
        else:
            plan.append((EarliestSpikePoolNumba, pool_pairs(layer.kernel_size, layer.stride), []))
    return plan
