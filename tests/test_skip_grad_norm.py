"""``--skip-grad-norm``: a step whose gradient norm exceeds the bound is not applied, and counted."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from stdbp.checkpoint import load_checkpoint, load_model
from stdbp.cli import main
from stdbp.errors import StdbpError
from stdbp.nn import build
from stdbp.training.loop import TrainConfig, train

CONFIG = dict(arch="784-20-10", epochs=1, train_limit=320, seed=3)  # 5 steps of 64


def _run(tmp_path: Path, name: str, **options) -> tuple[dict, dict[str, torch.Tensor]]:
    last = train(TrainConfig(**CONFIG, **options), tmp_path / name, progress=False, echo=lambda s: None)
    return last, load_checkpoint(tmp_path / name / "model.pt")["state_dict"]


def _norms_of_each_step(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every step's gradient norm in float64, independently of the loop's own."""
    import stdbp.training.loop as loop

    real, norms = loop.loss_and_backward, []

    def recording(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        norms.append(
            math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))
        )
        return out

    monkeypatch.setattr(loop, "loss_and_backward", recording)
    return norms


def test_a_bound_above_every_step_changes_nothing(tmp_path: Path) -> None:
    plain, plain_weights = _run(tmp_path, "plain")
    bounded, bounded_weights = _run(tmp_path, "bounded", skip_grad_norm=1e30)
    assert bounded["skipped_steps"] == plain["skipped_steps"] == 0
    assert all(torch.equal(plain_weights[k], bounded_weights[k]) for k in plain_weights)  # bit for bit
    assert {k: v for k, v in bounded.items() if k != "seconds"} == {k: v for k, v in plain.items() if k != "seconds"}


def test_a_bound_below_every_step_skips_them_all(tmp_path: Path) -> None:
    last, weights = _run(tmp_path, "frozen", skip_grad_norm=1e-30)
    assert last["skipped_steps"] == 5 and last["nonfinite_steps"] == 0
    torch.manual_seed(CONFIG["seed"])
    initial = build(CONFIG["arch"]).state_dict()
    assert all(torch.equal(initial[k], weights[k]) for k in initial)


def test_exactly_the_steps_above_the_bound_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    norms = _norms_of_each_step(monkeypatch)
    _run(tmp_path, "probe", skip_grad_norm=1e-30)  # every step skipped: the initial network's norms
    bound = sorted(norms)[2]  # their median: the run below skips its first step and applies its second
    norms.clear()
    lines: list[str] = []
    last = train(TrainConfig(**CONFIG, skip_grad_norm=bound), tmp_path / "r", progress=False, echo=lines.append)
    assert all(abs(n - bound) > 1e-4 * bound for n in norms)  # no step at the bound (float32 against float64)
    above = [i + 1 for i, n in enumerate(norms) if n > bound]
    assert 0 < len(above) < len(norms)
    assert last["skipped_steps"] == len(above)
    assert [int(line.split(":")[0].split()[1]) for line in lines if "skipped" in line] == above
    state = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert state["skipped_steps"] == len(above)


def test_the_count_survives_resume(tmp_path: Path) -> None:
    run = tmp_path / "r"
    train(TrainConfig(**CONFIG, skip_grad_norm=1e-30), run, progress=False, echo=lambda s: None)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert load_checkpoint(run / "model.pt")["metrics"][-1]["skipped_steps"] == 10
    assert load_model(run / "model.pt").arch == CONFIG["arch"]


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_the_bound_must_be_a_positive_number(value: float) -> None:
    with pytest.raises(StdbpError, match="--skip-grad-norm must be"):
        TrainConfig(skip_grad_norm=value).validate()


def test_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--arch", "784-8-10", "--epochs", "1", "--train-limit", "128", "--no-progress"]
    assert main([*argv, "--skip-grad-norm", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--skip-grad-norm must be a positive number" in capsys.readouterr().err
    assert main([*argv, "--skip-grad-norm", "1e-20", "--out", str(tmp_path / "b")]) == 0
    assert "gradient norm" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "b" / "model.pt")["config"]["skip_grad_norm"] == 1e-20
