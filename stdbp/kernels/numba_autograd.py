"""``torch.autograd.Function`` wrappers of the numba CPU kernels (``numba_cpu``, ``numba_stack``,
``numba_conv``, ``numba_pool``): tensors to NumPy arrays and back, what the backward pass keeps.

Only :mod:`stdbp.kernels` (the dispatch point) uses them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .conv_reference import conv_output_size


def sort_keys(t: np.ndarray) -> np.ndarray:
    """Integer sort keys of non-negative times: the bit patterns of ``|t|`` (so -0.0 sorts as 0.0)."""
    return np.abs(t).view(np.int32 if t.dtype == np.float32 else np.int64)


class RelpspLinearNumba(torch.autograd.Function):
    """Autograd wrapper of the numba scan: forward eq. 12, backward eqs. 14-15."""

    @staticmethod
    def forward(ctx, t_in: Tensor, weight: Tensor, threshold: float) -> Tensor:  # type: ignore[override]
        import numba

        from . import numba_cpu

        t_np = t_in.detach().contiguous().numpy()
        w_t = np.ascontiguousarray(weight.detach().numpy().T)
        batch, n_in = t_np.shape
        n_out = w_t.shape[1]
        t_out = np.empty((batch, n_out), dtype=t_np.dtype)
        anchor = np.empty_like(t_out)
        inv_slope = np.empty_like(t_out)
        n_causal = np.empty((batch, n_out), dtype=t_np.dtype)
        order = np.empty((batch, n_in), dtype=np.int32)
        times = np.empty((batch, n_in), dtype=t_np.dtype)
        n_spikes = np.empty(batch, dtype=np.int32)
        thr = t_np.dtype.type(threshold)
        _, n_chunks = numba_cpu.scan_tasks(n_out, numba.get_num_threads())
        numba_cpu.relpsp_linear_forward(t_np, sort_keys(t_np), w_t, thr, t_out, anchor, inv_slope, n_causal, order, times, n_spikes, n_chunks)
        ctx.scan = (times, w_t, anchor, inv_slope, n_causal, order, n_spikes)
        return torch.from_numpy(t_out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        from . import numba_cpu

        times, w_t, anchor, inv_slope, n_causal, order, n_spikes = ctx.scan
        with np.errstate(invalid="ignore", over="ignore"):  # extreme slopes: saturated below
            grad_scaled = grad_out.detach().contiguous().numpy() * inv_slope
        grad_t = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = _weight_gradient(times, grad_scaled, anchor, n_causal, order, n_spikes, w_t)
        if ctx.needs_input_grad[0]:
            grad_t_np = np.zeros(times.shape, dtype=times.dtype)
            numba_cpu.relpsp_linear_backward_input(w_t, grad_scaled, n_causal, order, n_spikes, grad_t_np)
            numba_cpu.saturate_(grad_t_np.reshape(-1))
            grad_t = torch.from_numpy(grad_t_np)
        return grad_t, grad_w, None


def _weight_gradient(times, grad_scaled, anchor, n_causal, order, n_spikes, w_t) -> Tensor:
    """Eq. 14 for one fully connected layer from what its forward scan kept: ``(N_out, N_in)``."""
    import numba

    from . import numba_cpu

    grad_w_t = np.empty_like(w_t)
    numba_cpu.relpsp_linear_backward_weight(times, grad_scaled, anchor, n_causal, order, n_spikes, numba.get_num_threads(), grad_w_t)
    # each entry sums batch terms a * (t_i - t_j), |t_i - t_j| <= max |anchor|: saturate only if that may overflow
    top_a, top_t = np.abs(grad_scaled).max(initial=0.0), anchor.max(initial=0.0)  # NaN if any is NaN
    if not float(top_a) * float(top_t) * len(anchor) < 0.5 * float(np.finfo(w_t.dtype).max):
        numba_cpu.saturate_(grad_w_t.reshape(-1))
    return torch.from_numpy(grad_w_t).t()


def _padded(w_t: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``w_t`` ``(N_in, N_out)`` C-contiguous, with zero rows and columns up to ``(rows, cols)``."""
    if w_t.shape == (rows, cols):
        return np.ascontiguousarray(w_t)
    out = np.zeros((rows, cols), dtype=w_t.dtype)
    out[: w_t.shape[0], : w_t.shape[1]] = w_t
    return out


def _unpadded(grad_w: Tensor, n_out: int, n_in: int) -> Tensor:
    """The ``(n_out, n_in)`` gradient of a layer from that of its padded weights, laid out as the
    parameter ``weight_t`` is (so that the optimizer keeps its fast path)."""
    if grad_w.shape == (n_out, n_in):
        return grad_w
    return grad_w[:n_out, :n_in].t().contiguous().t()


