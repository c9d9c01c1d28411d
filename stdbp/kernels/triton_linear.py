"""ReL-PSP linear kernel in Triton, for CUDA devices: the scan of ``numba_linear``, one program per
(sample, block of neurons).

The forward pass sorts each sample's input times on the device (``torch.sort``, stable, so
equal times keep index order and silent inputs, ``+inf``, go last), then every program walks
its sample's spiking inputs in time order, keeping per neuron ``s = sum w``, ``r = threshold +
sum w t``, the number ``n`` of inputs integrated and ``alive`` (1 until it fires). After input
``k`` at ``t`` the neuron fires in ``(t, t_next]`` when ``s > 0`` and ``r <= t_next * s`` (no
test when the next input comes at the same time), at ``r / s`` (eq. 12); its later inputs are
multiplied by 0. The backward pass uses each neuron's ``1 / s`` and causal length ``n`` as the CPU kernel does:
input ``i`` is causal for neuron ``j`` when its place in the sample's time order is below ``n``.
Both gradients are computed in tiles of ``ROWS`` inputs by ``BLOCK_N`` neurons: the weight
gradient (eq. 14) by one program per tile, which sums the batch in order (no atomics, so
results are reproducible), the input gradient (eq. 15) by one program per sample and block of
inputs, summing over the neurons.

Without a GPU, ``TRITON_INTERPRET=1`` runs these kernels on the CPU through Triton's
interpreter (slowly): that is how the tests check them against the reference where no GPU is
available. Scalars that must have the tensors' dtype (threshold, horizon) travel as
one-element tensors, since a Python float argument would be float32. (No ``from __future__
import annotations`` here: Triton reads the ``tl.constexpr`` annotations at run time.)
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import SILENT_HORIZON
from .saturation import saturate

#: Neurons per program.
BLOCK_N = 128
#: Inputs (weight rows) per program of the backward kernels.
ROWS = 32


@triton.jit
def _forward_kernel(
    times_ptr,
    order_ptr,
    count_ptr,
    weight_t_ptr,
    scalars_ptr,
    t_out_ptr,
    anchor_ptr,
    inv_slope_ptr,
    n_causal_ptr,
    n_in,
    n_out,
    BLOCK: tl.constexpr,
):  # pragma: no cover - compiled (or interpreted)
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = cols < n_out
    threshold = tl.load(scalars_ptr)
    horizon = tl.load(scalars_ptr + 1)
    zero = threshold * 0
    count = tl.load(count_ptr + b)
    s = tl.zeros([BLOCK], dtype=times_ptr.dtype.element_ty)
    r = s + threshold
    n = s + zero
    alive = s + 1
    for k in range(count):
        t = tl.load(times_ptr + b * n_in + k)
        t_next = tl.load(times_ptr + b * n_in + k + 1, mask=k + 1 < count, other=float("inf"))
        i = tl.load(order_ptr + b * n_in + k)
        w = tl.load(weight_t_ptr + i * n_out + cols, mask=valid, other=0.0) * alive
        s += w
        r += w * t
        n += alive
        t_test = tl.where(t_next != t, t_next, float("nan"))  # a tie: nothing to test, NaN fails every comparison
        fires = (s > 0) & (r <= t_test * s)
        alive = tl.where(fires, zero, alive)
    fired = alive == 0
    t_last = tl.load(times_ptr + b * n_in + count - 1, mask=count > 0, other=0.0)
    slope = tl.where(fired, s, 1.0)
    t_fire = r / slope
    offs = b * n_out + cols
    tl.store(t_out_ptr + offs, tl.where(fired, t_fire, float("inf")), mask=valid)
    tl.store(anchor_ptr + offs, tl.where(fired, t_fire, t_last + horizon), mask=valid)
    tl.store(inv_slope_ptr + offs, 1.0 / slope, mask=valid)
    tl.store(n_causal_ptr + offs, n, mask=valid)


@triton.jit
def _weight_grad_kernel(
    t_in_ptr,
    rank_ptr,
    grad_scaled_ptr,
    anchor_ptr,
    n_causal_ptr,
    grad_w_t_ptr,
    batch,
    n_in,
    n_out,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):  # pragma: no cover - compiled (or interpreted)
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < n_in
    col_ok = cols < n_out
    acc = tl.zeros([ROWS, BLOCK], dtype=grad_w_t_ptr.dtype.element_ty)
    for b in range(batch):
        a = tl.load(grad_scaled_ptr + b * n_out + cols, mask=col_ok, other=0.0)
        t_j = tl.load(anchor_ptr + b * n_out + cols, mask=col_ok, other=0.0)
        nc = tl.load(n_causal_ptr + b * n_out + cols, mask=col_ok, other=0.0)
        t_i = tl.load(t_in_ptr + b * n_in + rows, mask=row_ok, other=0.0)
        k = tl.load(rank_ptr + b * n_in + rows, mask=row_ok, other=n_in)
        causal = k[:, None] < nc[None, :]
        acc += tl.where(causal, a[None, :] * (t_i[:, None] - t_j[None, :]), 0.0)
    offs = rows[:, None] * n_out + cols[None, :]
    tl.store(grad_w_t_ptr + offs, acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _input_grad_kernel(
    rank_ptr,
    grad_scaled_ptr,
    n_causal_ptr,
    weight_t_ptr,
    grad_in_ptr,
    n_in,
    n_out,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):  # pragma: no cover - compiled (or interpreted)
    b = tl.program_id(0)
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_in
    k = tl.load(rank_ptr + b * n_in + rows, mask=row_ok, other=n_in)
    acc = tl.zeros([ROWS, BLOCK], dtype=grad_in_ptr.dtype.element_ty)
    for start in range(0, n_out, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        col_ok = cols < n_out
        a = tl.load(grad_scaled_ptr + b * n_out + cols, mask=col_ok, other=0.0)
        nc = tl.load(n_causal_ptr + b * n_out + cols, mask=col_ok, other=0.0)
        w = tl.load(
            weight_t_ptr + rows[:, None] * n_out + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0
        )
        acc += tl.where(k[:, None] < nc[None, :], a[None, :] * w, 0.0)
    tl.store(grad_in_ptr + b * n_in + rows, tl.sum(acc, axis=1), mask=row_ok)


class RelpspLinearTriton(torch.autograd.Function):
    """Autograd wrapper of the Triton scan: forward eq. 12, backward eqs. 14-15."""

    @staticmethod
    def forward(ctx, t_in: Tensor, weight: Tensor, threshold: float) -> Tensor:
        t_in = t_in.detach().contiguous()
        weight_t = weight.detach().t().contiguous()  # (N_in, N_out): no copy for SpikingLinear's parameter
        batch, n_in = t_in.shape
        n_out = weight_t.shape[1]
        times, order = torch.sort(t_in, dim=1, stable=True)
        order = order.to(torch.int32)
        count = torch.isfinite(times).sum(dim=1, dtype=torch.int32)
        scalars = torch.tensor([threshold, SILENT_HORIZON], dtype=t_in.dtype, device=t_in.device)
        t_out, anchor, inv_slope, n_causal = (
            torch.empty(batch, n_out, dtype=t_in.dtype, device=t_in.device) for _ in range(4)
        )
        grid = (batch, triton.cdiv(n_out, BLOCK_N))
        _forward_kernel[grid](
            times, order, count, weight_t, scalars, t_out, anchor, inv_slope, n_causal, n_in, n_out, BLOCK=BLOCK_N
        )
        ctx.save_for_backward(t_in, order, weight_t, anchor, inv_slope, n_causal)
        return t_out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        t_in, order, weight_t, anchor, inv_slope, n_causal = ctx.saved_tensors
        batch, n_in = t_in.shape
        n_out = weight_t.shape[1]
        grad_scaled = (grad_out.detach() * inv_slope).contiguous()
        # rank[b, i]: input i's place in its sample's time order; it is causal for neuron j when rank < n_causal[b, j]
        places = torch.arange(n_in, dtype=order.dtype, device=order.device).expand(batch, n_in)
        rank = torch.empty_like(order).scatter_(1, order.long(), places)
        grad_t = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w_t = torch.empty_like(weight_t)
            grid = (triton.cdiv(n_out, BLOCK_N), triton.cdiv(n_in, ROWS))
            _weight_grad_kernel[grid](
                t_in, rank, grad_scaled, anchor, n_causal, grad_w_t, batch, n_in, n_out, ROWS=ROWS, BLOCK=BLOCK_N
            )
            grad_w = saturate(grad_w_t).t()
        if ctx.needs_input_grad[0]:
            grad_in = torch.empty(batch, n_in, dtype=t_in.dtype, device=t_in.device)
            _input_grad_kernel[(batch, triton.cdiv(n_in, ROWS))](
                rank, grad_scaled, n_causal, weight_t, grad_in, n_in, n_out, ROWS=ROWS, BLOCK=BLOCK_N
            )
            grad_t = saturate(grad_in)
        return grad_t, grad_w, None
