"""The stdbp command: training, evaluation, resuming, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stdbp.checkpoint import FORMAT_VERSION, load_model, save_checkpoint
from stdbp.cli import main
from stdbp.nn.network import build

QUICK = ["--train-limit", "256", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["train", "--arch", "784-50-10", "--epochs", "1", "--out", str(out), *QUICK]) == 0
    return out


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stdbp: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_train_writes_run_directory(run_dir: Path) -> None:
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "model.pt"} <= {p.name for p in run_dir.iterdir()}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == "784-50-10" and config["epochs"] == 1 and config["train_limit"] == 256
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1]
    assert 0.0 <= rows[0]["test_accuracy"] <= 1.0 and rows[0]["nonfinite_steps"] == 0
    assert not list(run_dir.glob("*.tmp"))


def test_eval_json(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(run_dir / "model.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["arch"] == "784-50-10" and report["dataset"] == "mnist" and report["n"] == 10000
    metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_resume_extends_the_same_curve(run_dir: Path, tmp_path: Path) -> None:
    before = torch.load(run_dir / "model.pt", weights_only=False)["state_dict"]
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[1]["step"] == 2 * rows[0]["step"]
    # the finished run ended at learning rate 0; extended, its cosine schedule is stretched, so it learns again
    after = torch.load(run_dir / "model.pt", weights_only=False)["state_dict"]
    assert not torch.equal(before["layers.0.weight"], after["layers.0.weight"])
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["scheduler"]["T_max"] == rows[1]["step"]


def test_refuses_to_overwrite_a_run(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    before = (run_dir / "model.pt").read_bytes()
    err = _error(capsys, ["train", "--arch", "784-50-10", "--out", str(run_dir), *QUICK])
    assert "--resume" in err and "--force" in err
    assert (run_dir / "model.pt").read_bytes() == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--arch", "784-80x-10"], "bad token '80x'"),
        (["train", "--arch", "784-800-P2"], "must end"),
        (["train", "--arch", "100-10"], "does not fit"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--lr", "-1"], "--lr"),
        (["train", "--rotate", "200"], "--rotate"),
        (["train", "--scale", "1.5"], "--scale"),
        (["train", "--elastic", "-1"], "--elastic"),
        (["train", "--elastic-sigma", "0"], "--elastic-sigma"),
        (["train", "--hflip", "1.5"], "--hflip"),
        (["train", "--erase", "-0.1"], "--erase"),
        (["train", "--weight-decay", "-1"], "--weight-decay"),
        (["train", "--weight-decay", "2000"], "below 1 / --lr"),
        (["train", "--data-dir", "/nonexistent/dir"], "not a directory"),
        (["eval", "/nonexistent/model.pt"], "no checkpoint"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "x"), *QUICK]
    assert message in _error(capsys, argv)


def test_data_dir_without_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "missing data file" in _error(
        capsys, ["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "x"), *QUICK]
    )


def test_checkpoint_errors(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "not '784-100-10'" in _error(capsys, ["eval", str(run_dir / "model.pt"), "--arch", "784-100-10"])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((run_dir / "model.pt").read_bytes()[:1000])
    assert "corrupt" in _error(capsys, ["eval", str(corrupt)])
    payload = torch.load(run_dir / "model.pt", weights_only=False)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    assert "format" in _error(capsys, ["eval", str(tmp_path / "future.pt")])
    payload["format_version"] = FORMAT_VERSION
    payload["model"]["arch"] = "784-60-10"  # weights of another architecture
    torch.save(payload, tmp_path / "other.pt")
    assert "do not fit" in _error(capsys, ["eval", str(tmp_path / "other.pt")])


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build("784-20-10")
    save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_model(tmp_path / "m.pt")
    t = torch.rand(4, 784)
    assert torch.equal(model(t), loaded(t))


@pytest.mark.slow
def test_console_script_exit_status_and_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stdbp.cli", "train", "--arch", "784-x-10", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_train_without_out_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The README's first command, run again and again in one folder: each run gets a fresh directory."""
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--arch", "784-20-10", "--epochs", "1", *QUICK]
    for _ in range(3):
        assert main(argv) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["mnist-784-20-10-seed0", "mnist-784-20-10-seed0-2", "mnist-784-20-10-seed0-3"]
    assert all((tmp_path / "runs" / name / "model.pt").is_file() for name in runs)
    assert "run in runs/mnist-784-20-10-seed0-3" in capsys.readouterr().out
    # an explicit --out that holds a run still needs --force
    assert main([*argv, "--out", "runs/mnist-784-20-10-seed0"]) == 2


def test_first_run_says_it_compiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import stdbp.training.loop as loop

    monkeypatch.setattr(loop, "numba_cache_ready", lambda: False)
    assert main(["train", "--arch", "784-20-10", "--epochs", "1", "--out", str(tmp_path / "r"), *QUICK]) == 0
    err = capsys.readouterr().err
    assert "compiling the numba kernels" in err and "kernels compiled" in err
    monkeypatch.setattr(loop, "numba_cache_ready", lambda: True)
    assert main(["train", "--arch", "784-20-10", "--epochs", "1", "--out", str(tmp_path / "s"), *QUICK]) == 0
    assert "compiling" not in capsys.readouterr().err


def test_numba_cache_is_found_after_a_step() -> None:
    from stdbp import build, latency_encode
    from stdbp.kernels import numba_cache_ready
    from stdbp.training import loss_and_backward

    images = torch.rand(4, 1, 28, 28)
    loss_and_backward(build("28x28-2C5-P2-12-10"), latency_encode(images), torch.arange(4), tau=0.05)
    assert numba_cache_ready()  # numba has cached every kernel module of a step beside the modules
