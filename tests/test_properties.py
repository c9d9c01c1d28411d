"""Property-based tests (hypothesis): both kernels against the float64 brute force, extreme values included.

Where a case is ill-conditioned (a crossing within rounding of an input time, or a weight sum
near zero), the comparison allows the error that the formula's condition number implies;
gradients must be finite in every case.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stdbp import functional as F

from .oracles import relpsp_brute_force, relpsp_conv2d_brute_force

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

time_values = st.one_of(
    st.floats(0.0, 5.0),
    st.sampled_from([0.0, 1e-30, 1e-12, 0.5, 1.0, float("inf")]),  # exact ties, near zero, silence
    st.floats(1e5, 1e7),  # huge times
    st.just(float("inf")),
)
weight_values = st.one_of(st.floats(-2.0, 2.0), st.sampled_from([0.0, 1e-9, -1e-9, 1.0, -1.0]), st.floats(-1e-6, 1e-6))


def _potential(t: float, times: np.ndarray, w: np.ndarray) -> float:
    finite = np.isfinite(times)
    return float(np.sum(w[finite] * np.maximum(0.0, t - times[finite])))


def _scale(t: float, times: np.ndarray, w: np.ndarray, threshold: float) -> float:
    finite = np.isfinite(times)
    return threshold + float(np.sum(np.abs(w[finite]) * (np.abs(t) + times[finite])))


def _check_neuron(t_kernel: float, t_brute: float, times: np.ndarray, w: np.ndarray, threshold: float) -> None:
    """The kernel's time is the brute force's, up to what rounding allows at this case's conditioning."""
    if np.isfinite(t_kernel) and np.isfinite(t_brute):
        if abs(t_kernel - t_brute) <= 1e-9 * max(abs(t_brute), 1e-300):
            return
        # both are crossings; accept if each is a crossing to within rounding (e.g. several near-equal roots)
        for t in (t_kernel, t_brute):
            assert abs(_potential(t, times, w) - threshold) <= 1e-9 * _scale(t, times, w, threshold), (
                t_kernel,
                t_brute,
            )
        return
    if np.isfinite(t_kernel) != np.isfinite(t_brute):
        # a knife edge: the potential touches the threshold within rounding where one of them fires
        t = t_kernel if np.isfinite(t_kernel) else t_brute
        assert abs(_potential(t, times, w) - threshold) <= 1e-7 * _scale(t, times, w, threshold), (t_kernel, t_brute)


@st.composite
def linear_cases(draw):
    batch = draw(st.integers(1, 3))
    n_in = draw(st.integers(1, 10))
    n_out = draw(st.integers(1, 5))
    t = np.array(draw(st.lists(time_values, min_size=batch * n_in, max_size=batch * n_in)), dtype=np.float64).reshape(
        batch, n_in
    )
    w = np.array(draw(st.lists(weight_values, min_size=n_out * n_in, max_size=n_out * n_in)), dtype=np.float64).reshape(
        n_out, n_in
    )
    threshold = draw(st.sampled_from([1e-3, 0.5, 1.0, 7.0]))
    return t, w, threshold


@settings(max_examples=1500, **SETTINGS)
@given(linear_cases(), st.sampled_from(["numba", "reference"]))
def test_relpsp_linear_against_brute_force(case, backend: str) -> None:
    t, w, threshold = case
    ti = torch.tensor(t, requires_grad=True)
    wi = torch.tensor(w, requires_grad=True)
    out = F.relpsp_linear(ti, wi, threshold, backend=backend)
    expected = relpsp_brute_force(t, w, threshold)
    got = out.detach().numpy()
    for b in range(t.shape[0]):
        for j in range(w.shape[0]):
            _check_neuron(got[b, j], expected[b, j], t[b], w[j], threshold)
    labels = torch.zeros(t.shape[0], dtype=torch.long)
    loss = F.first_spike_cross_entropy(out, labels, tau=0.05) if w.shape[0] > 1 else out[torch.isfinite(out)].sum()
    if loss.requires_grad:
        loss.backward()
        assert torch.isfinite(ti.grad).all() and torch.isfinite(wi.grad).all()


@settings(max_examples=300, **SETTINGS)
@given(
    st.integers(1, 2),
    st.integers(1, 2),
    st.integers(3, 5),
    st.integers(1, 3),
    st.sampled_from([1, 2]),
    st.sampled_from([0, 1]),
    st.data(),
)
def test_relpsp_conv2d_against_brute_force(batch, c_in, size, c_out, stride, padding, data) -> None:
    k = data.draw(st.integers(1, min(3, size)))
    n_t, n_w = batch * c_in * size * size, c_out * c_in * k * k
    t = np.array(data.draw(st.lists(time_values, min_size=n_t, max_size=n_t))).reshape(batch, c_in, size, size)
    w = np.array(data.draw(st.lists(weight_values, min_size=n_w, max_size=n_w))).reshape(c_out, c_in, k, k)
    backend = data.draw(st.sampled_from(["numba", "reference"]))
    ti = torch.tensor(t, requires_grad=True)
    wi = torch.tensor(w, requires_grad=True)
    out = F.relpsp_conv2d(ti, wi, 1.0, stride=stride, padding=padding, backend=backend)
    expected = relpsp_conv2d_brute_force(t, w, 1.0, (stride, stride), (padding, padding))
    got = out.detach().numpy()
    assert got.shape == expected.shape
    padded = np.pad(t, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=np.inf)
    for b, co, oy, ox in np.ndindex(*got.shape):
        field = padded[b, :, oy * stride : oy * stride + k, ox * stride : ox * stride + k].ravel()
        _check_neuron(got[b, co, oy, ox], expected[b, co, oy, ox], field, w[co].ravel(), 1.0)
    out[torch.isfinite(out)].sum().backward()
    assert torch.isfinite(ti.grad).all() and torch.isfinite(wi.grad).all()


@settings(max_examples=200, **SETTINGS)
@given(linear_cases())
def test_float32_kernel_gradients_are_finite(case) -> None:
    t, w, threshold = case
    ti = torch.tensor(t, dtype=torch.float32, requires_grad=True)
    wi = torch.tensor(w, dtype=torch.float32, requires_grad=True)
    out = F.relpsp_linear(ti, wi, threshold)
    F.first_spike_cross_entropy(out, torch.zeros(t.shape[0], dtype=torch.long), tau=0.05).backward()
    assert torch.isfinite(ti.grad).all() and torch.isfinite(wi.grad).all()
