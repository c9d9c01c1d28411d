"""Networks from the paper's notation: parsing, neuron kernels, checkpoints that rebuild them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stdbp import build, parse_arch
from stdbp.checkpoint import load_model, save_checkpoint
from stdbp.errors import ArchitectureError
from stdbp.nn import AlphaSpikingLinear
from stdbp.nn.layers import SpikingLinear


def test_fully_connected_notation() -> None:
    net = build("784-400-10")
    assert [type(layer) for layer in net.layers] == [SpikingLinear, SpikingLinear]
    assert net.layers[0].weight.shape == (400, 784) and net.num_classes == 10
    times = net.forward_all(torch.rand(3, 28, 28))
    assert [tuple(t.shape) for t in times] == [(3, 784), (3, 400), (3, 10)]


@pytest.mark.parametrize(
    "arch, token", [("784--10", "''"), ("784-abc-10", "abc"), ("0-10", "0"), ("784-8C0-10", "8C0"), ("x-10", "x")]
)
def test_unparsable_names_the_token(arch: str, token: str) -> None:
    with pytest.raises(ArchitectureError, match=token):
        parse_arch(arch)


def test_alpha_neuron_network_and_round_trip(tmp_path: Path) -> None:
    net = build("784-30-10", neuron="alpha", psp_tau=0.5)
    assert all(isinstance(layer, AlphaSpikingLinear) and layer.tau == 0.5 for layer in net.layers)
    save_checkpoint(tmp_path / "a.pt", net)
    again = load_model(tmp_path / "a.pt")
    assert again.neuron == "alpha" and again.psp_tau == 0.5
    t = torch.rand(2, 784)
    torch.testing.assert_close(again(t), net(t))
    with pytest.raises(ArchitectureError, match="6C5"):
        build("28x28-6C5-10", neuron="alpha")
    with pytest.raises(ArchitectureError, match="unknown neuron"):
        build("784-10", neuron="lif")


def test_linear_weight_is_a_view_of_a_contiguous_parameter_and_state_dicts_say_weight() -> None:
    layer = SpikingLinear(6, 4)
    assert [name for name, _ in layer.named_parameters()] == ["weight_t"] and layer.weight_t.is_contiguous()
    assert layer.weight.shape == (4, 6) and layer.weight.data_ptr() == layer.weight_t.data_ptr()
    state = layer.state_dict()
    assert list(state) == ["weight"] and torch.equal(state["weight"], layer.weight)
    other = SpikingLinear(6, 4)
    other.load_state_dict(state)
    assert torch.equal(other.weight_t, layer.weight_t)
    with pytest.raises(RuntimeError):
        SpikingLinear(4, 6).load_state_dict(state)


def test_optimizer_state_of_old_layout_is_transposed_on_resume() -> None:
    from stdbp.training.loop import _match_optimizer_layout

    layer = SpikingLinear(6, 4)
    optimizer = torch.optim.Adam(layer.parameters())
    old = torch.randn(4, 6)  # Adam state saved for a (out, in) parameter
    optimizer.state[layer.weight_t] = {"step": torch.tensor(3.0), "exp_avg": old.clone(), "exp_avg_sq": old.abs()}
    _match_optimizer_layout(optimizer)
    state = optimizer.state[layer.weight_t]
    assert torch.equal(state["exp_avg"], old.t()) and state["exp_avg"].is_contiguous() and state["step"] == 3


def test_square_optimizer_state_of_old_layout_is_transposed_by_its_strides() -> None:
    from stdbp.training.loop import _match_optimizer_layout

    layer = SpikingLinear(5, 5)
    optimizer = torch.optim.Adam(layer.parameters())
    stored = torch.randn(5, 5)  # memory of the old (out, in) parameter stored transposed
    optimizer.state[layer.weight_t] = {"exp_avg": stored.t(), "exp_avg_sq": torch.ones(5, 5)}
    _match_optimizer_layout(optimizer)
    state = optimizer.state[layer.weight_t]
    assert torch.equal(state["exp_avg"], stored) and torch.equal(state["exp_avg_sq"], torch.ones(5, 5))
