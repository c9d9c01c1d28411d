"""``stdbp.training.step.loss_and_backward`` against ``loss.backward()`` through autograd: the same output
times bit for bit, the same loss and parameter gradients to float rounding (the loss is computed
by its own numba kernel, checked here against ``first_spike_cross_entropy`` and autograd), for
every kind of network it runs, and the autograd path itself where it cannot run."""

from __future__ import annotations

import pytest
import torch

import stdbp
from stdbp.functional import first_spike_cross_entropy
from stdbp.training.loop import encode
from stdbp.training.step import _loss_and_gradient, _plan, loss_and_backward

ARCHS = [
    "30-12-5",
    "30-12",
    "30-20-12-5",
    "12x12-3C3-P2-8-4",
    "12x12-3C3-4C3-P2-6",
    "12x12-3C3-P2-2C2-5",
    "1x12x12-2C3-P3-P1-4-3",
    "12x12-3C3p1-P2-2C3p2-5",
]


def _batch(arch: str, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, int]:
    spec = stdbp.parse_arch(arch)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(
        0,
        256,
        (6, *spec[0].shape[-2:]) if len(spec[0].shape) == 3 else (6, spec[0].size),
        generator=g,
        dtype=torch.uint8,
    )
    images[images < 120] = 0  # dark pixels: silent inputs
    t_in = encode(images, 1.0).to(dtype)
    return t_in, torch.randint(0, spec[-1].size, (6,), generator=g), spec[-1].size


def _autograd(model, t_in, labels, tau):
    model.zero_grad(set_to_none=True)
    t_out = model(t_in)
    loss = first_spike_cross_entropy(t_out, labels, tau=tau)
    loss.backward()
    return loss.detach(), t_out.detach(), [p.grad.clone() for p in model.parameters()]


def _fused(model, t_in, labels, tau):
    model.zero_grad(set_to_none=True)
    loss, t_out = loss_and_backward(model, t_in, labels, tau=tau)
    return loss, t_out, [p.grad.clone() for p in model.parameters()]


def _assert_same_step(fused, reference, dtype: torch.dtype) -> None:
    (loss, t_out, grads), (loss_ref, t_out_ref, grads_ref) = fused, reference
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.equal(t_out, t_out_ref)
    assert not loss.requires_grad and not t_out.requires_grad
    torch.testing.assert_close(loss, loss_ref, rtol=rtol, atol=0)
    for g, g_ref in zip(grads, grads_ref):
        assert g.shape == g_ref.shape and g.is_contiguous()
        torch.testing.assert_close(g, g_ref, rtol=rtol, atol=rtol * float(g_ref.abs().max()))
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("arch", ARCHS)
def test_fused_step_is_the_autograd_step(arch: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = stdbp.build(arch).to(dtype)
    assert _plan(model, _batch(arch, 0, dtype)[0]) is not None  # the fused path runs
    for seed in range(3):
        t_in, labels, _ = _batch(arch, seed, dtype)
        _assert_same_step(_fused(model, t_in, labels, 0.05), _autograd(model, t_in, labels, 0.05), dtype)


def test_fused_step_on_the_paper_networks() -> None:
    for arch in ("784-800-10", "28x28-6C5-P2-16C5-P2-1024-128-10"):
        torch.manual_seed(0)
        model = stdbp.build(arch)
        t_in, labels, _ = _batch(arch, 1)
        _assert_same_step(_fused(model, t_in, labels, 0.05), _autograd(model, t_in, labels, 0.05), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("silent_time", [None, 3.0])
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_loss_kernel_matches_first_spike_cross_entropy(
    dtype: torch.dtype, silent_time: float | None, tau: float
) -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.rand(40, 10, generator=g, dtype=dtype) * 2
    t[t > 1.6] = float("inf")  # silent outputs, targets among them
    t[3] = float("inf")  # a sample with no output spike
    labels = torch.randint(0, 10, (40,), generator=g)
    for times in (t, torch.full_like(t, float("inf"))):  # and a batch without any output spike
        x = times.clone().requires_grad_(True)
        loss_ref = first_spike_cross_entropy(x, labels, tau=tau, silent_time=silent_time)
        (grad_ref,) = torch.autograd.grad(loss_ref, x)
        loss, grad = _loss_and_gradient(times, labels, tau, silent_time)
        rtol = 1e-6 if dtype == torch.float32 else 1e-13
        torch.testing.assert_close(loss, loss_ref.detach(), rtol=rtol, atol=0)
        torch.testing.assert_close(grad, grad_ref, rtol=rtol, atol=rtol * float(grad_ref.abs().max()))
        assert grad.dtype == dtype and torch.isfinite(grad).all()


def test_loss_kernel_rejects_bad_arguments() -> None:
    t = torch.rand(4, 3)
    with pytest.raises(ValueError, match="class indices"):
        _loss_and_gradient(t, torch.tensor([0, 1, 3, 0]), 0.05, None)
    with pytest.raises(ValueError, match="class indices"):
        _loss_and_gradient(t, torch.tensor([0, -1, 2, 0]), 0.05, None)
    with pytest.raises(ValueError, match="tau"):
        _loss_and_gradient(t, torch.tensor([0, 1, 2, 0]), 0.0, None)
    with pytest.raises(ValueError, match="labels"):
        _loss_and_gradient(t, torch.tensor([0, 1, 2]), 0.05, None)


def test_gradients_accumulate_and_frozen_weights_get_none() -> None:
    torch.manual_seed(0)
    model = stdbp.build("12x12-3C3-P2-8-4")
    t_in, labels, _ = _batch("12x12-3C3-P2-8-4", 0)
    _, _, grads = _fused(model, t_in, labels, 0.05)
    loss_and_backward(model, t_in, labels, tau=0.05)  # adds the same gradients again
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g + g)
    model.zero_grad(set_to_none=True)
    model.layers[0].weight.requires_grad_(False)
    loss_and_backward(model, t_in, labels, tau=0.05)
    assert model.layers[0].weight.grad is None
    assert model.layers[2].weight_t.grad is not None


@pytest.mark.parametrize(
    "setup",
    [
        lambda m: stdbp.build("30-12-5", backend="reference"),
        lambda m: stdbp.build("30-12-5", neuron="alpha"),
        lambda m: (m.layers[0].register_forward_hook(lambda *a: None), m)[1],
        lambda m: m.double(),  # float64 weights, float32 input: the layer functions' error
    ],
    ids=["reference", "alpha", "hook", "dtype"],
)
def test_other_networks_take_the_autograd_path(setup) -> None:
    torch.manual_seed(0)
    model = setup(stdbp.build("30-12-5"))
    t_in, labels, _ = _batch("30-12-5", 0)
    assert _plan(model, t_in) is None
    if next(model.parameters()).dtype != t_in.dtype:
        with pytest.raises(ValueError, match="dtype|float"):
            loss_and_backward(model, t_in, labels, tau=0.05)
        return
    loss, t_out, grads = _fused(model, t_in, labels, 0.05)
    loss_ref, t_out_ref, grads_ref = _autograd(model, t_in, labels, 0.05)
    assert torch.equal(loss, loss_ref) and torch.equal(t_out, t_out_ref)
    assert all(torch.equal(g, g_ref) for g, g_ref in zip(grads, grads_ref))


def test_bad_input_times_raise() -> None:
    model = stdbp.build("30-12-5")
    t_in, labels, _ = _batch("30-12-5", 0)
    t_in.view(6, -1)[0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        loss_and_backward(model, t_in, labels)
