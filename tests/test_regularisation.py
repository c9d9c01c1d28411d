"""``--weight-sum-penalty``: the term against its definition, and neurons it brings back to life."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stdbp.checkpoint import load_model
from stdbp.errors import StdbpError
from stdbp.nn import build
from stdbp.training.data import load_dataset
from stdbp.training.loop import TrainConfig, encode, train
from stdbp.training.regularisation import weight_sum_penalty


def test_penalty_and_its_gradient_against_a_float64_loop_over_neurons() -> None:
    torch.manual_seed(0)
    model = build("12x12-3C5-P2-7-4").double()
    for p in model.parameters():
        p.data.normal_(0.0, 0.3)  # sums on both sides of the margin
    margin = 0.5
    penalty = weight_sum_penalty(model, margin)
    penalty.backward()
    expected, below = 0.0, []
    for layer in (model.layers[0], model.layers[2], model.layers[3]):  # convolution, hidden, output
        weight = layer.weight.detach()
        rows = [weight[j].flatten() for j in range(weight.shape[0])]  # neuron j's input weights
        for row in rows:
            total = sum(float(w) for w in row)
            expected += max(0.0, margin - total)
            below.append(total < margin)
    assert 0 < sum(below) < len(below)
    assert abs(float(penalty.detach()) - expected) < 1e-12
    # d/dw_ij of max(0, margin - sum_i w_ij) is -1 below the margin, 0 above
    grads = [model.layers[0].weight.grad, model.layers[2].weight_t.grad.t(), model.layers[3].weight_t.grad.t()]
    k = 0
    for grad in grads:
        for j in range(grad.shape[0]):
            assert torch.equal(grad[j], torch.full_like(grad[j], -1.0 if below[k] else 0.0))
            k += 1


def _hidden_firing(model_path: Path, silent: slice) -> torch.Tensor:
    """Whether each of the ``silent`` hidden neurons fires for some of the first 500 test images."""
    model = load_model(model_path)
    images = load_dataset("mnist", splits=("test",))["test"].images[:500]
    with torch.no_grad():
        hidden = model.layers[0](encode(images, 1.0).flatten(1))
    return torch.isfinite(hidden[:, silent]).any(0)


def test_neurons_silenced_for_every_input_fire_again_with_the_penalty_only(tmp_path: Path) -> None:
    silent = slice(0, 5)

    def kill(model: torch.nn.Module) -> None:  # all input weights negative: V falls, never fires
        with torch.no_grad():
            model.layers[0].weight_t[:, silent] = -1e-3

    config = dict(arch="784-20-10", epochs=1, train_limit=320, seed=2, lr=0.01, schedule="constant")
    import stdbp.training.loop as loop

    real_build = loop.build

    def build_dead(*args, **kwargs):
        model = real_build(*args, **kwargs)
        kill(model)
        return model

    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "build", build_dead)
        for name, k in (("plain", 0.0), ("penalty", 1e-4)):
            train(TrainConfig(**config, weight_sum_penalty=k), tmp_path / name, progress=False, echo=lambda s: None)
            runs[name] = _hidden_firing(tmp_path / name / "model.pt", silent)
    assert not bool(runs["plain"].any())  # no gradient reaches a neuron that never fires
    assert bool(runs["penalty"].all())


@pytest.mark.parametrize("value", [-1.0, float("inf"), 1e7])
def test_out_of_range_penalty_is_refused(value: float) -> None:
    with pytest.raises(StdbpError, match="--weight-sum-penalty"):
        TrainConfig(weight_sum_penalty=value).validate()
