"""The fused convolution and pooling (``relpsp_conv2d_pool``) against the two layers run one after
the other: spike times and gradients bit for bit with numba (the same arithmetic, in one kernel
call), to float rounding against the reference backend, and inside ``SpikingNetwork``."""

from __future__ import annotations

import pytest
import torch

import stdbp
from stdbp import functional as F

from .test_conv import _case

POOLS = [(2, None), (3, None), (3, 2), ((2, 3), (1, 2))]


def _both(
    t: torch.Tensor, w: torch.Tensor, stride, padding, pool, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output and (input, weight) gradients of the fused call and of conv then pool, for one output gradient."""
    results = []
    for fused in (True, False):
        x, weight = t.clone().requires_grad_(True), w.clone().requires_grad_(True)
        if fused:
            out = F.relpsp_conv2d_pool(x, weight, 1.0, stride, padding, *pool, backend=backend)
        else:
            out = F.earliest_spike_pool2d(
                F.relpsp_conv2d(x, weight, 1.0, stride, padding, backend=backend), *pool, backend=backend
            )
        g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=t.dtype)
        grad_t, grad_w = torch.autograd.grad(out, (x, weight), g_out)
        results.append((out, grad_t, grad_w))
    return (*results[0], *results[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((1, 2), (0, 1))])
@pytest.mark.parametrize("pool", POOLS)
def test_fused_is_conv_then_pool_bit_for_bit(dtype, stride, padding, pool):
    for seed in range(3):
        t, w = _case(seed, dtype, size=(11, 10), c_out=5)
        out, grad_t, grad_w, out_ref, grad_t_ref, grad_w_ref = _both(t, w, stride, padding, pool, "numba")
        assert out.shape == out_ref.shape
        assert torch.isfinite(out).any() and torch.isinf(out).any()  # the cases have firing and silent windows
        assert torch.equal(out, out_ref)
        assert torch.equal(grad_t, grad_t_ref)
        assert torch.equal(grad_w, grad_w_ref)
        assert grad_w.abs().sum() > 0


@pytest.mark.parametrize("c_out", [1, 6, 8, 9, 16])
def test_fused_matches_reference(c_out: int):
    t, w = _case(4, torch.float64, batch=4, size=(12, 12), c_out=c_out)
    out, grad_t, grad_w, *_ = _both(t, w, 1, 0, (2, None), "numba")
    ref, grad_t_ref, grad_w_ref, *_ = _both(t, w, 1, 0, (2, None), "reference")
    assert torch.equal(torch.isinf(out), torch.isinf(ref))
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_t, grad_t_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_w, grad_w_ref, rtol=1e-9, atol=1e-12)


def test_first_layer_needs_no_input_gradient():
    t, w = _case(5, torch.float32, size=(12, 12), c_out=6)
    weight = w.clone().requires_grad_(True)
    out = F.relpsp_conv2d_pool(t, weight, pool_size=2)
    (grad_w,) = torch.autograd.grad(out, weight, torch.ones_like(out))
    weight_ref = w.clone().requires_grad_(True)
    ref = F.earliest_spike_pool2d(F.relpsp_conv2d(t, weight_ref), 2)
    (grad_w_ref,) = torch.autograd.grad(ref, weight_ref, torch.ones_like(ref))
    assert torch.equal(grad_w, grad_w_ref)


def test_validation():
    with pytest.raises(ValueError, match="does not fit"):
        F.relpsp_conv2d_pool(torch.rand(1, 1, 6, 6), torch.rand(2, 1, 3, 3), pool_size=5)  # 4x4 output
    with pytest.raises(ValueError, match="channels"):
        F.relpsp_conv2d_pool(torch.rand(1, 2, 6, 6), torch.rand(2, 1, 3, 3))
    with pytest.raises(ValueError, match="kernel_size"):
        F.relpsp_conv2d_pool(torch.rand(1, 1, 6, 6), torch.rand(2, 1, 3, 3), pool_size=0)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_network_forward_fuses_and_matches_forward_all(backend: str):
    torch.manual_seed(0)
    model = stdbp.build("16x16-4C3-P2-6C3-P2-20-5", backend=backend)
    images = torch.randint(0, 256, (6, 16, 16), dtype=torch.uint8)
    t_in = stdbp.encoding.latency_encode(images, t_max=1.0).unsqueeze(1)
    calls = []
    original = F.relpsp_conv2d_pool

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    F.relpsp_conv2d_pool = spy
    try:
        out = model(t_in)
    finally:
        F.relpsp_conv2d_pool = original
    assert len(calls) == 2  # both conv-pool pairs fused
    assert torch.equal(out, model.forward_all(t_in)[-1])
    grads = torch.autograd.grad(out.clamp(max=5).sum(), list(model.parameters()))
    grads_ref = torch.autograd.grad(model.forward_all(t_in)[-1].clamp(max=5).sum(), list(model.parameters()))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)  # the linear stack's backward may sum differently


def test_hooked_pool_is_not_fused():
    torch.manual_seed(0)
    model = stdbp.build("12x12-3C3-P2-5")
    seen = []
    model.layers[1].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    t_in = torch.rand(2, 1, 12, 12)
    out = model(t_in)
    assert seen == [torch.Size([2, 3, 5, 5])]  # the hook saw the pooling layer's output
    assert torch.equal(out, model.forward_all(t_in)[-1])


@pytest.mark.parametrize("pooled", [False, True])
def test_empty_batch(pooled: bool):
    weight = torch.rand(4, 1, 3, 3, requires_grad=True)
    t_in = torch.rand(0, 1, 8, 8)
    out = F.relpsp_conv2d_pool(t_in, weight, pool_size=2) if pooled else F.relpsp_conv2d(t_in, weight)
    assert out.shape == ((0, 4, 3, 3) if pooled else (0, 4, 6, 6))
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_pooled_convolution_keeps_only_each_windows_earliest_neuron():
    """With pooling, the backward state is one entry per window (a quarter of the neurons for 2x2),
    and a second backward pass through the same graph gives the same gradients."""
    from types import SimpleNamespace

    from stdbp.kernels.numba_autograd_conv import RelpspConv2dNumba

    t, w = _case(6, torch.float32, batch=3, size=(12, 12), c_out=6)
    ctx = SimpleNamespace(needs_input_grad=(True, True))
    pooled = RelpspConv2dNumba.forward(ctx, t, w, 1.0, (1, 1), (0, 0), (2, 2, 2, 2))
    assert pooled.shape == (3, 6, 5, 5)
    _, argmin, anchor, inv_slope, n_causal, *_ = ctx.scan
    for state in (argmin, anchor, inv_slope, n_causal):
        assert state.shape == (3, 6 * 5 * 5)
    fired = torch.from_numpy(argmin >= 0)
    assert torch.equal(
        torch.from_numpy(anchor)[fired], pooled.reshape(3, -1)[fired]
    )  # a winner's anchor is its spike time
    weight = w.clone().requires_grad_(True)
    out = F.relpsp_conv2d_pool(t.clone().requires_grad_(True), weight, pool_size=2)
    g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (first,) = torch.autograd.grad(out, weight, g_out, retain_graph=True)
    (second,) = torch.autograd.grad(out, weight, g_out)
    assert torch.equal(first, second) and first.abs().sum() > 0
