"""relpsp_linear_stack: the fused numba stack against relpsp_linear layer by layer, the float64
brute force, finite differences, and the network's per-layer forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stdbp import functional as F
from stdbp.models import build

from .oracles import random_case, relpsp_brute_force


def _stack_case(rng: np.random.Generator, sizes: list[int], dtype: torch.dtype, batch: int = 6) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random input times (ties, silent inputs, a silent sample) and mixed-sign weights for ``sizes``."""
    t, _ = random_case(rng, batch=batch, n_in=sizes[0], n_out=1, dtype=dtype)
    weights = [torch.tensor(rng.normal(1.2 / n_in, 0.6 / np.sqrt(n_in), size=(n_out, n_in)), dtype=dtype) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    return t, weights


def _forward_and_grads(t: torch.Tensor, weights: list[torch.Tensor], thresholds: list[float], grad_out: torch.Tensor, fused: bool, input_grad: bool):
    t = t.clone().requires_grad_(input_grad)
    ws = [w.clone().requires_grad_() for w in weights]
    if fused:
        out = F.relpsp_linear_stack(t, ws, thresholds, backend="numba")
    else:
        out = t
        for w, th in zip(ws, thresholds):
            out = F.relpsp_linear(out, w, th, backend="numba")
    out.backward(grad_out)
    return out.detach(), [w.grad for w in ws], t.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sizes", [[24, 9], [30, 17, 5], [40, 1100, 12, 3]])
@pytest.mark.parametrize("input_grad", [False, True])
def test_stack_equals_layer_by_layer_bit_for_bit(dtype: torch.dtype, sizes: list[int], input_grad: bool) -> None:
    rng = np.random.default_rng(len(sizes) + sizes[0])
    t, weights = _stack_case(rng, sizes, dtype)
    thresholds = [float(th) for th in rng.uniform(0.4, 1.5, len(weights))]
    grad_out = torch.tensor(rng.normal(size=(t.shape[0], sizes[-1])), dtype=dtype)
    fused = _forward_and_grads(t, weights, thresholds, grad_out, True, input_grad)
    loop = _forward_and_grads(t, weights, thresholds, grad_out, False, input_grad)
    assert torch.isinf(loop[0]).any() and torch.isfinite(loop[0]).any()  # silent and firing outputs
    assert torch.equal(fused[0], loop[0])
    for g_fused, g_loop in zip(fused[1], loop[1]):
        assert torch.equal(g_fused, g_loop)
    if input_grad:
        assert torch.equal(fused[2], loop[2])
    else:
        assert fused[2] is None


@pytest.mark.parametrize("seed", range(4))
def test_stack_matches_brute_force_float64(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    t, weights = _stack_case(rng, [20, 11, 6], torch.float64, batch=5)
    out = F.relpsp_linear_stack(t, weights, 0.8)
    expected = t.numpy()
    for w in weights:
        expected = relpsp_brute_force(expected, w.numpy(), 0.8)
    assert np.array_equal(np.isinf(out.numpy()), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out.numpy()[finite], expected[finite], rtol=1e-9, atol=0)


def test_stack_gradcheck() -> None:
    """Finite differences of the fused stack (no ties, so that the causal sets stay put)."""
    rng = np.random.default_rng(5)
    t = torch.tensor(rng.uniform(0.0, 1.0, size=(3, 6)), requires_grad=True)
    w1 = torch.tensor(rng.uniform(0.3, 1.0, size=(4, 6)), requires_grad=True)
    w2 = torch.tensor(rng.uniform(0.3, 1.0, size=(2, 4)), requires_grad=True)
    assert torch.isfinite(F.relpsp_linear_stack(t, [w1, w2], 1.0)).all()
    assert torch.autograd.gradcheck(lambda t, a, b: F.relpsp_linear_stack(t, [a, b], 1.0, backend="numba"), (t, w1, w2), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("arch", ["784-800-10", "784-50-40-10", "28x28-4C5-P2-30-10"])
def test_network_forward_equals_forward_all(arch: str) -> None:
    """``forward`` (fused stacks) and ``forward_all`` (layer by layer): same times and gradients."""
    torch.manual_seed(0)
    model = build(arch)
    t_in = torch.rand(5, 784)
    t_in[t_in > 0.8] = float("inf")
    labels = torch.arange(5)
    out = model(t_in)
    assert torch.equal(out, model.forward_all(t_in)[-1])
    fused = torch.autograd.grad(F.first_spike_cross_entropy(out, labels, tau=0.05), list(model.parameters()))
    loop = torch.autograd.grad(F.first_spike_cross_entropy(model.forward_all(t_in)[-1], labels, tau=0.05), list(model.parameters()))
    for a, b in zip(fused, loop):
        assert torch.equal(a, b)


def test_layers_with_hooks_run_one_by_one() -> None:
    model = build("784-30-20-10")
    seen = []
    model.layers[1].register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    t_in = torch.rand(3, 784)
    out = model(t_in)
    assert seen == [(3, 20)]  # the hooked layer ran as itself, not inside a fused stack
    assert torch.equal(out, model.forward_all(t_in)[-1])


@pytest.mark.parametrize(
    "weights, thresholds, message",
    [
        ([], 1.0, "at least one"),
        ([torch.ones(3, 4), torch.ones(2, 4)], 1.0, "weights\\[1\\]"),
        ([torch.ones(3, 4)], [1.0, 1.0], "2 thresholds for 1 layers"),
        ([torch.ones(3, 4), torch.ones(2, 3)], [1.0, 0.0], "threshold"),
        ([torch.ones(3, 4, dtype=torch.float64)], 1.0, "one dtype"),
    ],
)
def test_stack_bad_arguments(weights: list[torch.Tensor], thresholds, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        F.relpsp_linear_stack(torch.zeros(2, 4), weights, thresholds)


def test_stack_checks_input_times() -> None:
    with pytest.raises(ValueError, match="negative"):
        F.relpsp_linear_stack(torch.tensor([[-1.0, 0.0]]), [torch.ones(2, 2), torch.ones(1, 2)])
