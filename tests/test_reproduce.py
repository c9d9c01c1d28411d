"""``stdbp reproduce`` end to end, on a budget far below ``--quick``'s, with a small MNIST copy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from stdbp.checkpoint import save_checkpoint
from stdbp.cli import main
from stdbp.nn.network import build
from stdbp.paper.reproduce import ARCHS, QUICK, Budget, reproduce
from stdbp.training.data import load_dataset

#: An even smaller budget than --quick, through the hidden --budget option or the Python API.
TINY = {
    "train_limit": 64,
    "analyze_limit": 40,
    "compare_train_limit": 64,
    "compare_heldout": 30,
    "compare_test_limit": 100,
}


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a raw IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """128 training and 100 test images of MNIST as IDX files, so that the per-epoch evaluation is quick."""
    data = load_dataset("mnist")
    directory = tmp_path_factory.mktemp("mnist-small")
    for split, n, (images, labels) in (
        ("train", 128, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
        ("test", 100, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    ):
        _write_idx(directory / images, data[split].images[:n].numpy())
        _write_idx(directory / labels, data[split].labels[:n].numpy().astype(np.uint8))
    return directory


@pytest.mark.slow
def test_quick_end_to_end(small_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "reproduce"
    budget = [f"--budget={key}={value}" for key, value in TINY.items()]
    assert (
        main(["reproduce", "--quick", "--out", str(out), "--data-dir", str(small_mnist), "--no-progress", *budget]) == 0
    )
    assert "report.md" in capsys.readouterr().out
    summary = json.loads((out / "reproduce.json").read_text())
    assert summary["quick"] and summary["budget"]["train_limit"] == 64 and summary["budget"]["epochs"] == QUICK.epochs
    assert [row["arch"] for row in summary["table1"]] == list(ARCHS)
    assert all(row["source"] == "trained" and 0 <= row["accuracy"] <= 1 for row in summary["table1"])
    for arch in ("784-400-10", "784-800-10"):
        fig5 = summary["fig5"][arch]
        assert fig5["n_images"] == 40
        assert 0 <= fig5["hidden_fired_before_decision_fraction"] <= fig5["hidden_fired_fraction"] <= 1
        assert fig5["synops_per_image"] <= fig5["dense_macs_per_image"]
    assert set(summary["section2"]["final"]) == {"relpsp", "alpha"}

    report = (out / "report.md").read_text()
    assert "Quick run" in report and "not the paper's" in report and "Reduced budget" in report
    for number in ("98.1 %", "98.4 %", "99.2 %", "48.6 %", "66.3 %"):
        assert number in report
    for command in ("stdbp train --arch 784-400-10", "stdbp analyze", "stdbp compare-psp --arch 784-400-10"):
        assert command in report
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) == 2 + 3 and all((out / image).is_file() for image in images)
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.slow
def test_pretrained_checkpoints_are_evaluated_and_runs_reused(
    small_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full run (not quick) evaluates pretrained/mnist-784-400-10.pt and trains the rest with
    their recipes; a second run reuses everything."""
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    save_checkpoint(pretrained / "mnist-784-400-10.pt", build("784-400-10"))
    monkeypatch.setattr("stdbp.paper.reproduce.RECIPES", {"784-800-10": {"epochs": 2, "shift": 0, "rotate": 5.0}})
    budget = Budget(epochs=1, compare_epochs=1, **TINY)
    lines: list[str] = []
    first = reproduce(
        tmp_path / "out", pretrained_dir=pretrained, data_dir=str(small_mnist), budget=budget, echo=lines.append
    )
    sources = {row["arch"]: row["source"] for row in first["table1"]}
    assert sources == {"784-400-10": "pretrained", "784-800-10": "trained", ARCHS[2]: "trained"}
    rows = {row["arch"]: row for row in first["table1"]}
    assert rows["784-800-10"]["epochs"] == 2 and "--epochs 2 --shift 0 --rotate 5.0" in rows["784-800-10"]["command"]
    assert rows[ARCHS[2]]["epochs"] == 1
    assert first["fig5"]["784-400-10"]["checkpoint"] == str(pretrained / "mnist-784-400-10.pt")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "stdbp eval" in report and "Quick run" not in report and "Reduced budget" in report
    lines.clear()
    second = reproduce(
        tmp_path / "out", pretrained_dir=pretrained, data_dir=str(small_mnist), budget=budget, echo=lines.append
    )
    assert sum("reusing" in line for line in lines) == 3  # two trained networks and the comparison
    assert [row["accuracy"] for row in second["table1"]] == [row["accuracy"] for row in first["table1"]]


def test_bad_budget_and_pretrained_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["reproduce", "--quick", "--out", str(tmp_path), "--budget", "nonsense=1"]) == 2
    assert main(["reproduce", "--out", str(tmp_path), "--pretrained", str(tmp_path / "missing")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("stdbp: error:") for line in errors)


@pytest.mark.slow
def test_the_quick_command_as_users_run_it(tmp_path: Path) -> None:
    """`stdbp reproduce --quick` exactly as documented (full MNIST test set, the --quick budget): about a minute."""
    out = tmp_path / "quick"
    assert main(["reproduce", "--quick", "--out", str(out), "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "quick" in report.lower() and "98.4" in report and "66.3" in report
    assert all((out / link).exists() for link in re.findall(r"\]\(([^)]+\.png)\)", report))
