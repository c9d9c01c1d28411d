"""``stdbp analyze``: its numbers against the tensor forward, MAC counts, the CLI and its files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stdbp import build
from stdbp.checkpoint import load_model, save_checkpoint
from stdbp.cli import main
from stdbp.encoding import latency_encode
from stdbp.functional import first_spike_decision
from stdbp.nn.layers import EarliestSpikePool2d, SpikingConv2d, SpikingLinear
from stdbp.paper.analysis import analyze, dense_macs
from stdbp.sim.events import event_network, simulate
from stdbp.training.data import Split, load_dataset
from stdbp.training.loop import TrainConfig, train

REQUIRED = (
    "hidden_fired_fraction",
    "hidden_fired_before_decision_fraction",
    "synops_per_image",
    "dense_macs_per_image",
    "accuracy",
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fc") / "r"
    train(TrainConfig(arch="784-30-10", epochs=1, train_limit=512), out, progress=False, echo=lambda s: None)
    return out / "model.pt"


@pytest.fixture(scope="module")
def test_split() -> Split:
    test = load_dataset("mnist", splits=("test",))["test"]
    return Split(test.images[:400], test.labels[:400])


def test_dense_macs() -> None:
    assert sum(dense_macs(event_network(build("784-400-10")))) == 784 * 400 + 400 * 10
    assert dense_macs(event_network(build("1x3x3-1C2-P2-1"))) == [0, 16, 0, 1]
    paper = dense_macs(event_network(build("28x28-6C5-P2-16C5-P2-1024-128-10")))
    assert paper == [0, 25 * 6 * 24 * 24, 0, 6 * 25 * 16 * 8 * 8, 0, 256 * 1024, 1024 * 128, 128 * 10]


def test_synops_equal_dense_macs_when_everything_fires() -> None:
    """With positive weights and every input spiking, every neuron fires: SynOps = the dense network's MACs.

    Overlapping pooling windows (2x2 at stride 1) and a padded convolution (padding taps count no MACs).
    """
    model = build("1x8x8-3C3-P2-4C2-5-3")  # replaced below: 1x8x8 -> 3x6x6 -> 3x5x5 -> 4x6x6 -> 5 -> 3
    model.layers = torch.nn.ModuleList(
        [
            SpikingConv2d(1, 3, 3),
            EarliestSpikePool2d(2, stride=1),
            SpikingConv2d(3, 4, 2, padding=1),
            SpikingLinear(144, 5),
            SpikingLinear(5, 3),
        ]
    )
    with torch.no_grad():
        for layer in model.layers:
            if hasattr(layer, "weight"):
                layer.weight.abs_()
    net = event_network(model)
    assert net.shapes[3] == (4, 6, 6)
    assert dense_macs(net)[3] == 3 * 4 * (1 + 2 * 4 + 1) ** 2  # per axis: 1 + 2 + 2 + 2 + 2 + 1 in-bounds taps
    result = simulate(net, torch.rand(2, 1, 8, 8, dtype=torch.float64))
    assert all(np.isfinite(t).all() for t in result.spike_times)
    np.testing.assert_array_equal(result.synops_total, np.tile(dense_macs(net), (2, 1)))


def test_numbers_match_the_tensor_forward(checkpoint: Path, test_split: Split) -> None:
    model = load_model(checkpoint).double()
    result = analyze(model, test_split)
    times = model.forward_all(latency_encode(test_split.images, dtype=torch.float64).reshape(len(test_split), -1))
    hidden, out = times[1].detach(), times[2].detach()
    t_dec = torch.where(
        torch.isfinite(out).any(dim=1),
        out.min(dim=1).values,
        torch.full((len(test_split),), math.inf, dtype=torch.float64),
    )
    assert result["hidden_fired_fraction"] == pytest.approx(float(torch.isfinite(hidden).double().mean()), abs=1e-12)
    before = float((hidden < t_dec[:, None]).double().mean())
    assert result["hidden_fired_before_decision_fraction"] == pytest.approx(before, abs=1e-12)
    assert 0 < result["hidden_fired_before_decision_fraction"] < result["hidden_fired_fraction"] < 1
    accuracy = float((first_spike_decision(out) == test_split.labels).double().mean())
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert result["decision_time_mean"] == pytest.approx(float(t_dec[torch.isfinite(t_dec)].mean()), rel=1e-9)
    assert result["dense_macs_per_image"] == 784 * 30 + 30 * 10
    assert 0 < result["synops_per_image"] <= result["synops_per_image_total"] <= result["dense_macs_per_image"]
    layer1 = result["layers"][0]
    assert layer1["fired_fraction"] == result["hidden_fired_fraction"]
    assert result["synops_per_image"] == pytest.approx(sum(l["synops_per_image"] for l in result["layers"]))
    fired_by = result["hidden_fired_fraction_by_time"]
    assert list(fired_by.values()) == sorted(fired_by.values()) and fired_by["100"] <= result["hidden_fired_fraction"]
    histogram = result["histograms"]["hidden"]["1"]
    assert sum(histogram["counts"]) + histogram["beyond"] == int(torch.isfinite(hidden).sum())
    assert sum(result["histograms"]["decision"]["counts"]) == int(torch.isfinite(t_dec).sum())


def test_neurons_that_never_fire_match_the_tensor_forward(checkpoint: Path, test_split: Split) -> None:
    model = load_model(checkpoint).double()
    with torch.no_grad():
        model.layers[0].weight_t[:, :4] = -0.01  # four hidden neurons that can never reach threshold
    result = analyze(model, test_split, limit=200)
    times = model.forward_all(latency_encode(test_split.images[:200], dtype=torch.float64).reshape(200, -1))
    never = float((~torch.isfinite(times[1]).any(dim=0)).double().mean())
    assert never >= 4 / 30
    assert result["hidden_never_fired_fraction"] == pytest.approx(never, abs=1e-12)
    assert result["layers"][0]["never_fired_fraction"] == pytest.approx(never, abs=1e-12)


def test_window_end(checkpoint: Path, test_split: Split) -> None:
    model = load_model(checkpoint)
    bounded = analyze(model, test_split, limit=50, t_end=1.0)
    unbounded = analyze(model, test_split, limit=50)
    assert bounded["simulation_window"]["t_end"] == 1.0 and unbounded["simulation_window"]["t_end"] is None
    assert bounded["hidden_fired_fraction"] == pytest.approx(unbounded["hidden_fired_fraction_by_time"]["1"], abs=1e-12)


def test_cli_json_and_files(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "analysis"
    assert main(["analyze", str(checkpoint), "--out", str(out), "--limit", "60", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert all(isinstance(report[key], (int, float)) for key in REQUIRED)
    assert report["n_images"] == 60 and report["arch"] == "784-30-10" and "definitions" not in report
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["definitions"]["fired_before_decision"].startswith("spike time strictly before")
    assert {"fig5.png", "spike_times_layer1.png", "decision_times.png"} <= {p.name for p in out.iterdir()}
    assert (out / "fig5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))
    assert main(["analyze", str(checkpoint), "--out", str(out), "--limit", "20"]) == 0
    assert "fire for no image" in capsys.readouterr().out


def test_cli_errors(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    alpha = tmp_path / "alpha.pt"
    save_checkpoint(alpha, build("784-20-10", neuron="alpha"))
    for argv in (["--limit", "0"], ["--t-end", "0"]):
        assert main(["analyze", str(checkpoint), "--out", str(tmp_path / "x"), *argv]) == 2
    assert main(["analyze", str(alpha), "--out", str(tmp_path / "x")]) == 2
    assert main(["analyze", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("stdbp: error:") for line in errors)
