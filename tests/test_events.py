"""The event-driven simulator against the tensor forward: every neuron's spike time, decisions, SynOps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from stdbp import build
from stdbp.encoding import latency_encode
from stdbp.functional import first_spike_decision
from stdbp.nn.layers import EarliestSpikePool2d, SpikingConv2d, SpikingLinear
from stdbp.nn.network import SpikingNetwork
from stdbp.sim.events import event_network, simulate
from stdbp.training.data import load_dataset
from stdbp.training.loop import TrainConfig, train


@pytest.fixture(scope="module")
def mnist_test() -> torch.Tensor:
    """The first 300 MNIST test images, ``(300, 28, 28)`` uint8."""
    return load_dataset("mnist", splits=("test",))["test"].images[:300]


@pytest.fixture(scope="module")
def trained_fc(tmp_path_factory: pytest.TempPathFactory) -> SpikingNetwork:
    """A 784-30-10 network after one short epoch, in float64: some hidden neurons fire, some stay silent."""
    out = tmp_path_factory.mktemp("fc") / "r"
    train(TrainConfig(arch="784-30-10", epochs=1, train_limit=512), out, progress=False, echo=lambda s: None)
    from stdbp.checkpoint import load_model

    return load_model(out / "model.pt").double()


def assert_same_spikes(model: SpikingNetwork, t_in: torch.Tensor, rtol: float = 1e-9) -> None:
    """Run to the end, the simulator's spike times equal ``forward_all``'s for every neuron (float64)."""
    result = simulate(model, t_in)
    reference = [t.detach().numpy() for t in model.double().forward_all(t_in.double())]
    assert len(result.spike_times) == len(reference)
    for layer, (got, want) in enumerate(zip(result.spike_times, reference)):
        assert got.shape == want.shape, layer
        assert np.array_equal(np.isfinite(got), np.isfinite(want)), f"layer {layer}: different neurons fire"
        fired = np.isfinite(want)
        np.testing.assert_allclose(got[fired], want[fired], rtol=rtol, atol=0, err_msg=f"layer {layer}")
    np.testing.assert_array_equal(result.decision, first_spike_decision(torch.from_numpy(reference[-1])).numpy())
    first = np.where(np.isfinite(reference[-1]).any(axis=1), reference[-1].min(axis=1), math.inf)
    np.testing.assert_allclose(result.decision_time, first, rtol=rtol, atol=0)
    assert (result.synops_to_decision <= result.synops_total).all()


def test_trained_fully_connected_network(trained_fc: SpikingNetwork, mnist_test: torch.Tensor) -> None:
    t_in = latency_encode(mnist_test, dtype=torch.float64).reshape(len(mnist_test), -1)
    hidden = trained_fc.forward_all(t_in)[1]
    silent = int(torch.isinf(hidden).sum())
    assert 100 < silent < 0.9 * hidden.numel()  # firing and silent neurons
    assert_same_spikes(trained_fc, t_in)


def _mixed_conv(arch: str, seed: int) -> SpikingNetwork:
    """``arch`` with mixed-sign float64 weights, so that some neurons fire and some stay silent."""
    torch.manual_seed(seed)
    model = build(arch).double()
    with torch.no_grad():
        for layer in model.layers:
            if hasattr(layer, "weight"):
                fan_in = layer.weight[0].numel()
                layer.weight.normal_(2.0 / fan_in, 1.5 / math.sqrt(fan_in))
    return model


def test_small_conv_network_on_cropped_digits(mnist_test: torch.Tensor) -> None:
    """12x12 crops: many pixels at 255 give many inputs at exactly t = 0 (ties)."""
    model = _mixed_conv("12x12-4C3-P2-20-10", seed=0)
    t_in = latency_encode(mnist_test[:200, 8:20, 8:20], dtype=torch.float64).unsqueeze(1)
    conv = model.forward_all(t_in)[1]
    assert 0.05 < float(torch.isfinite(conv).double().mean()) < 0.95
    assert_same_spikes(model, t_in)


@pytest.mark.parametrize("arch", ["2x9x8-3C3-P2-6-4", "2x9x8-3C3p1-P2-2C3p2-6-4"])
def test_conv_network_on_random_times_with_ties(arch: str) -> None:
    model = _mixed_conv(arch, seed=1)
    g = torch.Generator().manual_seed(0)
    t_in = 2 * torch.rand(100, 2, 9, 8, generator=g, dtype=torch.float64)
    t_in = torch.where(torch.rand(t_in.shape, generator=g, dtype=torch.float64) < 0.3, (4 * t_in).round() / 4, t_in)
    t_in[torch.rand(t_in.shape, generator=g, dtype=torch.float64) < 0.3] = math.inf
    assert_same_spikes(model, t_in)


def test_stride_padding_and_overlapping_pooling() -> None:
    """Geometries ``build`` does not make: stride 2 with padding 1, 3x3 pooling windows at stride 2."""
    torch.manual_seed(2)
    model = build("1x11x11-3C3-7")
    conv = SpikingConv2d(1, 3, 3, stride=2, padding=1)  # 11x11 -> 6x6
    model.layers = nn.ModuleList([conv, EarliestSpikePool2d(3, stride=2), SpikingLinear(3 * 2 * 2, 7)])  # 6x6 -> 2x2
    model = model.double()
    t_in = 2 * torch.rand(50, 1, 11, 11, dtype=torch.float64)
    t_in[torch.rand(t_in.shape) < 0.4] = math.inf
    assert_same_spikes(model, t_in)


def test_the_papers_convolutional_network(mnist_test: torch.Tensor) -> None:
    model = build("28x28-6C5-P2-16C5-P2-1024-128-10")
    assert_same_spikes(model, latency_encode(mnist_test[:3], dtype=torch.float64).unsqueeze(1))


def _tiny_network() -> SpikingNetwork:
    """3-2-2 with hand-picked weights (see :func:`test_synops_hand_computed`)."""
    model = build("3-2-2").double()
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[2.0, 1.0, 5.0], [0.5, 0.5, 0.0]]))
        model.layers[1].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 4.0]]))
    return model


def test_synops_hand_computed() -> None:
    """Inputs spike at 0 and 1 (the third never). By hand, with threshold 1:

    h0: s = 2 after input 0, fires at 1/2 = 0.5. h1: s = 0.5 after input 0 (crossing at 2), then
    s = 1, q = 0.5 after input 1: fires at 1.5. o0: gets h0 at 0.5 with w = 2, fires at
    (1 + 1)/2 = 1.0: the decision. o1: gets h1 at 1.5 with w = 4, fires at (1 + 6)/4 = 1.75.
    SynOps: input 0 -> 2, h0 -> 2 (before the decision, 4); input 1 at 1.0 is not before the
    decision at 1.0; it reaches h0, which has fired, and h1 -> 2; h1 -> 2: 8 in all.
    """
    model = _tiny_network()
    t_in = torch.tensor([[0.0, 1.0, math.inf]], dtype=torch.float64)
    result = simulate(model, t_in)
    np.testing.assert_array_equal(result.spike_times[1][0], [0.5, 1.5])
    np.testing.assert_array_equal(result.spike_times[2][0], [1.0, 1.75])
    assert result.decision.tolist() == [0] and result.decision_time.tolist() == [1.0]
    assert result.synops_to_decision.tolist() == [[0, 2, 2]]
    assert result.synops_total.tolist() == [[0, 4, 4]]
    stopped = simulate(model, t_in, stop_at_decision=True)
    assert stopped.synops_total.tolist() == [[0, 2, 2]] and stopped.decision.tolist() == [0]
    np.testing.assert_array_equal(stopped.spike_times[1][0], [0.5, math.inf])


def test_synops_through_convolution_and_pooling() -> None:
    """1x3x3-1C2-P2-1: the centre pixel reaches all 4 conv positions, a corner 1; the pooled spike 1 synapse."""
    model = build("1x3x3-1C2-P2-1").double()
    with torch.no_grad():
        model.layers[0].weight.fill_(1.0)
        model.layers[2].weight.fill_(1.0)
    for pixel, synops in (((1, 1), [0, 4, 0, 1]), ((0, 0), [0, 1, 0, 1]), ((0, 1), [0, 2, 0, 1])):
        t_in = torch.full((1, 1, 3, 3), math.inf, dtype=torch.float64)
        t_in[0, 0, pixel[0], pixel[1]] = 0.0
        result = simulate(model, t_in)
        assert result.synops_total.tolist() == [synops], pixel
        assert_same_spikes(model, t_in)


def test_stop_at_decision(trained_fc: SpikingNetwork, mnist_test: torch.Tensor) -> None:
    t_in = latency_encode(mnist_test, dtype=torch.float64).reshape(len(mnist_test), -1)
    full = simulate(trained_fc, t_in)
    stopped = simulate(trained_fc, t_in, stop_at_decision=True)
    np.testing.assert_array_equal(stopped.decision, full.decision)
    np.testing.assert_array_equal(stopped.decision_time, full.decision_time)
    np.testing.assert_array_equal(stopped.synops_total, full.synops_to_decision)
    assert (stopped.synops_total.sum(axis=1) <= full.synops_total.sum(axis=1)).all()
    assert stopped.synops_total.sum() < full.synops_total.sum()
    before = full.spike_times[1] < full.decision_time[:, None]
    np.testing.assert_array_equal(stopped.spike_times[1], np.where(before, full.spike_times[1], math.inf))
    assert (np.isfinite(stopped.spike_times[2]).sum(axis=1) == (full.decision >= 0)).all()  # the deciding neuron only


def test_decision_ties_go_to_the_lowest_class() -> None:
    model = build("4-3-5").double()
    with torch.no_grad():
        model.layers[0].weight.fill_(1.0)
        model.layers[1].weight.copy_(
            torch.tensor([[0.1] * 3, [0.5] * 3, [0.2] * 3, [0.5] * 3, [0.5] * 3], dtype=torch.float64)
        )
    t_in = torch.tensor([[0.0, 0.25, 0.5, math.inf]], dtype=torch.float64)
    result = simulate(model, t_in)
    assert result.decision.tolist() == [1]
    assert_same_spikes(model, t_in)


def test_window_end_and_silent_images() -> None:
    model = _tiny_network()
    t_in = torch.tensor([[0.0, 1.0, math.inf], [math.inf] * 3], dtype=torch.float64)
    result = simulate(model, t_in, t_end=1.2)
    np.testing.assert_array_equal(result.spike_times[1], [[0.5, math.inf], [math.inf, math.inf]])
    assert result.decision.tolist() == [0, -1] and result.decision_time[1] == math.inf
    assert result.synops_total.tolist() == [[0, 4, 2], [0, 0, 0]]


def test_rejects_bad_input() -> None:
    net = event_network(_tiny_network())
    with pytest.raises(ValueError, match="3"):
        simulate(net, torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        simulate(net, torch.tensor([[0.0, math.nan, 1.0]]))
    with pytest.raises(ValueError, match="ReL-PSP"):
        event_network(build("4-3-2", neuron="alpha"))


@pytest.mark.parametrize("arch", ["784-30-10", "12x12-4C3-P2-20-10"])
def test_float32_models_are_simulated_in_float64(arch: str) -> None:
    model = build(arch)  # float32 weights
    t_in = torch.rand(5, *model.input_shape, dtype=torch.float64)
    result = simulate(model, t_in)
    reference = model.double().forward_all(t_in)[-1].detach().numpy()
    np.testing.assert_allclose(result.spike_times[-1], reference, rtol=1e-9)
