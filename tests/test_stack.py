"""relpsp_linear_stack: the fused numba stack against relpsp_linear layer by layer, the float64
brute force, finite differences, and the network's per-layer forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stdbp import functional as F
from stdbp.nn import SpikingLinear
from stdbp.nn.network import build

from .oracles import random_case, relpsp_brute_force


def _stack_case(
    rng: np.random.Generator, sizes: list[int], dtype: torch.dtype, batch: int = 6
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random input times (ties, silent inputs, a silent sample) and mixed-sign weights for ``sizes``."""
    t, _ = random_case(rng, batch=batch, n_in=sizes[0], n_out=1, dtype=dtype)
    weights = [
        torch.tensor(rng.normal(1.2 / n_in, 0.6 / np.sqrt(n_in), size=(n_out, n_in)), dtype=dtype)
        for n_in, n_out in zip(sizes[:-1], sizes[1:])
    ]
    return t, weights


def _forward_and_grads(
    t: torch.Tensor,
    weights: list[torch.Tensor],
    thresholds: list[float],
    grad_out: torch.Tensor,
    fused: bool,
    input_grad: bool,
    backward: str = "auto",
):
    t = t.clone().requires_grad_(input_grad)
    ws = [w.clone().requires_grad_() for w in weights]
    if fused:
        out = F.relpsp_linear_stack(t, ws, thresholds, backend="numba", backward=backward)
    else:
        out = t
        for w, th in zip(ws, thresholds):
            out = F.relpsp_linear(out, w, th, backend="numba", backward=backward)
    out.backward(grad_out)
    return out.detach(), [w.grad for w in ws], t.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sizes", [[24, 9], [30, 17, 5], [40, 1100, 12, 3]])
@pytest.mark.parametrize("input_grad", [False, True])
@pytest.mark.parametrize("mode", ["prefix", "rows"])
def test_stack_equals_layer_by_layer_bit_for_bit(
    dtype: torch.dtype, sizes: list[int], input_grad: bool, mode: str
) -> None:
    # mode: the same kernels layer by layer (the dense backward is another summation, tested below)
    rng = np.random.default_rng(len(sizes) + sizes[0])
    t, weights = _stack_case(rng, sizes, dtype)
    thresholds = [float(th) for th in rng.uniform(0.4, 1.5, len(weights))]
    grad_out = torch.tensor(rng.normal(size=(t.shape[0], sizes[-1])), dtype=dtype)
    fused = _forward_and_grads(t, weights, thresholds, grad_out, True, input_grad, mode)
    loop = _forward_and_grads(t, weights, thresholds, grad_out, False, input_grad, mode)
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
    assert torch.autograd.gradcheck(
        lambda t, a, b: F.relpsp_linear_stack(t, [a, b], 1.0, backend="numba"), (t, w1, w2), eps=1e-7, atol=1e-6
    )


@pytest.mark.parametrize("arch", ["784-800-10", "784-50-40-10", "28x28-4C5-P2-30-10"])
def test_network_forward_equals_forward_all(arch: str) -> None:
    """``forward`` (fused stacks) and ``forward_all`` (layer by layer): same times and gradients."""
    torch.manual_seed(0)
    model = build(arch)
    for layer in model.layers:
        if isinstance(layer, SpikingLinear):
            layer.backward = "prefix"
    t_in = torch.rand(5, 784)
    t_in[t_in > 0.8] = float("inf")
    labels = torch.arange(5)
    out = model(t_in)
    assert torch.equal(out, model.forward_all(t_in)[-1])
    fused = torch.autograd.grad(F.first_spike_cross_entropy(out, labels, tau=0.05), list(model.parameters()))
    loop = torch.autograd.grad(
        F.first_spike_cross_entropy(model.forward_all(t_in)[-1], labels, tau=0.05), list(model.parameters())
    )
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


