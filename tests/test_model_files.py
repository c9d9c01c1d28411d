"""Model files are data: loading one never runs code from it, through any entry point.

Each test plants a crafted payload (an object whose unpickling would create a marker file) in a
real checkpoint, feeds it to one entry point, and checks that the marker was never created, that
the command ends with exit status 2 and one line, and that the library raises CheckpointError.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from stdbp.checkpoint import load_checkpoint, load_model, save_checkpoint
from stdbp.cli import main
from stdbp.errors import CheckpointError
from stdbp.nn import build

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"


class Payload:
    """Unpickling it runs ``touch MARKER``: what a malicious model file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _plant(source: Path, target: Path, marker: Path) -> Path:
    """``source`` with one extra entry in its ``config``: the payload."""
    payload = torch.load(source, weights_only=True)
    payload.setdefault("config", {})["evil"] = Payload(marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, target)
    return target


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload-ran"


@pytest.fixture
def evil(tmp_path: Path, marker: Path) -> Path:
    return _plant(PRETRAINED / "mnist-784-400-10.pt", tmp_path / "evil" / "mnist-784-400-10.pt", marker)


def test_the_payload_is_real(evil: Path, marker: Path) -> None:
    """The oracle: the same file loaded the unsafe way does run the payload."""
    torch.load(evil, weights_only=False)
    assert marker.exists()


def _refused(capsys: pytest.CaptureFixture, argv: list[str], marker: Path) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stdbp: error:") and "\n" not in err and "Traceback" not in err
    assert "not plain data" in err and "nothing in it was run" in err
    assert not marker.exists()


def test_library_loaders_refuse_code(evil: Path, marker: Path) -> None:
    for load in (load_checkpoint, load_model):
        with pytest.raises(CheckpointError, match="not plain data"):
            load(evil)
    assert not marker.exists()


def test_eval_refuses_code(evil: Path, marker: Path, capsys: pytest.CaptureFixture) -> None:
    _refused(capsys, ["eval", str(evil), "--json"], marker)


def test_analyze_refuses_code(evil: Path, marker: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _refused(capsys, ["analyze", str(evil), "--out", str(tmp_path / "a"), "--limit", "10", "--no-progress"], marker)


def test_resume_refuses_code(tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "clean.pt", build("784-20-10"), config={"arch": "784-20-10"}, step=0)
    _plant(run / "clean.pt", run / "checkpoint.pt", marker)
    _refused(capsys, ["train", "--resume", str(run), "--no-progress"], marker)


def test_bench_refuses_code(tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture) -> None:
    _plant(PRETRAINED / "mnist-784-800-10.pt", tmp_path / "pre" / "mnist-784-800-10.pt", marker)
    argv = ["bench", "--arch", "784-800-10", "--batch-size", "2", "--repeats", "1", "--warmup", "0", "--snn-steps"]
    _refused(capsys, [*argv, "--no-memory", "--pretrained", str(tmp_path / "pre")], marker)


def test_reproduce_refuses_code(evil: Path, marker: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _refused(
        capsys, ["reproduce", "--out", str(tmp_path / "r"), "--pretrained", str(evil.parent), "--no-progress"], marker
    )


def test_every_shipped_network_still_loads(tmp_path: Path) -> None:
    shipped = sorted(PRETRAINED.glob("*.pt"))
    assert len(shipped) >= 4
    for path in shipped:
        model = load_model(path)
        assert sum(p.numel() for p in model.parameters()) > 0


def test_a_previous_release_training_checkpoint_loads_and_resumes(tmp_path: Path) -> None:
    """``tests/data/checkpoint-0.1.0-784-16-10.pt``: a training checkpoint written by release 0.1.0
    (``stdbp train --arch 784-16-10 --train-limit 256 --epochs 1`` at commit 5ad6791), with its
    optimizer, scheduler and generator states: it loads, and the run continues from it."""
    old = Path(__file__).parent / "data" / "checkpoint-0.1.0-784-16-10.pt"
    state = load_checkpoint(old)
    assert state["config"]["arch"] == "784-16-10" and state["step"] == 4
    assert load_model(old).arch == "784-16-10"
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(old, run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert load_checkpoint(run / "model.pt")["metrics"][-1]["epoch"] == 2
