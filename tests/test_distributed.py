"""Data-parallel training under torchrun (gloo, 2 processes on the CPU) against one process.

Two runs whose gradients are summed in a different order agree to float rounding over a few
hundred steps only (training is chaotic: a changed causal set changes a gradient discretely),
so whole runs are compared by their metrics and a weight tolerance measured here: after 64
steps of 784-50-10 the largest weight difference is 5e-5 of the largest weight.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stdbp.training.augment import jitter_times, random_affine, random_erase, random_hflip, random_shift
from stdbp.training.data import load_dataset
from stdbp.training.distributed import share, thread_count
from stdbp.training.loop import encode

ARGS = [
    "--arch",
    "784-50-10",
    "--train-limit",
    "2000",
    "--epochs",
    "2",
    "--rotate",
    "5",
    "--scale",
    "0.05",
    "--no-progress",
]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "stdbp"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=600)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_shares_cover_the_batch_in_order() -> None:
    for n in (1, 7, 64, 65):
        for world in (1, 2, 3, 8):
            rows = [share(n, rank, world) for rank in range(world)]
            assert rows[0][0] == 0 and rows[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
            assert max(hi - lo for lo, hi in rows) - min(hi - lo for lo, hi in rows) <= 1
    assert thread_count(2, cores=2) == 1 and thread_count(1, cores=2) == 2 and thread_count(4, cores=2) == 1


@pytest.mark.parametrize("world", [2, 3])
def test_every_draw_is_the_same_on_any_number_of_processes(world: int) -> None:
    """The augmentation of a global batch, split over ``world`` ranks, is the one-process
    augmentation of the whole batch, bit for bit (each rank draws for the whole batch)."""
    images = load_dataset("mnist", splits=("test",))["test"].images[:13]

    def augment(batch: torch.Tensor, rows: tuple[int, int] | None) -> torch.Tensor:
        rng = torch.Generator().manual_seed(5)
        batch = random_affine(random_hflip(batch, 0.5, rng, rows), 10.0, 0.1, rng, rows, elastic=34.0)
        batch = random_erase(random_shift(batch, 2, rng, rows), 0.5, rng, rows)
        return jitter_times(encode(batch, 1.0), 0.02, rng, rows)

    whole = augment(images, None)
    parts = [augment(images[lo:hi], (lo, len(images))) for lo, hi in (share(13, r, world) for r in range(world))]
    assert torch.equal(torch.cat(parts), whole)


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path: Path) -> None:
    one = _run([sys.executable, "-m", "stdbp", "train", *ARGS, "--out", "one"], tmp_path)
    two = _run([*TORCHRUN, "train", *ARGS, "--out", "two"], tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 processes (gloo)" in two.stdout and "numba 1, torch 1" in two.stdout
    assert two.stdout.count("test accuracy") == 1  # rank 0 alone prints
    a, b = _weights(tmp_path / "one" / "model.pt"), _weights(tmp_path / "two" / "model.pt")
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-3 * a[key].abs().max(), key
    for x, y in zip(_metrics(tmp_path / "one"), _metrics(tmp_path / "two"), strict=True):
        assert x["step"] == y["step"] and x["nonfinite_steps"] == y["nonfinite_steps"]
        assert abs(x["test_accuracy"] - y["test_accuracy"]) <= 0.005
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-3)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


@pytest.mark.slow
def test_the_autograd_path_reduces_too(tmp_path: Path) -> None:
    """The reference kernels take the autograd path inside the training step: their gradients
    are reduced the same way."""
    args = ["--arch", "784-20-10", "--train-limit", "512", "--epochs", "1", "--no-progress"]
    one = _run([sys.executable, "-m", "stdbp", "train", *args, "--out", "one"], tmp_path, STDBP_KERNEL="reference")
    two = _run([*TORCHRUN, "train", *args, "--out", "two"], tmp_path, STDBP_KERNEL="reference")
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = _weights(tmp_path / "one" / "model.pt"), _weights(tmp_path / "two" / "model.pt")
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-4 * a[key].abs().max(), key


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_rank_stops_the_run_and_it_resumes_on_one_process(tmp_path: Path, how: int) -> None:
    """SIGTERM to one rank: every rank stops after one checkpoint. SIGKILL to one rank: the others
    exit instead of hanging. Either way the run resumes on one process and ends where an
    uninterrupted run does (the same steps; weights to the tolerance above)."""
    argv = [*ARGS, "--checkpoint-every", "8", "--out", "run"]
    if shutil.which("pgrep") is None:
        pytest.skip("needs pgrep")
    proc = subprocess.Popen(
        [*TORCHRUN, "train", *argv], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert proc.poll() is None and len(workers) == 2, (
        proc.communicate()[1][-2000:] if proc.poll() is not None else workers
    )
    os.kill(workers[1], how)  # rank 1 (started second)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < step < 64
    resumed = _run([sys.executable, "-m", "stdbp", "train", "--resume", "run", "--no-progress"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = _run([sys.executable, "-m", "stdbp", "train", *ARGS, "--out", "whole"], tmp_path)
    assert whole.returncode == 0
    assert (
        [m["step"] for m in _metrics(tmp_path / "run")] == [m["step"] for m in _metrics(tmp_path / "whole")] == [32, 64]
    )
    a, b = _weights(tmp_path / "whole" / "model.pt"), _weights(tmp_path / "run" / "model.pt")
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-3 * a[key].abs().max(), key