def _dense_case(
    dtype: torch.dtype, silent_inputs: bool = True
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Inputs that nearly all (or all) spike and neurons that fire late (mostly causal pairs), some early."""
    rng = np.random.default_rng(11)
    t = torch.tensor(rng.uniform(0.0, 1.0, size=(9, 40)), dtype=dtype)
    if silent_inputs:
        t[0, :5] = float("inf")
    t[1, 3] = t[1, 4]  # a tie
    w1 = torch.tensor(rng.normal(0.05, 0.04, size=(30, 40)), dtype=dtype)
    w1[:3] *= 8  # neurons that fire early: many non-causal inputs
    w2 = torch.tensor(rng.normal(0.08, 0.05, size=(11, 30)), dtype=dtype)
    grad_out = torch.tensor(rng.normal(size=(9, 11)), dtype=dtype)
    return t, [w1, w2], grad_out


@pytest.mark.parametrize("silent_inputs", [True, False])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_dense_backward_matches_causal_prefix_sums(dtype: torch.dtype, rtol: float, silent_inputs: bool) -> None:
    """Matrix products less the non-causal pairs give eqs. 14-15 as the prefix sums do (with
    silent inputs, and with every input spiking, which has a shortcut)."""
    t, weights, grad_out = _dense_case(dtype, silent_inputs)
    results = {}
    for mode in ("prefix", "dense", "rows"):
        results[mode] = _forward_and_grads(t, weights, [1.0, 1.0], grad_out, True, True, mode)
    prefix = [*results["prefix"][1], results["prefix"][2]]
    for mode in ("dense", "rows"):
        assert torch.equal(results[mode][0], results["prefix"][0])  # the forward is the same
        other = [*results[mode][1], results[mode][2]]
        for a, b in zip(other, prefix):
            assert b.abs().max() > 0
            torch.testing.assert_close(a, b, rtol=0, atol=rtol * float(b.abs().max()))
    dense_w = results["dense"][1]
    assert dtype == torch.float64 or not all(
        torch.equal(a, b) for a, b in zip(dense_w, results["prefix"][1])
    )  # float32: really another summation


def test_auto_backward_picks_dense_only_for_mostly_causal_layers() -> None:
    from stdbp.kernels.numba_autograd import dense_is_cheaper

    spikes = 64 * 256  # every input of 64 samples spikes
    assert dense_is_cheaper("auto", spikes, 64 * 26, 64, (256, 1024))  # 10 % non-causal
    assert not dense_is_cheaper("auto", spikes, 64 * 156, 64, (256, 1024))  # 60 %: loses digits
    assert not dense_is_cheaper("auto", 64 * 20, 0, 64, (784, 800))  # sparse input: prefix is cheaper
    assert dense_is_cheaper("dense", spikes, spikes, 64, (8, 8))
    assert not dense_is_cheaper("prefix", spikes, 0, 64, (256, 1024))


def testweight_gradient_method_follows_the_input_density() -> None:
    from stdbp.kernels.numba_autograd import weight_gradient_method

    rng = np.random.default_rng(0)
    dense_input = rng.uniform(0, 1, (64, 256)).astype(np.float32)  # every input spikes
    assert weight_gradient_method("auto", dense_input.size, dense_input, (256, 1024), None) == "rows"
    assert weight_gradient_method("auto", dense_input.size, dense_input, (256, 1024), (64 * 26, True)) == "matmul"
    assert (
        weight_gradient_method("auto", dense_input.size, dense_input, (256, 1024), (64 * 156, True)) == "rows"
    )  # matmul would lose digits
    sparse_input = np.full((64, 784), np.inf, np.float32)
    sparse_input[:, rng.choice(784, 20, replace=False)] = 0.5  # 20 scattered spiking inputs per sample
    assert weight_gradient_method("auto", 64 * 20, sparse_input, (784, 800), None) == "prefix"
    assert weight_gradient_method("auto", 0, np.full((4, 8), np.inf, np.float32), (8, 16), None) == "prefix"
    for mode, method in (("prefix", "prefix"), ("rows", "rows"), ("dense", "matmul")):
        assert weight_gradient_method(mode, dense_input.size, dense_input, (256, 1024), (0, True)) == method
    assert (
        weight_gradient_method("dense", dense_input.size, dense_input, (256, 1024), None) == "prefix"
    )  # matmul may overflow


@pytest.mark.parametrize("all_spike", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_correction_does_not_depend_on_the_row_parts(dtype: type, all_spike: bool) -> None:
    from stdbp.kernels import numba_stack

    rng = np.random.default_rng(2)
    batch, n_in, n_out = 5, 37, 16
    times = np.sort(rng.uniform(0, 1, (batch, n_in)), axis=1).astype(dtype)
    order = np.stack([rng.permutation(n_in) for _ in range(batch)]).astype(np.int32)
    n_spikes = rng.integers(20, n_in + 1, batch).astype(np.int32)
    n_causal = rng.integers(0, 30, (batch, n_out)).astype(dtype)
    first_fire = n_causal.min(axis=1).astype(np.int32)
    a = rng.normal(size=(batch, n_out)).astype(dtype)
    anchor = rng.uniform(1, 2, (batch, n_out)).astype(dtype)
    results = []
    for parts in (1, 3, 7):
        grad = np.ones((n_in, n_out), dtype=dtype)
        numba_stack.weight_gradient_correction(
            times, a, anchor, n_causal, order, n_spikes, first_fire, all_spike, parts, grad
        )
        results.append(grad)
    expected = np.ones((n_in, n_out))
    if all_spike:  # the products held only sum_b a t_i: sum_b a t_j comes off every row
        expected -= (a.astype(np.float64) * anchor).sum(axis=0)
    for b in range(batch):
        for k in range(first_fire[b], n_spikes[b]):
            noncausal = k >= n_causal[b]
            expected[order[b, k]] -= np.where(noncausal, a[b] * (times[b, k] - anchor[b]), 0.0)
    np.testing.assert_allclose(results[0], expected, rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_dense_backward_is_not_used_where_gradients_may_overflow() -> None:
    """A neuron with a tiny causal weight sum: eq. 14 overflows; the dense form would give inf - inf."""
    tiny = torch.finfo(torch.float32).tiny * 4
    t = torch.tensor([[0.0, 0.5]])
    w1 = torch.tensor([[tiny, 0.0], [1.0, 1.0]], requires_grad=True)
    w2 = torch.tensor([[1.0, 1.0]], requires_grad=True)
    out = F.relpsp_linear_stack(t, [w1, w2], 1.0, backward="dense")
    out.backward(torch.tensor([[1e30]]))
    assert torch.isfinite(w1.grad).all() and torch.isfinite(w2.grad).all()


def test_dense_backward_threads() -> None:
    """numba's thread count never changes the gradients; PyTorch's (which blocks its matrix
    products by it) may, in the last bits only."""
    import numba

    t, weights, grad_out = _dense_case(torch.float32)
    threads = (torch.get_num_threads(), numba.get_num_threads())
    results = []
    try:
        for torch_threads, numba_threads in ((2, 2), (2, 1), (1, 1)):
            torch.set_num_threads(torch_threads)
            numba.set_num_threads(min(numba_threads, numba.config.NUMBA_NUM_THREADS))
            results.append(_forward_and_grads(t, weights, [1.0, 1.0], grad_out, True, True, "dense"))
    finally:
        torch.set_num_threads(threads[0])
        numba.set_num_threads(threads[1])
    grads = [[*r[1], r[2]] for r in results]
    for a, b in zip(grads[0], grads[1]):
        assert torch.equal(a, b)
    for a, b in zip(grads[0], grads[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))


def test_single_backward_releases_each_layers_state() -> None:
    """The fused step's ``single_backward`` drops each layer's state as its gradients are made, with
    the gradients of the autograd path, which keeps the state for a second backward pass."""
    from types import SimpleNamespace

    from stdbp.kernels.numba_autograd import RelpspStackNumba

    rng = np.random.default_rng(7)
    t, weights = _stack_case(rng, [30, 17, 5], torch.float32)
    grad_out = torch.randn(t.shape[0], 5, generator=torch.Generator().manual_seed(3))
    ctx = SimpleNamespace(needs_input_grad=(True, False, False, True, True), single_backward=True)
    RelpspStackNumba.forward(ctx, t, (1.0, 1.0), "auto", *weights)
    grad_t, _, _, *grad_ws = RelpspStackNumba.backward(ctx, grad_out)
    scan = ctx.scan
    assert all(
        entry is None
        for state in (scan.t_in, scan.anchor, scan.inv_slope, scan.n_causal, scan.order, scan.times)
        for entry in state
    )
    ws = [w.clone().requires_grad_() for w in weights]
    x = t.clone().requires_grad_()
    out = F.relpsp_linear_stack(x, ws, 1.0, backend="numba")
    for _ in range(2):  # the graph keeps its state: a second pass gives the same gradients
        grads = torch.autograd.grad(out, (x, *ws), grad_out, retain_graph=True)
        torch.testing.assert_close(grads[0], grad_t, rtol=0, atol=0)
        for g, g_fused in zip(grads[1:], grad_ws):
            torch.testing.assert_close(g, g_fused, rtol=0, atol=0)
