"""relpsp_linear: the numba scan against the reference, a float64 brute force and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stdbp import functional as F
from stdbp.kernels import SILENT_HORIZON, numba_linear, numba_linear_backward, relpsp_linear_reference, sort_keys

from .oracles import random_case, relpsp_brute_force

BACKENDS = ["numba", "reference"]


def _assert_times_close(actual: torch.Tensor, expected: np.ndarray, rtol: float) -> None:
    actual = actual.detach().double().numpy()
    assert np.array_equal(np.isinf(actual), np.isinf(expected)), "different neurons are silent"
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(8))
def test_forward_matches_brute_force_float64(backend: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t, w = random_case(rng, batch=7, n_in=30, n_out=9)
    threshold = float(rng.uniform(0.3, 2.0))
    out = F.relpsp_linear(t, w, threshold, backend=backend)
    expected = relpsp_brute_force(t.numpy(), w.numpy(), threshold)
    assert np.isinf(expected).any() and np.isfinite(expected).any()  # the case has both kinds
    _assert_times_close(out, expected, rtol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_forward_float32_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    t, w = random_case(rng, batch=8, n_in=40, n_out=12, dtype=torch.float32, ties=True)
    out = F.relpsp_linear(t, w, 1.0, backend="numba")
    assert out.dtype == torch.float32
    expected = relpsp_brute_force(t.numpy(), w.numpy(), 1.0)
    # float32 may flip a neuron whose crossing lands within rounding of an input time; compare the rest
    both = np.isfinite(expected) & np.isfinite(out.numpy())
    assert both.mean() > 0.5
    np.testing.assert_allclose(out.numpy()[both], expected[both], rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(5))
def test_numba_matches_reference_forward_and_gradients(dtype: torch.dtype, seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    t, w = random_case(rng, batch=9, n_in=50, n_out=20, dtype=dtype)
    # silent outputs get a finite upstream gradient too, exercising the surrogate
    grad_out = torch.tensor(rng.normal(size=(9, 20)), dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    _, gt1, gw1 = _assert_backends_agree(t, w, 0.8, grad_out, tol)
    for g in (gt1, gw1):
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("mode", ["prefix", "rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(3))
def test_both_weight_gradient_kernels_match_reference(mode: str, dtype: torch.dtype, seed: int) -> None:
    """Eq. 14 summed over causal prefixes and over all pairs (``relpsp_linear_backward_weight``,
    ``relpsp_linear_backward_weight_rows``): the reference's gradients, with ties, silent inputs,
    a silent sample and silent neurons, and more than eight rows with a remainder."""
    rng = np.random.default_rng(300 + seed)
    t, w = random_case(rng, batch=7, n_in=43, n_out=19, dtype=dtype)
    grad_out = torch.tensor(rng.normal(size=(7, 19)), dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    out, _, gw = _assert_backends_agree(t, w, 0.8, grad_out, tol, backward=mode)
    assert torch.isinf(out).any() and torch.isfinite(out).any() and gw.abs().max() > 0


def _assert_backends_agree(
    t: torch.Tensor, w: torch.Tensor, threshold: float, grad_out: torch.Tensor, tol: dict, backward: str = "auto"
) -> tuple[torch.Tensor, ...]:
    """Output times and both gradients of the numba kernel (summing eq. 14 by ``backward``)
    against the reference; returns numba's."""
    results = []
    for backend in BACKENDS:
        ti, wi = t.clone().requires_grad_(), w.clone().requires_grad_()
        out = F.relpsp_linear(ti, wi, threshold, backend=backend, backward=backward)
        out.backward(grad_out)
        results.append((out.detach(), ti.grad, wi.grad))
    (o1, gt1, gw1), (o2, gt2, gw2) = results
    assert torch.equal(torch.isinf(o1), torch.isinf(o2))
    torch.testing.assert_close(o1[torch.isfinite(o1)], o2[torch.isfinite(o2)], **tol)
    torch.testing.assert_close(gw1, gw2, **tol)
    torch.testing.assert_close(gt1, gt2, **tol)
    return o1, gt1, gw1


