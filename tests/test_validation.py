"""Every layer function rejects input times that are NaN or negative, on every CPU backend,
wherever the bad entry is (the numba kernels count them as they read the input)."""

from __future__ import annotations

import pytest
import torch

from stdbp import functional as F

CASES = {
    "relpsp_linear": lambda t, backend: F.relpsp_linear(t.flatten(1), torch.rand(3, 50), backend=backend),
    "relpsp_linear_stack": lambda t, backend: F.relpsp_linear_stack(
        t.flatten(1), [torch.rand(3, 50), torch.rand(2, 3)], backend=backend
    ),
    "relpsp_conv2d": lambda t, backend: F.relpsp_conv2d(t, torch.rand(4, 2, 3, 3), backend=backend),
    "earliest_spike_pool2d": lambda t, backend: F.earliest_spike_pool2d(
        t, 2, backend=backend
    ),  # 5x5: last row and column in no window
    "relpsp_conv2d_pool": lambda t, backend: F.relpsp_conv2d_pool(
        t, torch.rand(4, 2, 2, 2), pool_size=2, backend=backend
    ),
}


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (-0.5, "negative"), (float("-inf"), "negative")])
@pytest.mark.parametrize("position", [0, 37, -1])
@pytest.mark.parametrize("function", sorted(CASES))
def test_bad_times_raise(function: str, backend: str, bad: float, word: str, position: int) -> None:
    t = torch.rand(2, 2, 5, 5)
    t[0, 0, 0, 1] = float("inf")  # silence is a valid time
    t.view(-1)[position] = bad
    with pytest.raises(ValueError, match=word):
        CASES[function](t, backend)


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("function", sorted(CASES))
def test_valid_times_pass(function: str, backend: str) -> None:
    t = torch.rand(2, 2, 5, 5)
    t[t > 0.7] = float("inf")
    t[0, 0, 0, 0] = -0.0  # the same time as 0.0
    assert torch.isfinite(CASES[function](t, backend)).any()
