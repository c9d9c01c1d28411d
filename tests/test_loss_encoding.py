"""Loss (eq. 13), first-spike decision and latency coding."""

from __future__ import annotations

import math

import pytest
import torch

from stdbp import functional as F
from stdbp import latency_encode

INF = float("inf")


def test_loss_is_eq_13_at_tau_1() -> None:
    t = torch.tensor([[0.3, 1.2, 0.7]])
    expected = -math.log(math.exp(-1.2) / sum(math.exp(-x) for x in (0.3, 1.2, 0.7)))
    assert F.first_spike_cross_entropy(t, torch.tensor([1]), tau=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_tau_scales_time() -> None:
    t = torch.tensor([[0.3, 1.2, 0.7]])
    a = F.first_spike_cross_entropy(t, torch.tensor([0]), tau=0.05)
    b = F.first_spike_cross_entropy(t / 0.05, torch.tensor([0]), tau=1.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_reductions() -> None:
    t = torch.tensor([[0.3, 1.2], [0.9, 0.1]])
    labels = torch.tensor([0, 0])
    none = F.first_spike_cross_entropy(t, labels, reduction="none")
    assert none.shape == (2,)
    assert F.first_spike_cross_entropy(t, labels, reduction="sum").item() == pytest.approx(none.sum().item())
    assert F.first_spike_cross_entropy(t, labels).item() == pytest.approx(none.mean().item())


def test_silent_target_is_finite_and_pushed_earlier() -> None:
    t = torch.tensor([[INF, 0.4, 0.6], [INF, INF, INF]], requires_grad=True)
    loss = F.first_spike_cross_entropy(t, torch.tensor([0, 2]), tau=0.05)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(t.grad).all()
    assert t.grad[0, 0] > 0  # dL/dt > 0 for the silent target: descent makes it fire earlier
    assert t.grad[1, 2] > 0 and (t.grad[1, :2] < 0).all()  # all silent: target earlier, others later
    # a silent non-target sits 5 tau after the latest spike: a small push later (dL/dt < 0)
    t2 = torch.tensor([[0.2, INF]], requires_grad=True)
    F.first_spike_cross_entropy(t2, torch.tensor([0]), tau=0.05).backward()
    assert -0.2 < t2.grad[0, 1] < 0


def test_explicit_silent_time() -> None:
    t = torch.tensor([[0.2, INF]])
    a = F.first_spike_cross_entropy(t, torch.tensor([0]), tau=1.0, silent_time=3.0)
    b = F.first_spike_cross_entropy(torch.tensor([[0.2, 3.0]]), torch.tensor([0]), tau=1.0)
    assert a.item() == pytest.approx(b.item())


def test_loss_bad_arguments() -> None:
    with pytest.raises(ValueError, match="tau"):
        F.first_spike_cross_entropy(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), tau=0)
    with pytest.raises(ValueError, match="expected"):
        F.first_spike_cross_entropy(torch.zeros(2, 2), torch.zeros(3, dtype=torch.long))


def test_decision_first_spike_ties_and_silence() -> None:
    t = torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.3, 0.1], [0.4, 0.4, INF], [INF, INF, INF]])
    assert F.first_spike_decision(t).tolist() == [1, 2, 0, -1]


def test_latency_encode() -> None:
    x = torch.tensor([[0.0, 0.25, 1.0]])
    t = latency_encode(x, t_max=2.0)
    assert t.tolist() == [[INF, 1.5, 0.0]]
    assert latency_encode(x, t_max=2.0, zero_spikes=True).tolist() == [[2.0, 1.5, 0.0]]
    u8 = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(latency_encode(u8)[1:], torch.tensor([0.8, 0.0]))
    assert torch.isinf(latency_encode(u8)[0])
    brighter_earlier = latency_encode(torch.linspace(0.01, 1, 50))
    assert (brighter_earlier.diff() < 0).all()


@pytest.mark.parametrize("bad", [torch.tensor([float("nan")]), torch.tensor([-0.1]), torch.tensor([1.5])])
def test_latency_encode_rejects_bad_intensities(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="intensities"):
        latency_encode(bad)
