"""``--weight-decay``: decoupled weight decay (AdamW), checked against its definition."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stdbp.checkpoint import load_checkpoint
from stdbp.errors import StdbpError
from stdbp.nn import build
from stdbp.training.loop import TrainConfig, train

CONFIG = dict(arch="784-20-10", epochs=1, train_limit=64, batch_size=64, seed=3, lr=0.01, schedule="constant")


def _weights(tmp_path: Path, name: str, **options) -> dict[str, torch.Tensor]:
    train(TrainConfig(**CONFIG, **options), tmp_path / name, progress=False, echo=lambda s: None)
    return load_checkpoint(tmp_path / name / "model.pt")["state_dict"]


def test_one_step_shrinks_the_weights_by_lr_times_decay_then_takes_the_adam_step(tmp_path: Path) -> None:
    torch.manual_seed(CONFIG["seed"])
    initial = build(CONFIG["arch"]).state_dict()  # train() builds its network from the same seed
    adam = _weights(tmp_path, "adam")
    decayed = _weights(tmp_path, "adamw", weight_decay=5.0)
    for name, w0 in initial.items():
        assert not torch.equal(adam[name], w0)
        # AdamW (Loshchilov & Hutter): w1 = (1 - lr * wd) w0 - lr * m / (sqrt(v) + eps); the Adam part
        # is the plain-Adam run's step from the same weights and gradient
        expected = (1 - 0.01 * 5.0) * w0.double() + (adam[name].double() - w0.double())
        torch.testing.assert_close(decayed[name].double(), expected, rtol=0, atol=1e-6)


def test_decay_off_is_plain_adam_bit_for_bit(tmp_path: Path) -> None:
    a, b = _weights(tmp_path, "a"), _weights(tmp_path, "b", weight_decay=0.0)
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("value", [-0.1, 100.0, float("nan")])
def test_out_of_range_decay_is_refused(value: float) -> None:
    with pytest.raises(StdbpError, match="--weight-decay"):
        TrainConfig(lr=0.01, weight_decay=value).validate()