class RelpspStackNumba(torch.autograd.Function):
    """Autograd wrapper of ``numba_stack``: fully connected layers ``t_in -> ... -> t_out`` in one
    kernel call per pass, the same results as :class:`RelpspLinearNumba` layer by layer.

    ``apply(t_in, thresholds, *weights)``: ``t_in`` ``(B, N_0)``, ``thresholds`` a tuple of
    floats, ``weights[l]`` ``(N_{l+1}, N_l)``; returns ``(B, N_L)``.
    """

    @staticmethod
    def forward(ctx, t_in: Tensor, thresholds: Sequence[float], *weights: Tensor) -> Tensor:  # type: ignore[override]
        from . import numba_stack

        t_np = t_in.detach().contiguous().numpy()
        dtype = t_np.dtype
        batch = t_np.shape[0]
        widths = [t_np.shape[1]] + [w.shape[0] for w in weights]
        padded = [widths[0]] + [-(-n // 8) * 8 for n in widths[1:]]  # whole vectors of 8 neurons
        w_ts = tuple(_padded(w.detach().numpy().T, padded[l], padded[l + 1]) for l, w in enumerate(weights))
        t = (t_np, *(np.empty((batch, w.shape[1]), dtype=dtype) for w in w_ts))
        anchor = tuple(np.empty((batch, w.shape[1]), dtype=dtype) for w in w_ts)
        inv_slope = tuple(np.empty_like(x) for x in anchor)
        n_causal = tuple(np.empty_like(x) for x in anchor)
        order = tuple(np.empty((batch, w.shape[0]), dtype=np.int32) for w in w_ts)
        times = tuple(np.empty((batch, w.shape[0]), dtype=dtype) for w in w_ts)
        n_spikes = np.empty((len(w_ts), batch), dtype=np.int32)
        keys = (sort_keys(t_np), *(x.view(sort_keys(x[:0]).dtype) for x in t[1:]))  # hidden times are > 0
        numba_stack.stack_forward(w_ts, np.array(widths[1:]), np.array(thresholds, dtype=dtype), t, keys, anchor, inv_slope, n_causal, order, times, n_spikes)
        ctx.scan = (w_ts, anchor, inv_slope, n_causal, order, times, n_spikes)
        ctx.widths = widths
        return torch.from_numpy(t[-1])[:, : widths[-1]]

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        from . import numba_stack

        w_ts, anchor, inv_slope, n_causal, order, times, n_spikes = ctx.scan
        widths = ctx.widths
        first = 0 if ctx.needs_input_grad[0] else 1
        batch, dtype = grad_out.shape[0], anchor[0].dtype
        grad_np = np.zeros((batch, w_ts[-1].shape[1]), dtype=dtype)
        grad_np[:, : widths[-1]] = grad_out.detach().numpy()
        grad_scaled = tuple(np.empty_like(x) for x in anchor)
        grad_t = tuple(np.empty((batch, w.shape[0]) if l >= first else (0, 0), dtype=dtype) for l, w in enumerate(w_ts))
        numba_stack.stack_backward_input(w_ts, np.array(widths[1:]), grad_np, inv_slope, n_causal, order, n_spikes, first, grad_scaled, grad_t)
        grad_ws = [
            _unpadded(_weight_gradient(times[l], grad_scaled[l], anchor[l], n_causal[l], order[l], n_spikes[l], w_ts[l]), widths[l + 1], widths[l])
            if ctx.needs_input_grad[2 + l]
            else None
            for l in range(len(w_ts))
        ]
        return (torch.from_numpy(grad_t[0]) if first == 0 else None), None, *grad_ws


@functools.lru_cache(maxsize=64)
def _reach_table(geometry: tuple[int, ...], c_out: int) -> np.ndarray:
    """Where each input of a convolution lands (``numba_conv.reach_table``), once per geometry."""
    from . import numba_conv

    table = numba_conv.reach_table(geometry, c_out)
    table.flags.writeable = False
    return table


class RelpspConv2dNumba(torch.autograd.Function):
    """Autograd wrapper of the numba convolutional scan (``numba_conv``): forward eq. 12, backward eqs. 14-15."""

    @staticmethod
    def forward(ctx, t_in: Tensor, weight: Tensor, threshold: float, stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:  # type: ignore[override]
        from . import numba_conv

        batch, c_in, h_in, w_in = t_in.shape
        c_out, _, k_h, k_w = weight.shape
        h_out = conv_output_size(h_in, k_h, stride[0], padding[0])
        w_out = conv_output_size(w_in, k_w, stride[1], padding[1])
        t_flat = t_in.detach().reshape(batch, c_in * h_in * w_in).contiguous().numpy()  # (B, C_in*H*W)
        # (C_in*kH, kW*C_pad) with kx flipped: the layout of numba_conv.relpsp_conv2d_forward, the
        # output channels padded with zero weights to whole vectors of 8 (runs without a scalar tail)
        c_pad = -(-c_out // 8) * 8
        weight_p = torch.nn.functional.pad(weight.detach(), (0, 0, 0, 0, 0, 0, 0, c_pad - c_out))
        weight_f = np.ascontiguousarray(weight_p.flip(3).permute(1, 2, 3, 0).reshape(c_in * k_h, k_w * c_pad).numpy())
        dtype = t_flat.dtype
        t_out = np.empty((batch, c_out * h_out * w_out), dtype=dtype)  # (C_out, H_out, W_out) order
        anchor = np.empty((batch, h_out * w_out * c_pad), dtype=dtype)  # the neuron state: (H_out, W_out, C_pad)
        inv_slope = np.empty_like(anchor)
        n_causal = np.empty_like(anchor)
        order = np.empty(t_flat.shape, dtype=np.int32)
        times = np.empty_like(t_flat)
        n_spikes = np.empty(batch, dtype=np.int32)
        geometry = (c_in, h_in, w_in, k_h, k_w, *stride, *padding, h_out, w_out)
        reach = _reach_table(geometry, c_pad)
        numba_conv.relpsp_conv2d_forward(t_flat, sort_keys(t_flat), weight_f, dtype.type(threshold), geometry, reach, t_out, anchor, inv_slope, n_causal, order, times, n_spikes)
        ctx.scan = (weight_f, anchor, inv_slope, n_causal, order, times, n_spikes)
        ctx.geometry, ctx.c_out = geometry, c_out
        return torch.from_numpy(t_out).view(batch, c_out, h_out, w_out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        from . import numba_conv, numba_cpu

        weight_f, anchor, inv_slope, n_causal, order, times, n_spikes = ctx.scan
        geometry = ctx.geometry
        c_in, h_in, w_in, k_h, k_w = geometry[:5]
        batch = anchor.shape[0]
        c_out, c_pad = ctx.c_out, weight_f.shape[1] // k_w
        grad_nchw = grad_out.detach().contiguous().reshape(batch, -1).numpy()  # (B, C_out*H_out*W_out)
        grad_in = np.zeros(times.shape, dtype=times.dtype)
        grad_w_partial = np.empty((batch, *weight_f.shape), dtype=times.dtype)
        numba_conv.relpsp_conv2d_backward(
            weight_f, grad_nchw, inv_slope, anchor, n_causal, order, times, n_spikes, geometry, _reach_table(geometry, c_pad),
            ctx.needs_input_grad[0], grad_in, grad_w_partial,
        )
        grad_t = grad_w = None
        if ctx.needs_input_grad[0]:
            numba_cpu.saturate_(grad_in.reshape(-1))
            grad_t = torch.from_numpy(grad_in).reshape(batch, c_in, h_in, w_in)
        if ctx.needs_input_grad[1]:
            grad_w_f = grad_w_partial.sum(axis=0)  # numpy's fixed summation order: reproducible for any thread count
            numba_cpu.saturate_(grad_w_f.reshape(-1))
            grad_w = torch.from_numpy(grad_w_f).reshape(c_in, k_h, k_w, c_pad)[..., :c_out]
            grad_w = grad_w.permute(3, 0, 1, 2).flip(3).contiguous()  # (C_out, C_in, kH, kW)
        return grad_t, grad_w, None, None, None


class EarliestSpikePoolNumba(torch.autograd.Function):
    """Autograd wrapper of ``numba_pool``: the earliest spike of each window, its gradient back to it."""

    @staticmethod
    def forward(ctx, t_in: Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> Tensor:  # type: ignore[override]
        from . import numba_pool

        batch, channels, height, width = t_in.shape
        h_out = (height - kernel[0]) // stride[0] + 1
        w_out = (width - kernel[1]) // stride[1] + 1
        planes = t_in.detach().contiguous().numpy().reshape(batch * channels, height, width)
        t_out = np.empty((batch * channels, h_out, w_out), dtype=planes.dtype)
        argmin = np.empty((batch * channels, h_out, w_out), dtype=np.int32)
        numba_pool.pool_forward(planes, *kernel, *stride, t_out, argmin)
        ctx.argmin, ctx.in_shape = argmin, t_in.shape
        return torch.from_numpy(t_out).view(batch, channels, h_out, w_out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        from . import numba_pool

        batch, channels, height, width = ctx.in_shape
        grad = grad_out.detach().contiguous().numpy().reshape(ctx.argmin.shape)
        grad_in = np.zeros((batch * channels, height * width), dtype=grad.dtype)
        numba_pool.pool_backward(grad, ctx.argmin, grad_in)
        return torch.from_numpy(grad_in).view(ctx.in_shape), None, None
