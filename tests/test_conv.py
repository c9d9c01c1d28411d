"""Convolutional ReL-PSP layers and earliest-spike pooling, against independent oracles.

The numba kernel is checked against the PyTorch reference (forward and gradients, both
dtypes), both against a float64 brute force over explicit receptive fields written here in
numpy, gradients against finite differences, pooling against ``max_pool2d`` on negated times,
and the paper's convolutional network against its layer shapes.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch

import stdbp
from stdbp import functional as F
from stdbp.errors import ArchitectureError
from stdbp.nn.layers import EarliestSpikePool2d, SpikingConv2d

from .oracles import relpsp_conv2d_brute_force

INF = float("inf")

# (stride, padding) pairs, as accepted by conv2d
GEOMETRIES = [(1, 0), (2, 1), (1, 1), (2, 0), ((1, 2), (0, 1))]


def _case(
    seed: int,
    dtype: torch.dtype,
    batch: int = 3,
    c_in: int = 2,
    size: tuple[int, int] = (9, 8),
    c_out: int = 4,
    kernel: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random times with ties (a 0.1 grid on half the inputs), silent inputs, one silent sample; mixed-sign weights."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(batch, c_in, *size, generator=g, dtype=torch.float64)
    grid = torch.rand(t.shape, generator=g) < 0.5
    t = torch.where(grid, torch.round(t * 10) / 10, t)
    t[torch.rand(t.shape, generator=g) < 0.3] = INF
    t[-1] = INF  # a sample without any spike
    fan_in = c_in * kernel * kernel
    w = (
        torch.randn(c_out, c_in, kernel, kernel, generator=g, dtype=torch.float64) * (2.0 / math.sqrt(fan_in))
        + 3.0 / fan_in
    )
    return t.to(dtype), w.to(dtype)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("stride,padding", GEOMETRIES)
def test_numba_matches_reference(dtype, stride, padding):
    for seed in range(3):
        t, w = _case(seed, dtype)
        t.requires_grad_(True)
        w.requires_grad_(True)
        fast = F.relpsp_conv2d(t, w, 1.0, stride, padding, backend="numba")
        ref = F.relpsp_conv2d(t, w, 1.0, stride, padding, backend="reference")
        assert (
            fast.shape
            == ref.shape
            == torch.nn.functional.conv2d(t.detach(), w.detach(), stride=stride, padding=padding).shape
        )
        fired = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(fast), fired)
        assert 0.2 < fired.float().mean() < 0.9  # the cases exercise both firing and silent neurons
        scale = ref[fired].abs().max().item()
        rtol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(fast[fired], ref[fired], rtol=0, atol=rtol * scale)
        # Every output gets a gradient, silent ones included (the surrogate).
        g = torch.randn(fast.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        grads_fast = torch.autograd.grad(fast, (t, w), g)
        grads_ref = torch.autograd.grad(ref, (t, w), g)
        for gf, gr in zip(grads_fast, grads_ref):
            assert torch.isfinite(gf).all()
            tol = (1e-11 if dtype == torch.float64 else 1e-4) * max(1.0, gr.abs().max().item())
            torch.testing.assert_close(gf, gr, rtol=0, atol=tol)
        assert (grads_fast[0][torch.isinf(t.detach())] == 0).all()  # silent inputs get no gradient
        # An input that needs no gradient (a first layer's) skips it: the weight gradient is the same.
        w_only = w.detach().clone().requires_grad_(True)
        (grad_w_only,) = torch.autograd.grad(
            F.relpsp_conv2d(t.detach(), w_only, 1.0, stride, padding, backend="numba"), w_only, g
        )
        assert torch.equal(grad_w_only, grads_fast[1])


@pytest.mark.parametrize("c_out", [1, 8, 9, 16])
def test_numba_matches_reference_for_any_channel_count(c_out: int) -> None:
    """The kernel pads the output channels to whole vectors of 8: padded or not, same results."""
    t, w = _case(c_out, torch.float64, c_out=c_out)
    g = torch.randn(3, c_out, 7, 6, generator=torch.Generator().manual_seed(c_out), dtype=torch.float64)
    results = []
    for backend in ("numba", "reference"):
        ti, wi = t.clone().requires_grad_(True), w.clone().requires_grad_(True)
        out = F.relpsp_conv2d(ti, wi, 1.0, backend=backend)
        results.append((out.detach(), *torch.autograd.grad(out, (ti, wi), g)))
    (o1, gt1, gw1), (o2, gt2, gw2) = results
    assert o1.shape == (3, c_out, 7, 6) and torch.equal(torch.isinf(o1), torch.isinf(o2))
    torch.testing.assert_close(o1[torch.isfinite(o1)], o2[torch.isfinite(o2)], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gt1, gt2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw1, gw2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("stride,padding", GEOMETRIES)
def test_against_brute_force(backend, stride, padding):
    for seed in range(2):
        t, w = _case(10 + seed, torch.float64)
        out = F.relpsp_conv2d(t, w, 0.7, stride, padding, backend=backend).numpy()
        expected = relpsp_conv2d_brute_force(t.numpy(), w.numpy(), 0.7, _pair(stride), _pair(padding))
        assert np.array_equal(np.isfinite(out), np.isfinite(expected))
        fired = np.isfinite(expected)
        np.testing.assert_allclose(out[fired], expected[fired], rtol=1e-9, atol=0)


def _well_separated_case(stride: int, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 case where every output fires and no input time is within 1e-4 of its neuron's output time."""
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        t = 0.05 + 0.9 * torch.rand(2, 2, 6, 5, generator=g, dtype=torch.float64)
        w = 0.1 + 0.4 * torch.rand(3, 2, 3, 3, generator=g, dtype=torch.float64)
        out = F.relpsp_conv2d(t, w, 1.0, stride, padding, backend="reference")
        fields = torch.nn.functional.unfold(
            torch.nn.functional.pad(t, (padding,) * 4, value=INF), 3, stride=stride
        )  # (B, 18, L)
        gap = (fields.unsqueeze(1) - out.flatten(2).unsqueeze(2)).abs()  # (B, C_out, 18, L)
        if torch.isfinite(out).all() and gap.min() > 1e-4:
            return t, w
    raise AssertionError("no well-separated case found")


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
def test_gradcheck(backend, stride, padding):
    t, w = _well_separated_case(stride, padding)
    t.requires_grad_(True)
    w.requires_grad_(True)

    def fn(t_in, weight):
        return F.relpsp_conv2d(t_in, weight, 1.0, stride, padding, backend=backend)

    assert torch.autograd.gradcheck(fn, (t, w), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_silent_surrogate_uses_receptive_field():
    """A silent neuron passes its gradient as if it fired at its field's latest spike + SILENT_HORIZON."""
    t = torch.full((1, 1, 3, 4), INF, dtype=torch.float64)
    t[0, 0, 0, 0], t[0, 0, 1, 1], t[0, 0, 0, 3] = 0.2, 0.5, 0.9  # the last one lies outside the first field
    w = torch.full((1, 1, 2, 2), -0.1, dtype=torch.float64, requires_grad=True)  # never fires
    out = F.relpsp_conv2d(t, w, 1.0, backend="numba")  # (1, 1, 2, 3)
    assert torch.isinf(out).all()
    g = torch.zeros_like(out)
    g[0, 0, 0, 0] = 1.0
    (grad_w,) = torch.autograd.grad(out, w, g)
    t_ref = 0.5 + stdbp.kernels.SILENT_HORIZON
    # t~ = t_ref + theta - sum w (t_ref - t_i) over the field's spikes: dt~/dw_i = -(t_ref - t_i)
    expected = torch.tensor([[[[-(t_ref - 0.2), 0.0], [0.0, -(t_ref - 0.5)]]]], dtype=torch.float64)
    torch.testing.assert_close(grad_w, expected)


def test_weight_gradient_is_independent_of_thread_count():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")
    t, w = _case(3, torch.float32, batch=8)
    w.requires_grad_(True)
    grads = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            out = F.relpsp_conv2d(t, w, backend="numba")
            grads.append(torch.autograd.grad(out, w, torch.ones_like(out))[0])
    finally:
        numba.set_num_threads(before)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize(
    "t_shape,w_shape,kwargs,message",
    [
        ((2, 3, 8, 8), (4, 2, 3, 3), {}, "shape mismatch"),
        ((2, 3, 8), (4, 3, 3, 3), {}, "expects t_in"),
        ((2, 3, 2, 8), (4, 3, 3, 3), {}, "does not fit"),
        ((2, 3, 8, 8), (4, 3, 3, 3), {"threshold": 0.0}, "threshold"),
        ((2, 3, 8, 8), (4, 3, 3, 3), {"stride": 0}, "stride"),
        ((2, 3, 8, 8), (4, 3, 3, 3), {"padding": -1}, "padding"),
    ],
)
def test_conv_validation(t_shape, w_shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        F.relpsp_conv2d(torch.rand(t_shape), torch.rand(w_shape), **kwargs)


def test_conv_validation_of_times_and_dtypes():
    w = torch.rand(4, 3, 3, 3)
    for bad, word in ((float("nan"), "NaN"), (-0.5, "negative")):
        t = torch.rand(2, 3, 8, 8)
        t[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match=word):
            F.relpsp_conv2d(t, w)
    with pytest.raises(ValueError, match="float32 or both float64"):
        F.relpsp_conv2d(torch.rand(2, 3, 8, 8, dtype=torch.float64), w)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_pool_matches_max_pool_on_negated_times(backend: str):
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        t = torch.rand(3, 2, 9, 7, generator=g, dtype=dtype).transpose(0, 1).transpose(2, 3)  # not contiguous
        t[torch.rand(t.shape, generator=g) < 0.5] = INF
        t[0, 0, :2, :2] = INF  # an all-silent window
        t[0, 1, 2:4, 2:4] = 0.5  # a tie
        for kernel, stride in ((2, None), (3, None), (3, 2), ((2, 3), None)):
            x = t.clone().requires_grad_(True)
            out = F.earliest_spike_pool2d(x, kernel, stride, backend)
            x_ref = t.clone().requires_grad_(True)
            expected = -torch.nn.functional.max_pool2d(-x_ref, kernel, stride)
            assert torch.equal(out, expected)  # windows that do not fit are dropped, like max_pool2d
            g_out = torch.randn(out.shape, generator=g, dtype=dtype)
            (grad,) = torch.autograd.grad(out, x, g_out)
            (grad_ref,) = torch.autograd.grad(expected, x_ref, torch.where(torch.isinf(expected), 0.0, g_out))
            assert torch.isfinite(grad).all()
            assert torch.equal(grad, grad_ref)
            assert (grad[torch.isinf(t)] == 0).all()
    assert torch.isinf(F.earliest_spike_pool2d(torch.full((1, 1, 2, 2), INF), 2, backend=backend)).all()


def test_pool_validation():
    with pytest.raises(ValueError, match="does not fit"):
        F.earliest_spike_pool2d(torch.rand(1, 1, 3, 3), 4)
    with pytest.raises(ValueError, match="negative"):
        F.earliest_spike_pool2d(-torch.rand(1, 1, 4, 4), 2)
    with pytest.raises(ValueError, match="expects t_in"):
        F.earliest_spike_pool2d(torch.rand(4, 4), 2)


def test_modules():
    torch.manual_seed(0)
    conv = SpikingConv2d(3, 8, 5, stride=2, padding=2)
    fan_in = 3 * 5 * 5
    assert conv.weight.shape == (8, 3, 5, 5)
    assert abs(conv.weight.mean().item() - 5.0 / fan_in) < 0.5 / math.sqrt(fan_in)
    t = torch.rand(4, 3, 11, 11)
    out = conv(t)
    assert out.shape == (4, 8, 6, 6)
    assert torch.isfinite(out).float().mean() > 0.9  # the initialisation makes most neurons fire
    assert EarliestSpikePool2d(2)(out).shape == (4, 8, 3, 3)


PAPER_CONV = "28x28-6C5-P2-16C5-P2-1024-128-10"


def test_build_paper_conv_network():
    torch.manual_seed(0)
    model = stdbp.build(PAPER_CONV)
    assert model.num_classes == 10
    t_in = torch.rand(2, 1, 28, 28)
    t_in[t_in < 0.6] = INF
    shapes = [tuple(t.shape) for t in model.forward_all(t_in)]
    assert shapes == [
        (2, 1, 28, 28),
        (2, 6, 24, 24),
        (2, 6, 12, 12),
        (2, 16, 8, 8),
        (2, 16, 4, 4),
        (2, 1024),
        (2, 128),
        (2, 10),
    ]
    out = model(t_in)
    torch.testing.assert_close(model(t_in.reshape(2, 784)), out, rtol=0, atol=0)
    F.first_spike_cross_entropy(out, torch.tensor([3, 7]), tau=0.05).backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    with pytest.raises(ArchitectureError, match="does not fit"):
        model(torch.rand(2, 28, 28))


def test_padded_convolutions_in_the_notation():
    spec = stdbp.parse_arch("28x28-8C3p1-P2-4C5p2-10")
    assert [(s.kind, s.kernel, s.padding) for s in spec[1:3]] == [("conv", 3, 1), ("pool", 2, 0)]
    model = stdbp.build("28x28-8C3p1-P2-4C5p2-10")
    assert (model.layers[0].padding, model.layers[2].padding) == (1, 2)
    shapes = [tuple(t.shape[1:]) for t in model.forward_all(torch.rand(2, 1, 28, 28))]
    assert shapes == [(1, 28, 28), (8, 28, 28), (8, 14, 14), (4, 14, 14), (10,)]
    assert model.layers[3].weight.shape == (10, 4 * 14 * 14)


def test_fully_connected_network_still_takes_images():
    model = stdbp.build("28x28-30-10")
    t_in = torch.rand(3, 1, 28, 28)
    assert model(t_in).shape == model(t_in.reshape(3, 784)).shape == (3, 10)


@pytest.mark.parametrize(
    "arch,token",
    [
        ("28x28-6C30-10", "6C30"),  # kernel larger than the map
        ("28x28-6C5-P30-10", "P30"),  # pooling window larger than the map
        ("28x28-6C5-P2-16C5-P2-16C5-10", "16C5"),  # a 4x4 map left for a 5x5 kernel
        ("784-6C5-10", "6C5"),  # convolution on a flat input
        ("28x28-100-P2-10", "P2"),  # pooling after a fully connected layer
        ("28x28-6C3p3-10", "6C3p3"),  # a border as wide as the kernel
        ("28x28-6C5-P2-16C5-P2-16C7p1-10", "16C7p1"),  # 7x7 kernel on a 4x4 map padded to 6x6
        ("28x28-6C3p-10", "6C3p"),  # padding without a width
    ],
)
def test_bad_conv_architectures(arch, token):
    with pytest.raises(ArchitectureError) as err:
        stdbp.build(arch)
    message = str(err.value)
    assert repr(token) in message and "\n" not in message
