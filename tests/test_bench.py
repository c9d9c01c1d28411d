"""stdbp bench: the JSON it prints, and the same-shape ReLU network it measures against."""

from __future__ import annotations

import json

import pytest
import torch

from stdbp.bench.step_timing import cpu_description, relu_network, tiny_arch
from stdbp.cli import main
from stdbp.nn.network import build


@pytest.mark.slow
def test_bench_json_keys(capsys: pytest.CaptureFixture) -> None:
    argv = [
        "bench",
        "--arch",
        "784-20-10",
        "--batch-size",
        "8",
        "--repeats",
        "3",
        "--warmup",
        "1",
        "--snn-steps",
        "--json",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["machine"]["cores"] >= 1
    assert report["memory_probe"] == "MALLOC_MMAP_THRESHOLD_=65536"
    (row,) = report["results"]
    for key in (
        "arch",
        "batch_size",
        "stdbp_step_ms",
        "relu_step_ms",
        "ratio_vs_relu",
        "stdbp_peak_mib",
        "relu_peak_mib",
        "memory_ratio_vs_relu",
    ):
        assert key in row, key
    assert row["arch"] == "784-20-10" and row["batch_size"] == 8
    assert row["stdbp_step_ms"] > 0 and row["ratio_vs_relu"] == pytest.approx(
        row["stdbp_step_ms"] / row["relu_step_ms"], rel=1e-2
    )


def test_cpu_description_names_the_model_and_widest_vector_extension(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse4_2 avx avx2 avx512f\n\nprocessor\t: 1\nmodel name\t: Some CPU 9000\n"
    )
    assert cpu_description(info) == {"cpu_model": "Some CPU 9000", "cpu_vector": "avx512f"}
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2\n")
    assert cpu_description(info) == {"cpu_vector": "avx2"}
    assert cpu_description(tmp_path / "missing") == {}


def test_relu_network_has_the_spiking_shape() -> None:
    net = relu_network("28x28-6C5-P2-16C5-P2-1024-128-10")
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    shapes = [tuple(m.weight.shape) for m in net if hasattr(m, "weight")]
    assert shapes == [(6, 1, 5, 5), (16, 6, 5, 5), (1024, 256), (128, 1024), (10, 128)]
    padded = relu_network("28x28-8C3p1-P2-4C5p2-10")  # 28x28 -> 28x28 -> 14x14 -> 14x14
    assert [tuple(m.weight.shape) for m in padded if hasattr(m, "weight")][-1] == (10, 4 * 14 * 14)
    assert padded(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_bench_rejects_bad_options(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--arch", "784-x-10"]) == 2
    assert main(["bench", "--arch", "784-20-10", "--repeats", "0"]) == 2


def test_tiny_arch_has_the_same_layer_kinds() -> None:
    """The memory probe loads code by training this network first: same kinds of layers, in order."""
    for arch in (
        "784-800-10",
        "28x28-6C5-P2-16C5-P2-1024-128-10",
        "784-400-200-10",
        "28x28-32C3p1-P2-32C3p1-P2-100-10",
    ):
        tiny = tiny_arch(arch)
        kinds = [type(layer).__name__ for layer in build(arch).layers]
        assert [type(layer).__name__ for layer in build(tiny).layers] == kinds
        assert sum(p.numel() for p in build(tiny).parameters()) < sum(p.numel() for p in build(arch).parameters()) / 10
    assert tiny_arch("28x28-6C5-P2-16C5-P2-1024-128-10") == "28x28-1C5-P2-1C5-P2-1-1-10"


@pytest.mark.slow
def test_bench_times_the_shipped_trained_network_too(capsys: pytest.CaptureFixture) -> None:
    from stdbp.bench.step_timing import shipped_checkpoint

    assert shipped_checkpoint("784-800-10") is not None and shipped_checkpoint("784-7-10") is None
    argv = [
        "bench",
        "--arch",
        "784-800-10",
        "--batch-size",
        "4",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--snn-steps",
        "--no-memory",
        "--json",
    ]
    assert main(argv) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["trained_checkpoint"] == "pretrained/mnist-784-800-10.pt"
    assert row["ratio_vs_relu_trained"] == pytest.approx(row["stdbp_trained_step_ms"] / row["relu_step_ms"], rel=1e-2)
    assert main([*argv, "--no-trained"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert "stdbp_trained_step_ms" not in row


def test_memory_probe_sets_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes run with PROBE_MALLOC whatever the caller's environment; --default-malloc leaves glibc's defaults."""
    from types import SimpleNamespace

    from stdbp.bench import step_timing as bench

    seen = []

    def fake_run(cmd, capture_output, text, env):
        seen.append(env.get("MALLOC_MMAP_THRESHOLD_"))
        return SimpleNamespace(returncode=0, stdout=f"{len(seen)}.5\n", stderr="")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "999")
    assert bench.memory_probe("784-20-10", 8, "relu", runs=3) == 2.5  # the median
    assert bench.memory_probe("784-20-10", 8, "relu", runs=1, default_malloc=True) == 4.5
    assert seen == ["65536", "65536", "65536", None]