def test_wide_layer_with_early_and_late_firing_matches_reference() -> None:
    """Two blocks of neurons, inputs in groups of four plus a remainder, ties, and a sample in
    which every neuron fires early (the scan stops early) beside samples where some stay silent."""
    rng = np.random.default_rng(11)
    t, w = random_case(rng, batch=4, n_in=301, n_out=1100, weight_mean=0.05)
    t[0, :40], t[0, 40:] = 0.0, 1.0 + torch.rand(261, dtype=t.dtype)  # 40 inputs at 0: all fire before 1
    t[1:, :40] = float("inf")
    w[:, :40] = w[:, :40].abs() + 0.1
    assert numba_linear.scan_tasks(1100, 1)[0] == 2
    grad_out = torch.tensor(rng.normal(size=(4, 1100)))
    o1, _, _ = _assert_backends_agree(t, w, 1.0, grad_out, dict(rtol=1e-10, atol=1e-10))
    assert torch.isfinite(o1[0]).all() and (o1[0] < 1.0).all()
    assert torch.isinf(o1[1:3]).any() and torch.isfinite(o1[1:3]).any()


@pytest.mark.parametrize("n_out", [1, 7, 8, 9, 1024, 1025, 2049, 5000])
def test_scan_blocks_cover_the_layer(n_out: int) -> None:
    width = numba_linear.block_width(n_out)
    n_blocks, _ = numba_linear.scan_tasks(n_out, 2)
    assert width % 8 == 0 and width <= max(8, numba_linear.BLOCK)
    assert (n_blocks - 1) * width < n_out <= n_blocks * width


def _gradcheck_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct, well-separated times so the causal sets do not change under perturbation."""
    rng = np.random.default_rng(seed)
    while True:
        t, w = random_case(rng, batch=3, n_in=10, n_out=4, ties=False, p_silent=0.2, weight_mean=0.4)
        t[-1, :3] = torch.tensor([0.1, 0.5, 0.9], dtype=t.dtype)  # no silent sample here
        out = relpsp_brute_force(t.numpy(), w.numpy(), 1.0)
        finite_in = t[torch.isfinite(t)].numpy()
        gaps = np.abs(out[np.isfinite(out)][:, None] - finite_in[None, :])
        if np.isfinite(out).all() and gaps.min() > 1e-3:
            return t, w


@pytest.mark.parametrize("backend", [*BACKENDS, "numba-rows"])
@pytest.mark.parametrize("seed", range(4))
def test_gradcheck(backend: str, seed: int) -> None:
    backward = "auto"
    if backend == "numba-rows":  # eq. 14 by numba_linear_backward.relpsp_linear_backward_weight_rows
        backend, backward = "numba", "rows"
    t, w = _gradcheck_case(seed)
    finite = torch.isfinite(t)

    def f(t_finite: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        full = torch.full_like(t, float("inf")).masked_scatter(finite, t_finite)
        return F.relpsp_linear(full, weight, 1.0, backend=backend, backward=backward)

    t_finite = t[finite].clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (t_finite, w.clone().requires_grad_()), eps=1e-6, atol=1e-6)


def test_gradients_match_eqs_14_15_by_hand() -> None:
    t = torch.tensor([[0.0, 0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.0, 2.0, 5.0]], dtype=torch.float64, requires_grad=True)
    out = F.relpsp_linear(t, w, 1.0)
    # V = (t - 0) + 2 (t - 0.5) crosses 1 at t = 2/3 < 3: causal set {0, 1}, sum w = 3
    assert out.item() == pytest.approx((1.0 + 0.0 + 1.0) / 3.0)
    out.backward()
    t_j = 2.0 / 3.0
    assert w.grad.tolist()[0] == pytest.approx([(0.0 - t_j) / 3, (0.5 - t_j) / 3, 0.0])
    assert t.grad.tolist()[0] == pytest.approx([1.0 / 3, 2.0 / 3, 0.0])


def test_ties_enter_together() -> None:
    # Two inputs at t=1: weights +3 and -3 cancel; alone, the +3 input would fire at 1 + 1/3.
    t = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([[3.0, -3.0, 0.5]], dtype=torch.float64)
    for backend in BACKENDS:
        assert F.relpsp_linear(t, w, 1.0, backend=backend).item() == pytest.approx(2.0)


def test_silent_neurons_and_samples() -> None:
    t = torch.tensor([[0.2, 0.4], [float("inf"), float("inf")]], dtype=torch.float64)
    w = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    out = F.relpsp_linear(t, w)
    assert torch.isinf(out[0, 0]) and torch.isfinite(out[0, 1])
    assert torch.isinf(out[1]).all()


def test_silent_target_gets_push_to_fire() -> None:
    """A silent output neuron's gradient raises its weights from earlier inputs more (the surrogate)."""
    t = torch.tensor([[0.1, 0.6]], dtype=torch.float64)
    for backend in BACKENDS:
        w = torch.tensor([[-0.5, -0.2]], dtype=torch.float64, requires_grad=True)
        out = F.relpsp_linear(t, w, 1.0, backend=backend)
        assert torch.isinf(out).all()
        out.backward(torch.tensor([[1.0]], dtype=torch.float64))  # dL/dt > 0: the loss wants it earlier
        t_ref = 0.6 + SILENT_HORIZON
        # negative gradients: descent raises both weights, the earlier input's more
        assert w.grad.tolist()[0] == pytest.approx([-(t_ref - 0.1), -(t_ref - 0.6)])


