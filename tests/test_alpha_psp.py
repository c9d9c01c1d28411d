"""The alpha-PSP neuron (Section 2) against independent float64 references, and `compare-psp` end to end."""

from __future__ import annotations

import argparse
import functools
import json
import math

import numpy as np
import pytest
import torch

import stdbp.paper.psp_comparison as compare_module
from stdbp.alpha_psp import alpha_psp_linear, membrane_potential, membrane_slope
from stdbp.errors import StdbpError
from stdbp.functional import relpsp_linear
from stdbp.nn import AlphaSpikingLinear

INF = math.inf


def _eps(x: np.ndarray, tau: float) -> np.ndarray:
    """Eq. 2 in numpy: (x/tau) exp(1 - x/tau) for x > 0, else 0."""
    xs = np.where(x > 0, x, 0.0)
    return np.where(x > 0, xs / tau * np.exp(1.0 - xs / tau), 0.0)


def _v(t: np.ndarray, t_in: np.ndarray, w: np.ndarray, tau: float) -> np.ndarray:
    """V(t) = sum_i w_i eps(t - t_i) of one neuron, summed term by term (inputs at +inf never arrive)."""
    finite = np.isfinite(t_in)
    return (w[finite] * _eps(np.subtract.outer(t, t_in[finite]), tau)).sum(axis=-1)


def brute_force_crossing(
    t_in: np.ndarray, w: np.ndarray, threshold: float, tau: float, points: int = 200_001
) -> tuple[float, float]:
    """First grid time with V >= threshold, refined by bisection on V; also the largest V on the grid."""
    finite = t_in[np.isfinite(t_in)]
    end = (finite.max() if finite.size else 0.0) + 12.0 * tau
    grid = np.linspace(0.0, end, points)
    v = _v(grid, t_in, w, tau)
    above = np.nonzero(v >= threshold)[0]
    if above.size == 0:
        return INF, float(v.max())
    hi = grid[above[0]]
    lo = grid[max(above[0] - 1, 0)]
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _v(np.array([mid]), t_in, w, tau)[0] >= threshold:
            hi = mid
        else:
            lo = mid
    return float(hi), float(v.max())


