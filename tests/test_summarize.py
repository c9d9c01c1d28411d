"""experiments/summarize.py: the README's results table and the frontier, from run directories."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "summarize.py"


@pytest.fixture(scope="module")
def summarize():
    spec = importlib.util.spec_from_file_location("summarize", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(root: Path, name: str, arch: str, seed: int, epochs: int, accs: list[float], **recipe) -> None:
    run = root / name
    run.mkdir(parents=True)
    config = {"arch": arch, "dataset": "mnist", "epochs": epochs, "seed": seed, **recipe}
    (run / "config.json").write_text(json.dumps(config))
    rows = [
        {"epoch": e + 1, "test_accuracy": a, "train_accuracy": a - 0.01, "seconds": 10.0 + e, "nonfinite_steps": 0}
        for e, a in enumerate(accs)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_groups_finished_runs_by_recipe(summarize, tmp_path, capsys) -> None:
    _run(tmp_path, "a0", "784-20-10", 0, 2, [0.90, 0.92], rotate=10.0)
    _run(tmp_path, "a1", "784-20-10", 1, 2, [0.91, 0.96], rotate=10.0)
    _run(tmp_path, "b0", "784-20-10", 0, 2, [0.90, 0.80])  # another recipe: its own row
    _run(tmp_path, "c0", "784-20-10", 2, 3, [0.5])  # unfinished: left out
    assert summarize.main([str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| mnist")]
    assert len(rows) == 2
    grouped = next(r for r in rows if "--rotate 10" in r)
    assert "| 0,1 | 94.00 ± 2.83 | 92.00-96.00 | 2 |" in grouped
    assert "--seed S" in grouped


def test_frontier_lists_every_run_with_size_and_best_epoch(summarize, tmp_path, capsys) -> None:
    _run(tmp_path, "fc", "784-20-10", 0, 3, [0.90, 0.95, 0.94])
    _run(tmp_path, "conv", "28x28-2C5-P2-10", 1, 4, [0.8, 0.85])  # epoch 2 of 4
    assert summarize.main([str(tmp_path), "--frontier"]) == 0
    out = capsys.readouterr().out
    fc = next(line for line in out.splitlines() if "784-20-10" in line)
    # 784*20 + 20*10 weights, and as many dense multiply-accumulates
    assert "| 0.02 M | 0.02 M | defaults | 0 | 3 | 94.00 | 95.00 (2) | 93.00 |" in fc
    conv = next(line for line in out.splitlines() if "2C5" in line)
    assert "| 2 of 4 | 85.00 | 85.00 (2) |" in conv
    assert summarize.network_size("28x28-2C5-P2-10") == (2 * 25 + 2 * 12 * 12 * 10, 2 * 25 * 24 * 24 + 288 * 10)


def test_plot_writes_an_image(summarize, tmp_path) -> None:
    _run(tmp_path / "runs", "fc", "784-20-10", 0, 2, [0.90, 0.95])
    out = tmp_path / "curves.png"
    assert summarize.main([str(tmp_path / "runs"), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_training_option_that_differs_from_its_default_names_the_recipe(summarize) -> None:
    from stdbp.training.config import TrainConfig

    defaults = dataclasses.asdict(TrainConfig())
    changed = {"weight_sum_penalty": 1e-5, "erase": 0.5, "weight_decay": 0.05, "schedule": "constant", "shift": 2}
    assert summarize.recipe_flags({**defaults, **changed}) == (
        "--weight-decay 0.05 --weight-sum-penalty 1e-05 --schedule constant --shift 2 --erase 0.5"
    )
    assert summarize.recipe_flags(defaults) == ""
    assert summarize.recipe_flags({**defaults, "seed": 3, "epochs": 9, "checkpoint_every": 5}) == ""
    for key in set(defaults) - summarize.NOT_RECIPE:  # each option alone is a recipe of its own
        value = defaults[key]
        other = "constant" if key == "schedule" else 7.5 if value is None or isinstance(value, float) else value + 1
        assert summarize.recipe_flags({**defaults, key: other}).startswith("--" + key.replace("_", "-") + " ")


def test_size_plot_takes_finished_runs_and_relu_twins_by_name(summarize, tmp_path) -> None:
    _run(tmp_path / "runs", "fc", "784-20-10", 0, 2, [0.90, 0.95], rotate=10.0)
    _run(tmp_path / "runs", "conv", "28x28-2C5-P2-10", 0, 4, [0.8, 0.85])  # epoch 2 of 4: not a point
    points = summarize.finished_points(summarize.load_all_runs([tmp_path / "runs"]))
    assert points == [
        {"dataset": "mnist", "macs": 784 * 20 + 20 * 10, "test": 95.0, "recipe": "--rotate 10", "epochs": 2}
    ]
    relu = tmp_path / "relu"
    (relu / "e20").mkdir(parents=True)
    row = json.dumps({"epoch": 20, "clean_train_accuracy": 0.97, "test_accuracy": 0.93}) + "\n"
    (relu / "e20" / "fashion-mnist-28x28-2C5p2-P2-10-seed0.jsonl").write_text(row)
    (relu / "mnist-784-20-10-wd0.05-seed1.jsonl").write_text(row)  # a tag after the network
    (relu / "notes-seed0.jsonl").write_text(row)  # no dataset: left out
    twins = sorted(summarize.relu_points(relu), key=lambda p: p["dataset"])
    assert twins == [
        {
            "dataset": "fashion-mnist",
            "macs": summarize.network_size("28x28-2C5p2-P2-10")[1],
            "test": 93.0,
            "epochs": 20,
        },
        {"dataset": "mnist", "macs": 784 * 20 + 20 * 10, "test": 93.0, "epochs": 20},
    ]
    out = tmp_path / "sizes.png"
    assert summarize.main([str(tmp_path / "runs"), "--size-plot", str(out), "--relu", str(relu)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