@pytest.mark.parametrize("mode", ["prefix", "rows"])
def test_no_nan_in_gradients_under_degenerate_inputs(mode: str) -> None:
    rng = np.random.default_rng(7)
    cases = [
        (torch.full((3, 5), float("inf"), dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)),
        (torch.zeros(3, 5, dtype=torch.float64), torch.zeros(4, 5, dtype=torch.float64)),  # zero weight sums
        (torch.zeros(3, 5, dtype=torch.float64), -torch.ones(4, 5, dtype=torch.float64)),  # negative sums
        (torch.tensor(rng.uniform(0, 1e6, (3, 5))), torch.tensor(rng.normal(0, 1e-6, (4, 5)))),
    ]
    for t, w in cases:
        for backend in BACKENDS:
            ti, wi = t.clone().requires_grad_(), w.clone().requires_grad_()
            out = F.relpsp_linear(ti, wi, 1.0, backend=backend, backward=mode)
            loss = F.first_spike_cross_entropy(out, torch.zeros(3, dtype=torch.long), tau=0.05)
            loss.backward()
            assert torch.isfinite(loss)
            assert torch.isfinite(ti.grad).all() and torch.isfinite(wi.grad).all()


def test_reference_function_is_the_reference() -> None:
    rng = np.random.default_rng(3)
    t, w = random_case(rng)
    torch.testing.assert_close(F.relpsp_linear(t, w, backend="reference"), relpsp_linear_reference(t, w, 1.0))


