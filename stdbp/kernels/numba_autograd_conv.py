"""``torch.autograd.Function`` wrappers of the numba convolution and pooling kernels
(``numba_conv``, ``numba_pool``): tensors to NumPy arrays and back, what the backward pass keeps.

Only :mod:`stdbp.kernels` (the dispatch point) and the training step use them.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .conv_reference import conv_output_size
from .numba_autograd import raise_if_invalid, sort_keys

__all__ = ["NO_POOL", "ConvScan", "EarliestSpikePoolNumba", "RelpspConv2dNumba"]

#: ``pool`` of :class:`RelpspConv2dNumba` without pooling.
NO_POOL = (0, 0, 1, 1)


@functools.lru_cache(maxsize=64)
def _reach_table(geometry: tuple[int, ...], c_out: int) -> np.ndarray:
    """Where each input of a convolution lands (``numba_conv.reach_table``), once per geometry."""
    from . import numba_conv

    table = numba_conv.reach_table(geometry, c_out)
    table.flags.writeable = False
    return table


class ConvScan(NamedTuple):
    """What the forward scan of a convolution keeps for the backward pass; ``S`` is the number
    of neurons with state: ``H_out * W_out * C_pad``, or one per pooling window when pooled."""

    weight_f: np.ndarray  # the weights in the kernel's layout (numba_conv.weight_layout)
    argmin: np.ndarray  # (B, pooled outputs) int32 winner of each window; (B, 0) without pooling
    anchor: np.ndarray  # (B, S) spike time t_j, or t_ref of a silent neuron
    inv_slope: np.ndarray  # (B, S) 1 / (causal weight sum)
    n_causal: np.ndarray  # (B, S) length of the causal prefix in time order
    order: np.ndarray  # (B, C_in*H*W) int32 input index of each sorted spike
    times: np.ndarray  # (B, C_in*H*W) sorted spiking input times
    n_spikes: np.ndarray  # (B,) int32 spiking inputs per sample


class RelpspConv2dNumba(torch.autograd.Function):
    """Autograd wrapper of the numba convolutional scan (``numba_conv``): forward eq. 12, backward
    eqs. 14-15; with ``pool = (kH, kW, sH, sW)``, followed by earliest-spike pooling in the same
    kernel call (the times and gradients of :class:`EarliestSpikePoolNumba` after it, bit for bit).

    ``apply(t_in, weight, threshold, stride, padding, pool)``: ``t_in`` ``(B, C_in, H, W)``,
    ``weight`` ``(C_out, C_in, kH, kW)``, ``pool`` :data:`NO_POOL` for none; returns
    ``(B, C_out, H_out, W_out)``, or the pooled ``(B, C_out, PH, PW)``.
    """

    @staticmethod
    def forward(
        ctx,
        t_in: Tensor,
        weight: Tensor,
        threshold: float,
        stride: tuple[int, int],
        padding: tuple[int, int],
        pool: tuple[int, int, int, int],
    ) -> Tensor:
        from . import numba_conv

        batch, c_in, h_in, w_in = t_in.shape
        c_out, _, k_h, k_w = weight.shape
        h_out = conv_output_size(h_in, k_h, stride[0], padding[0])
        w_out = conv_output_size(w_in, k_w, stride[1], padding[1])
        t_flat = t_in.detach().reshape(batch, c_in * h_in * w_in).contiguous().numpy()  # (B, C_in*H*W)
        c_pad = -(-c_out // 8) * 8  # output channels padded to whole vectors of 8 (zero weights)
        weight_f = numba_conv.weight_layout(weight.detach().numpy(), c_pad)
        dtype = t_flat.dtype
        plane_out = h_out * w_out
        if pool[0]:
            shape = (c_out, (h_out - pool[0]) // pool[2] + 1, (w_out - pool[1]) // pool[3] + 1)
            t_out = np.empty((0, c_out * plane_out), dtype=dtype)
            t_pool = np.empty((batch, shape[0] * shape[1] * shape[2]), dtype=dtype)
            argmin = np.empty(t_pool.shape, dtype=np.int32)
        else:
            shape = (c_out, h_out, w_out)
            t_out = np.empty((batch, c_out * plane_out), dtype=dtype)  # (C_out, H_out, W_out) order
            t_pool = np.empty((batch, 0), dtype=dtype)
            argmin = np.empty((batch, 0), dtype=np.int32)
        # the neuron state, (H_out, W_out, C_pad); with pooling, only each window's earliest neuron's
        anchor = np.empty((batch, t_pool.shape[1] if pool[0] else plane_out * c_pad), dtype=dtype)
        inv_slope = np.empty_like(anchor)
        n_causal = np.empty_like(anchor)
        order = np.empty(t_flat.shape, dtype=np.int32)
        times = np.empty_like(t_flat)
        n_spikes = np.empty(batch, dtype=np.int32)
        geometry = (c_in, h_in, w_in, k_h, k_w, *stride, *padding, h_out, w_out)
        reach = _reach_table(geometry, c_pad)
        bad = numba_conv.relpsp_conv2d_forward(
            t_flat,
            sort_keys(t_flat),
            weight_f,
            dtype.type(threshold),
            geometry,
            reach,
            t_out,
            anchor,
            inv_slope,
            n_causal,
            order,
            times,
            n_spikes,
            pool,
            t_pool,
            argmin,
        )
        raise_if_invalid(bad, t_in)
        ctx.scan = ConvScan(weight_f, argmin, anchor, inv_slope, n_causal, order, times, n_spikes)
        ctx.geometry, ctx.c_out, ctx.pool = geometry, c_out, pool
        return torch.from_numpy(t_pool if pool[0] else t_out).view(batch, *shape)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        from . import numba_conv, numba_linear

        scan: ConvScan = ctx.scan
        weight_f, argmin, anchor, inv_slope = scan.weight_f, scan.argmin, scan.anchor, scan.inv_slope
        n_causal, order, times, n_spikes = scan.n_causal, scan.order, scan.times, scan.n_spikes
        geometry = ctx.geometry
        c_in, h_in, w_in, k_h, k_w = geometry[:5]
        batch = anchor.shape[0]
        grad = (
            grad_out.detach().contiguous().reshape(batch, math.prod(grad_out.shape[1:])).numpy()
        )  # (B, C_out*H_out*W_out), or pooled
        grad_in = np.zeros(times.shape if ctx.needs_input_grad[0] else (batch, 0), dtype=times.dtype)
        grad_w_partial = np.empty((batch, *weight_f.shape), dtype=times.dtype)
        numba_conv.relpsp_conv2d_backward(
            weight_f,
            grad,
            ctx.pool,
            argmin,
            inv_slope,
            anchor,
            n_causal,
            order,
            times,
            n_spikes,
            geometry,
            _reach_table(geometry, weight_f.shape[1] // k_w),
            ctx.needs_input_grad[0],
            grad_in,
            grad_w_partial,
        )
        grad_t = grad_w = None
        if ctx.needs_input_grad[0]:
            numba_linear.saturate_(grad_in.reshape(-1))
            grad_t = torch.from_numpy(grad_in).view(batch, c_in, h_in, w_in)
        if ctx.needs_input_grad[1]:
            grad_w = torch.from_numpy(numba_conv.weight_gradient(grad_w_partial, ctx.c_out, k_h, k_w))
        return grad_t, grad_w, None, None, None, None


class EarliestSpikePoolNumba(torch.autograd.Function):
    """Autograd wrapper of ``numba_pool``: the earliest spike of each window, its gradient back to it."""

    @staticmethod
    def forward(ctx, t_in: Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> Tensor:
        from . import numba_pool

        batch, channels, height, width = t_in.shape
        h_out = (height - kernel[0]) // stride[0] + 1
        w_out = (width - kernel[1]) // stride[1] + 1
        planes = t_in.detach().contiguous().numpy().reshape(batch * channels, height, width)
        t_out = np.empty((batch * channels, h_out, w_out), dtype=planes.dtype)
        argmin = np.empty((batch * channels, h_out, w_out), dtype=np.int32)
        raise_if_invalid(numba_pool.pool_forward(planes, *kernel, *stride, t_out, argmin), t_in)
        ctx.argmin, ctx.in_shape = argmin, t_in.shape
        return torch.from_numpy(t_out).view(batch, channels, h_out, w_out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        from . import numba_pool

        batch, channels, height, width = ctx.in_shape
        grad = grad_out.detach().contiguous().numpy().reshape(ctx.argmin.shape)
        grad_in = np.empty((batch * channels, height * width), dtype=grad.dtype)
        numba_pool.pool_backward(grad, ctx.argmin, grad_in)  # zeroes grad_in plane by plane
        return torch.from_numpy(grad_in).view(ctx.in_shape), None, None