def _random_layer(seed: int, batch: int = 6, n_in: int = 7, n_out: int = 5, offset: float = 0.0, span: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    t_in = offset + span * torch.rand(batch, n_in, generator=g, dtype=torch.float64)
    t_in[torch.rand(batch, n_in, generator=g) < 0.2] = INF
    t_in[0, :3] = t_in[0, 3]  # a group of equal times
    weight = 0.25 + 0.6 * torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    return t_in, weight


@pytest.mark.parametrize(
    "seed, tau, offset", [(0, 1.0, 0.0), (1, 0.5, 0.0), (2, 2.0, 0.0), (3, 0.3, 0.0), (4, 0.1, 100.0)]
)
def test_crossing_matches_dense_grid(seed: int, tau: float, offset: float) -> None:
    # offset 100 with tau 0.1 puts exp(t_i / tau) = e^1000 out of float64 range: the kernel must not care.
    t_in, weight = _random_layer(seed, offset=offset)
    t_out = alpha_psp_linear(t_in, weight, threshold=1.0, tau=tau).numpy()
    fired = 0
    for b in range(t_in.shape[0]):
        for j in range(weight.shape[0]):
            expected, v_max = brute_force_crossing(t_in[b].numpy(), weight[j].numpy(), 1.0, tau)
            got = t_out[b, j]
            if math.isinf(expected) != math.isinf(got):  # only a touch of threshold between grid points
                assert abs(v_max - 1.0) < 1e-4, (b, j, got, expected, v_max)
                continue
            if math.isfinite(got):
                fired += 1
                # The grid brackets the first crossing; bisection then pins it to float64 accuracy.
                assert got == pytest.approx(expected, abs=1e-9 * (1 + abs(expected)))
    assert fired >= 5


def test_silent_inputs_and_no_inputs() -> None:
    t_in = torch.tensor([[INF, INF], [0.0, INF]], dtype=torch.float64)
    weight = torch.tensor([[2.0, 2.0]], dtype=torch.float64)
    t_out = alpha_psp_linear(t_in, weight)
    assert math.isinf(t_out[0, 0])
    expected, _ = brute_force_crossing(t_in[1].numpy(), weight[0].numpy(), 1.0, 1.0)
    assert float(t_out[1, 0]) == pytest.approx(expected, abs=1e-9)


def _safe_neurons(t_in: torch.Tensor, weight: torch.Tensor, t_out: torch.Tensor, tau: float) -> torch.Tensor:
    """Fired neurons with V'(t_j) >= 0.2 and no input within 1e-3 of t_j (the causal set is stable)."""
    slope = membrane_slope(t_out, t_in, weight, "alpha", tau)
    gap = (t_out.unsqueeze(2) - t_in.unsqueeze(1)).abs().amin(dim=2)
    return torch.isfinite(t_out) & (slope >= 0.2) & (gap > 1e-3)


@pytest.mark.parametrize("seed, tau", [(10, 1.0), (11, 0.5)])
def test_spikeprop_gradient_matches_finite_differences(seed: int, tau: float) -> None:
    t_in, weight = _random_layer(seed, batch=4, n_in=5, n_out=4)
    t_out = alpha_psp_linear(t_in, weight, 1.0, tau)
    safe = _safe_neurons(t_in, weight, t_out, tau)
    assert int(safe.sum()) >= 4
    coef = torch.randn(t_out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * safe

    def loss(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = alpha_psp_linear(t, w, 1.0, tau)
        return (torch.where(safe, out, torch.zeros_like(out)) * coef).sum()

    t_var = t_in.clone().requires_grad_()
    w_var = weight.clone().requires_grad_()
    loss(t_var, w_var).backward()
    h = 1e-6
    for name, base, grad in (("weight", weight, w_var.grad), ("t_in", t_in, t_var.grad)):
        numeric = torch.zeros_like(base)
        for index in zip(*torch.nonzero(torch.isfinite(base), as_tuple=True)):
            plus, minus = base.clone(), base.clone()
            plus[index] += h
            minus[index] -= h
            f_plus = loss(t_in, plus) if name == "weight" else loss(plus, weight)
            f_minus = loss(t_in, minus) if name == "weight" else loss(minus, weight)
            numeric[index] = (f_plus - f_minus) / (2 * h)
        torch.testing.assert_close(
            torch.where(torch.isfinite(base), grad, numeric), numeric, rtol=1e-5, atol=1e-7, msg=name
        )
    assert bool((t_var.grad[torch.isinf(t_in)] == 0).all())  # silent inputs get no gradient


def test_gradient_explodes_unclipped_and_does_not_crash() -> None:
    # One input at 0 with weight w: V peaks at t = tau with height w, so w -> threshold means V'(t_j) -> 0.
    t_in = torch.zeros(1, 1, dtype=torch.float64)
    grads = []
    for delta in (1e-4, 1e-6, 1e-8):
        w = torch.tensor([[1.0 + delta]], dtype=torch.float64, requires_grad=True)
        alpha_psp_linear(t_in, w).sum().backward()
        grads.append(abs(float(w.grad)))
    # Near the peak t_j - tau ~ sqrt(2 delta), so dt/dw ~ 1/sqrt(delta): 10x per factor 100.
    assert grads[1] / grads[0] == pytest.approx(10, rel=0.02)
    assert grads[2] / grads[1] == pytest.approx(10, rel=0.02)
    assert grads[2] > 1e3
    w = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)
    t_out = alpha_psp_linear(t_in, w)  # touches threshold exactly at its peak: float64 leaves V' ~ 1e-8
    assert float(t_out.detach()) == pytest.approx(1.0, abs=1e-6)
    t_out.sum().backward()
    assert abs(float(w.grad)) > 1e6
    # Non-finite gradients flow through without an exception (the trainer counts them).
    for bad in (math.nan, math.inf):
        w = torch.tensor([[1.5, 0.2]], dtype=torch.float64, requires_grad=True)
        t = torch.tensor([[0.0, 0.1]], dtype=torch.float64, requires_grad=True)
        (alpha_psp_linear(t, w) * bad).sum().backward()
        assert not bool(torch.isfinite(w.grad).all()) and not bool(torch.isfinite(t.grad).all())


def test_smaller_weights_fire_later_or_die_with_alpha_but_only_later_with_relpsp() -> None:
    t_in = torch.tensor([[0.1, 0.3, 0.6]], dtype=torch.float64)  # three input spikes, as in Figs. 2c and 3c
    w = torch.tensor([[0.6, 0.5, 0.5]], dtype=torch.float64)
    scales = torch.linspace(1.0, 0.1, 46, dtype=torch.float64)
    alpha = torch.stack([alpha_psp_linear(t_in, s * w)[0, 0] for s in scales])
    relpsp = torch.stack([relpsp_linear(t_in, s * w, 1.0)[0, 0] for s in scales])
    assert bool(torch.isfinite(relpsp).all())  # ReL-PSP: never dead with a positive weight sum
    assert bool((relpsp.diff() > 0).all())  # ... it only fires later
    assert math.isfinite(alpha[0]) and math.isinf(alpha[-1])
    fired = torch.isfinite(alpha)
    n_fired = int(fired.sum())
    assert bool(fired[:n_fired].all())  # once dead, smaller weights stay dead
    assert bool((alpha[:n_fired].diff() > 0).all())
    # Death is exactly where the peak of V falls below threshold.
    peak = membrane_potential(torch.linspace(0, 6, 60_001, dtype=torch.float64), t_in, w, "alpha")[0, :, 0].max()
    assert float(scales[n_fired - 1]) * float(peak) >= 1.0 > float(scales[n_fired]) * float(peak)


def test_membrane_potential_closed_forms() -> None:
    t = torch.linspace(0, 5, 501, dtype=torch.float64)
    t_in = torch.tensor([[0.5, 1.5, INF]], dtype=torch.float64)
    w = torch.tensor([[0.7, -0.3, 9.0]], dtype=torch.float64)
    relu = lambda x: torch.clamp(x, min=0)  # noqa: E731
    expected_rel = 0.7 * relu(t - 0.5) - 0.3 * relu(t - 1.5)
    tau = 0.8
    alpha = lambda x: torch.where(x > 0, x / tau * torch.exp(1 - x / tau), torch.zeros_like(x))  # noqa: E731
    expected_alpha = 0.7 * alpha(t - 0.5) - 0.3 * alpha(t - 1.5)
    torch.testing.assert_close(membrane_potential(t, t_in, w, "relpsp")[0, :, 0], expected_rel)
    torch.testing.assert_close(membrane_potential(t, t_in, w, "alpha", tau)[0, :, 0], expected_alpha)
    # One PSP of weight w peaks at t_i + tau with height w (eq. 2).
    v = membrane_potential(torch.tensor([0.5 + tau], dtype=torch.float64), t_in[:, :1], w[:, :1], "alpha", tau)
    assert float(v) == pytest.approx(0.7)
    # membrane_slope is dV/dt: compare with central differences of membrane_potential.
    times = torch.tensor([[1.0, 2.3, INF]], dtype=torch.float64).t()  # three "neurons" with the same weights
    for kernel in ("relpsp", "alpha"):
        slope = membrane_slope(times.t(), t_in, w.expand(3, 3), kernel, tau)[0]
        for k in range(2):
            tk = float(times[k])
            fd = (
                membrane_potential(torch.tensor([tk + 1e-6], dtype=torch.float64), t_in, w, kernel, tau)
                - membrane_potential(torch.tensor([tk - 1e-6], dtype=torch.float64), t_in, w, kernel, tau)
            ) / 2e-6
            assert float(slope[k]) == pytest.approx(float(fd), rel=1e-6)
        assert math.isnan(slope[2])


def test_spike_times_are_where_the_potential_reaches_threshold() -> None:
    t_in, weight = _random_layer(5)
    t_out = alpha_psp_linear(t_in, weight)
    for b, j in zip(*torch.nonzero(torch.isfinite(t_out), as_tuple=True)):
        v = membrane_potential(t_out[b, j].reshape(1), t_in[b : b + 1], weight[j : j + 1], "alpha")
        assert float(v) == pytest.approx(1.0, abs=1e-9)


def test_layer_module_and_validation() -> None:
    torch.manual_seed(0)
    layer = AlphaSpikingLinear(784, 50, tau=0.5)
    weight = layer.weight.detach()
    assert float(weight.mean()) == pytest.approx(5.0 / 784, abs=5e-4)
    assert float(weight.std()) == pytest.approx(1.0 / 28, rel=0.05)
    t_in = torch.rand(3, 784)
    out = layer(t_in)
    assert out.shape == (3, 50) and out.dtype == torch.float32
    with pytest.raises(ValueError):
        alpha_psp_linear(torch.rand(2, 3, dtype=torch.float64), torch.rand(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError):
        alpha_psp_linear(-torch.rand(2, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError):
        alpha_psp_linear(torch.rand(2, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64), tau=0.0)
    with pytest.raises(ValueError):
        alpha_psp_linear(torch.rand(2, 3), torch.rand(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError):
        membrane_potential(torch.linspace(0, 1, 3), torch.rand(2, 3), torch.rand(4, 3), kernel="exp")
    for arch in ("784-10", "28x28-4C5-10"):  # no hidden layer; not fully connected
        with pytest.raises(StdbpError):
            compare_module.compare_psp(arch=arch, epochs=1, out_dir="unused")


def test_relpsp_without_silent_gradient() -> None:
    # relpsp_silent_gradient=False: a silent ReL-PSP neuron passes no gradient, as SpikeProp's.
    t_in = torch.tensor([[0.0, 0.5]], dtype=torch.float64)
    grads = {}
    for block in (False, True):
        weight = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64, requires_grad=True)
        t_out = relpsp_linear(t_in, weight, 1.0)
        assert math.isfinite(float(t_out[0, 0].detach())) and math.isinf(float(t_out[0, 1].detach()))
        if block:
            t_out = compare_module._block_silent_gradient(None, None, t_out)
        t_out.backward(torch.ones_like(t_out))
        grads[block] = weight.grad
    assert bool((grads[False][1] != 0).any())  # the kernel's surrogate reaches the silent neuron
    assert bool((grads[True][1] == 0).all()) and torch.equal(grads[True][0], grads[False][0])


@pytest.mark.slow
def test_compare_psp_end_to_end(tmp_path, monkeypatch, capsys) -> None:
    small = functools.partial(compare_module.compare_psp, test_limit=200, heldout=100)
    monkeypatch.setattr(compare_module, "compare_psp", small)
    loss_fn, calls = compare_module.F.first_spike_cross_entropy, []

    def every_other_loss_nan(*args, **kwargs):  # every other training step is non-finite
        calls.append(1)
        return loss_fn(*args, **kwargs) * (math.nan if len(calls) % 2 else 1.0)

    monkeypatch.setattr(compare_module.F, "first_spike_cross_entropy", every_other_loss_nan)
    parser = argparse.ArgumentParser(prog="stdbp")
    compare_module.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "compare-psp",
            "--arch",
            "784-40-10",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--train-limit",
            "256",
            "--seed",
            "3",
            "--out",
            str(tmp_path),
            "--json",
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    final = json.loads(capsys.readouterr().out)
    assert set(final["final"]) == {"relpsp", "alpha"}
    result = json.loads((tmp_path / "compare_psp.json").read_text())  # strict JSON: no NaN/Infinity
    assert result["config"]["arch"] == "784-40-10" and result["config"]["train_limit"] == 256
    for kernel in ("relpsp", "alpha"):
        run = result["kernels"][kernel]
        assert [row["epoch"] for row in run["history"]] == [0, 1]
        last = run["history"][-1]
        for key in (
            "test_accuracy",
            "dead_share",
            "silent_fraction",
            "dtdv",
            "dtdv_effective",
            "grad_norm",
            "nonfinite_steps",
            "train_loss",
        ):
            assert key in last, key
        assert set(last["dtdv"]) >= {"p50", "p90", "p99", "max", "n", "n_nonfinite"}
        assert 0.0 <= last["dead_share"] <= 1.0 and 0.0 <= last["test_accuracy"] <= 1.0
        assert (
            len(run["grad_norms"]) == len(run["train_losses"]) == len(run["train_undecided"]) == 4
        )  # ceil(256 / 64) steps
        assert 0.0 <= last["output_dead_share"] <= 1.0
        assert last["nonfinite_steps"] == 2 and run["grad_norms"].count(None) == 2  # counted, and skipped
    traces = result["traces"]
    assert traces["alpha"]["t_fire_large"] is not None and len(traces["t"]) == len(traces["alpha"]["small"])
    for path in result["figures"]:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "compare_psp_traces.png",
        "compare_psp_curves.png",
        "compare_psp_distributions.png",
    }