@pytest.mark.parametrize(
    "t, w, message",
    [
        (torch.tensor([[float("nan"), 0.0]]), torch.ones(2, 2), "NaN"),
        (torch.tensor([[-0.5, 0.0]]), torch.ones(2, 2), "negative"),
        (torch.zeros(2, 3), torch.ones(2, 2), "shape mismatch"),
        (torch.zeros(3), torch.ones(2, 3), "expects"),
        (torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.float64), "float32"),
    ],
)
def test_bad_input_raises_value_error(t: torch.Tensor, w: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        F.relpsp_linear(t, w)


def test_bad_threshold_and_backend() -> None:
    with pytest.raises(ValueError, match="threshold"):
        F.relpsp_linear(torch.zeros(1, 2), torch.ones(1, 2), threshold=0.0)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        F.relpsp_linear(torch.zeros(1, 2), torch.ones(1, 2), backend="cuda-magic")


@pytest.mark.parametrize("mode", ["prefix", "rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_overflowing_gradients_saturate_on_every_backend(mode: str, dtype: torch.dtype) -> None:
    """A neuron whose causal weight sum is tiny fires very late with a huge slope: eq. 14 overflows."""
    tiny = torch.finfo(dtype).tiny * 4
    t = torch.tensor([[0.0, 0.5]], dtype=dtype)
    for backend in BACKENDS:
        w = torch.tensor([[tiny, 0.0], [1.0, 1.0]], dtype=dtype, requires_grad=True)
        ti = t.clone().requires_grad_()
        out = F.relpsp_linear(ti, w, 1.0, backend=backend, backward=mode)
        assert torch.isfinite(out).all()
        out.backward(torch.tensor([[1e30, 1.0]], dtype=dtype))
        assert torch.isfinite(w.grad).all() and torch.isfinite(ti.grad).all()
        torch.testing.assert_close(
            w.grad[1], torch.tensor([-0.375, -0.125], dtype=dtype)
        )  # the other neuron is untouched
        if backend == "numba":  # eq. 14 is -inf here: saturated (the reference's autograd form gives inf - inf -> 0)
            assert (w.grad[0] == -torch.finfo(dtype).max).all()


def test_saturate_in_place() -> None:
    from stdbp.kernels import numba_linear

    for dtype in (np.float32, np.float64):
        big = np.finfo(dtype).max
        g = np.array([1.0, np.inf, -np.inf, np.nan, -2.0], dtype=dtype)
        assert numba_linear.saturate_(g) == 3
        np.testing.assert_array_equal(g, np.array([1.0, big, -big, 0.0, -2.0], dtype=dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("raw_keys", [False, True])
@pytest.mark.parametrize(
    "case", ["uniform", "heavy_tail", "bunched", "ties", "short", "reversed", "swapped_pairs", "silent"]
)
def test_spike_sort_is_a_stable_argsort(dtype: type, case: str, raw_keys: bool) -> None:
    """The kernels' sort (bucket pass, insertion sort, merge-sort fallback) against numpy's stable
    argsort. ``raw_keys``: the bit patterns of ``t`` itself, as the stack passes a hidden layer's
    times (``-0.0`` then has a negative key, which must sort as 0)."""
    from stdbp.kernels import numba_linear, sort_keys

    rng = np.random.default_rng(11)
    ordered = np.sort(rng.uniform(0, 1, 900))
    t = {
        "uniform": rng.uniform(0, 1, 900),
        "heavy_tail": rng.pareto(0.5, 900),  # most times small, a few enormous
        "bunched": np.concatenate([1 + rng.uniform(0, 1e-4, 899), [1e30]]),  # one bucket holds nearly all: fallback
        "ties": rng.integers(0, 5, 900) / 4.0,
        "short": rng.uniform(0, 1, 20),
        "reversed": ordered[::-1].copy(),
        "swapped_pairs": ordered.reshape(-1, 2)[:, ::-1].reshape(-1).copy(),  # every neighbour out of order
        "silent": np.full(900, np.inf),  # but for the two zeros below
    }[case].astype(dtype)
    t[rng.random(t.size) < 0.2] = np.inf
    t[:3] = [0.0, -0.0, np.inf]
    keys = t.view(sort_keys(t[:0]).dtype) if raw_keys else sort_keys(t)
    order, times = np.empty(t.size, np.int32), np.empty(t.size, dtype)
    count = numba_linear.sorted_spikes(t, keys, order, times)
    expected = np.argsort(np.where(t == 0, 0, t), kind="stable")[: np.isfinite(t).sum()]
    assert count == expected.size
    np.testing.assert_array_equal(order[:count], expected)
    np.testing.assert_array_equal(times[:count].view(keys.dtype), t[expected].view(keys.dtype))  # -0.0 stays -0.0


def test_all_finite_tells_saturated_from_non_finite() -> None:
    from stdbp.kernels import all_finite

    big = torch.full((4,), torch.finfo(torch.float32).max)  # saturated gradients: their float32 sum overflows
    assert all_finite([big, torch.ones(3)])
    assert not all_finite([torch.tensor([1.0, float("inf")])]) and not all_finite(
        [torch.ones(2), torch.tensor([float("nan")])]
    )
    assert all_finite([])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_does_not_depend_on_the_row_parts(dtype: type) -> None:
    """Each row is summed over the batch in order by one task: bitwise the same for any cut (both kernels)."""
    rng = np.random.default_rng(5)
    t, w = random_case(rng, batch=6, n_in=37, n_out=21)
    t_np, w_t = t.numpy().astype(dtype), np.ascontiguousarray(w.numpy().T.astype(dtype))
    batch, n_in = t_np.shape
    outs = [np.empty((batch, 21), dtype) for _ in range(4)]
    order, times, n_spikes = (
        np.empty((batch, n_in), np.int32),
        np.empty((batch, n_in), dtype),
        np.empty(batch, np.int32),
    )
    numba_linear.relpsp_linear_forward(t_np, sort_keys(t_np), w_t, dtype(1.0), *outs, order, times, n_spikes, 1)
    grad_scaled = rng.normal(size=(batch, 21)).astype(dtype) * outs[2]
    for kernel in ("prefix", "rows"):
        grads = []
        for n_parts in (1, 2, 3, 7, 37):
            grad = np.full_like(w_t, np.nan)  # every entry must be written
            if kernel == "prefix":
                numba_linear_backward.relpsp_linear_backward_weight(
                    times, grad_scaled, outs[1], outs[3], order, n_spikes, n_parts, grad
                )
            else:
                numba_linear_backward.relpsp_linear_backward_weight_rows(t_np, grad_scaled, outs[1], n_parts, grad)
            grads.append(grad)
        assert np.isfinite(grads[0]).all() and np.abs(grads[0]).max() > 0
        for grad in grads[1:]:
            assert np.array_equal(grad, grads[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_kernel_is_the_causal_prefix_sum(dtype: type) -> None:
    """``relpsp_linear_backward_weight_rows`` (every pair, ``min(t_i - t_j, 0)``) against eq. 14
    summed by hand over each neuron's causal set, in float64: silent inputs and neurons, ties, a
    sample without spikes, rows beyond a multiple of eight and neurons beyond one tile."""
    rng = np.random.default_rng(9)
    n_out = numba_linear_backward.ROW_TILE + 13
    t, w = random_case(rng, batch=5, n_in=21, n_out=n_out, weight_mean=0.15)
    t[4] = float("inf")
    t_np, w_t = t.numpy().astype(dtype), np.ascontiguousarray(w.numpy().T.astype(dtype))
    batch, n_in = t_np.shape
    outs = [np.empty((batch, n_out), dtype) for _ in range(4)]  # t_out, anchor, inv_slope, n_causal
    order, times, n_spikes = (
        np.empty((batch, n_in), np.int32),
        np.empty((batch, n_in), dtype),
        np.empty(batch, np.int32),
    )
    numba_linear.relpsp_linear_forward(t_np, sort_keys(t_np), w_t, dtype(1.0), *outs, order, times, n_spikes, 1)
    assert np.isinf(outs[0]).any() and np.isfinite(outs[0]).any()
    a = rng.normal(size=(batch, n_out)).astype(dtype)
    expected = np.zeros((n_in, n_out))
    for b in range(batch):
        for k in range(n_spikes[b]):
            causal = k < outs[3][b]
            expected[order[b, k]] += np.where(causal, a[b] * (float(times[b, k]) - outs[1][b].astype(np.float64)), 0.0)
    grad = np.full_like(w_t, np.nan)
    numba_linear_backward.relpsp_linear_backward_weight_rows(t_np, a, outs[1], 2, grad)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(grad, expected, rtol=0, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("n_out", [1, 10, numba_linear_backward.NARROW, numba_linear_backward.NARROW + 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_narrow_layers_input_gradient_matches_reference(n_out: int, dtype: torch.dtype) -> None:
    """Layers of at most ``NARROW`` neurons sum eq. 15 neuron by neuron over the inputs
    (``relpsp_linear_backward_input_narrow``), wider ones per input over the neurons: both give the
    reference's gradients, with ties, silent inputs, a silent sample and silent neurons."""
    rng = np.random.default_rng(40 + n_out)
    t, w = random_case(rng, batch=8, n_in=57, n_out=n_out, dtype=dtype, weight_mean=0.1)
    grad_out = torch.tensor(rng.normal(size=(8, n_out)), dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    out, gt, _ = _assert_backends_agree(t, w, 0.8, grad_out, tol)
    assert torch.isfinite(out).any() and gt.abs().max() > 0
    assert (gt[torch.isinf(t)] == 0).all()  # silent inputs get no gradient
