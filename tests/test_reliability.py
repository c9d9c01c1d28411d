"""Interrupted training resumes bitwise; checkpoints survive a kill mid-write; same seed, same weights."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numba
import pytest
import torch

from stdbp.checkpoint import load_checkpoint, load_model, save_checkpoint
from stdbp.nn.network import build
from stdbp.training.loop import TrainConfig, train

# every augmentation on, so that its generator's state is part of what resumes bitwise.
# 400 steps: long enough that a kill aimed at a step in the first epoch lands before the end on a fast machine
ARGS = [
    "--arch",
    "784-30-10",
    "--train-limit",
    "6400",
    "--batch-size",
    "32",
    "--epochs",
    "2",
    "--seed",
    "3",
    "--checkpoint-every",
    "4",
    "--rotate",
    "5",
    "--elastic",
    "20",
    "--hflip",
    "0.5",
    "--erase",
    "0.5",
    "--weight-decay",
    "0.01",
    "--weight-sum-penalty",
    "1e-4",
    "--no-progress",
]
STEPS = 2 * 6400 // 32


def _stdbp(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "stdbp.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _finish(proc: subprocess.Popen, expect: int = 0) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == expect, err
    return out + err


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a, weights_only=False)["state_dict"], torch.load(b, weights_only=False)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    _finish(_stdbp("train", *ARGS, "--out", str(out)))
    return out


def _wait_for_step(run: Path, proc: subprocess.Popen, min_step: int) -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        if (run / "checkpoint.pt").exists():
            try:
                if load_checkpoint(run / "checkpoint.pt")["step"] >= min_step:
                    return
            except Exception:  # being replaced right now: try again
                pass
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    raise AssertionError("training never reached the step")


@pytest.mark.slow
def test_kill_9_loses_at_most_the_last_checkpoint_interval_and_resumes_bitwise(
    uninterrupted: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = _stdbp("train", *ARGS, "--out", str(run))
    _wait_for_step(run, proc, random.Random(0).randint(4, STEPS // 2 - 20))
    time.sleep(random.Random(1).uniform(0, 0.02))
    proc.kill()  # SIGKILL: no chance to save
    proc.wait()
    saved = load_checkpoint(run / "checkpoint.pt")["step"]
    assert 0 < saved < STEPS and not (run / "model.pt").exists()
    _finish(_stdbp("train", "--resume", str(run), "--no-progress"))
    assert _same_weights(run / "model.pt", uninterrupted / "model.pt")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for mine, theirs in zip(rows, reference):  # the same curve, apart from wall time
        assert {k: v for k, v in mine.items() if k != "seconds"} == {k: v for k, v in theirs.items() if k != "seconds"}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits_cleanly(sig: int, uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _stdbp("train", *ARGS, "--out", str(run))
    _wait_for_step(run, proc, 6)
    proc.send_signal(sig)
    output = _finish(proc, expect=128 + sig)
    assert "--resume" in output and "Traceback" not in output
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    assert step >= 6
    _finish(_stdbp("train", "--resume", str(run), "--no-progress"))
    assert _same_weights(run / "model.pt", uninterrupted / "model.pt")


_SLOW_WRITER = """
import os, sys, time, torch
import stdbp.checkpoint as ck
from stdbp.nn.network import build
real_fsync = os.fsync
def slow_fsync(fd):
    real_fsync(fd)
    print("writing", flush=True)
    time.sleep(60)
ck.os.fsync = slow_fsync
ck.save_checkpoint(sys.argv[1], build("784-400-10"), note="second")
"""


@pytest.mark.slow
def test_kill_while_writing_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, build("784-20-10"), note="first")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"  # the new file is written, not yet renamed
    proc.kill()
    proc.wait()
    assert load_checkpoint(path)["note"] == "first"
    assert load_model(path).arch == "784-20-10"


@pytest.mark.slow
def test_same_seed_same_weights_bitwise_whatever_the_thread_count(tmp_path: Path) -> None:
    config = TrainConfig(arch="784-40-10", epochs=1, train_limit=512, batch_size=64, seed=5)
    threads = numba.get_num_threads()
    try:
        train(config, tmp_path / "a", progress=False, echo=lambda s: None)
        numba.set_num_threads(1)
        train(config, tmp_path / "b", progress=False, echo=lambda s: None)
    finally:
        numba.set_num_threads(threads)
    assert _same_weights(tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt")
    config.seed = 6
    train(config, tmp_path / "c", progress=False, echo=lambda s: None)
    assert not _same_weights(tmp_path / "a" / "model.pt", tmp_path / "c" / "model.pt")


def test_nonfinite_steps_are_counted_and_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stdbp.training.loop as training

    real = training.loss_and_backward
    calls = {"n": 0}

    def sometimes_nan(model, *args, **kwargs):
        calls["n"] += 1
        loss, t_out = real(model, *args, **kwargs)
        if calls["n"] == 3:
            model.layers[0].weight_t.grad[0, 0] = float("nan")
            return loss * float("nan"), t_out
        return loss, t_out

    monkeypatch.setattr(training, "loss_and_backward", sometimes_nan)
    last = train(
        TrainConfig(arch="784-20-10", epochs=1, train_limit=320, seed=0),
        tmp_path / "r",
        progress=False,
        echo=lambda s: None,
    )
    assert last["nonfinite_steps"] == 1
    weights = load_model(tmp_path / "r" / "model.pt").layers[0].weight
    assert torch.isfinite(weights).all()
