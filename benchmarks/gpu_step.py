"""Training steps on a CUDA device: stdbp against the same-shape ReLU network, and against the CPU.

Usage: python benchmarks/gpu_step.py [--arch 784-800-10 ...] [--batch-size 64 1024 ...] [--repeats 50] [--json]

On CUDA, stdbp's fully connected layers run the Triton scan (``stdbp.kernels.triton_linear``) and
its convolutions and pooling the PyTorch reference; the steps are those of ``stdbp bench``
(:func:`stdbp.bench.step_timing.make_steps` on the device: the autograd path of
:func:`stdbp.training.step.loss_and_backward`, then fused Adam, as ``stdbp train`` runs it). For
every network and batch size this reports the median milliseconds per step (CUDA events,
interleaved with the ReLU network's step, after warm-up), the peak GPU memory of each, and, from
the same initial weights and batch, how far one step's loss and gradients on the GPU are from
the CPU's numba step: the largest absolute difference of the output spike times, whether the
silent outputs agree, and the largest gradient difference relative to the gradient's scale.
``STDBP_KERNEL=reference`` times the PyTorch reference for every layer instead of Triton.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable

import torch

from stdbp.bench.step_timing import make_steps, mnist_batches
from stdbp.nn import build
from stdbp.training.loop import encode
from stdbp.training.step import loss_and_backward

PAPER_CONV = "28x28-6C5-P2-16C5-P2-1024-128-10"


def time_on_gpu(steps: dict[str, Callable[[int], None]], warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median and minimum milliseconds per step (CUDA events, interleaved) and peak memory in MiB."""
    peaks: dict[str, float] = {}
    for name, step in steps.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for i in range(warmup):
            step(i)
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() / 2**20
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats):
        for name, step in steps.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(r)
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end))
    return {
        name: {"median_ms": statistics.median(t), "min_ms": min(t), "peak_mib": peaks[name]}
        for name, t in times.items()
    }


def agreement(arch: str, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float | bool]:
    """One step from the same weights on the CPU (numba) and the GPU: how far apart the results are."""
    torch.manual_seed(0)
    cpu = build(arch)
    gpu = build(arch).to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    t_in = encode(images, 1.0)
    loss_cpu, out_cpu = loss_and_backward(cpu, t_in, labels, tau=0.05)
    loss_gpu, out_gpu = loss_and_backward(gpu, t_in.cuda(), labels.cuda(), tau=0.05)
    out_gpu = out_gpu.cpu()
    finite = torch.isfinite(out_cpu) & torch.isfinite(out_gpu)
    grad_rel = 0.0
    for p_cpu, p_gpu in zip(cpu.parameters(), gpu.parameters()):
        assert p_cpu.grad is not None and p_gpu.grad is not None
        scale = float(p_cpu.grad.abs().max()) or 1.0
        grad_rel = max(grad_rel, float((p_gpu.grad.cpu() - p_cpu.grad).abs().max()) / scale)
    return {
        "loss_cpu": float(loss_cpu),
        "loss_gpu": float(loss_gpu),
        "output_max_abs_diff": float((out_cpu[finite] - out_gpu[finite]).abs().max()) if finite.any() else 0.0,
        "silent_outputs_agree": bool(torch.equal(torch.isinf(out_cpu), torch.isinf(out_gpu))),
        "grad_max_rel_diff": grad_rel,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["784-800-10", PAPER_CONV])
    parser.add_argument("--batch-size", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_step.py: no CUDA device", file=sys.stderr)
        return 2
    report: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "kernel": os.environ.get("STDBP_KERNEL", "default"),
        "runs": [],
    }
    for arch in args.arch:
        for batch_size in args.batch_size:
            batches = mnist_batches(batch_size, 4)
            steps = make_steps(arch, batches, snn_steps=(), device="cuda")
            timed = time_on_gpu(steps, args.warmup, args.repeats)
            row: dict = {"arch": arch, "batch_size": batch_size, **timed}
            row["stdbp_over_relu"] = timed["stdbp"]["median_ms"] / timed["relu"]["median_ms"]
            row["agreement"] = agreement(arch, *batches[0])
            report["runs"].append(row)
            if not args.json:
                s, r, a = timed["stdbp"], timed["relu"], row["agreement"]
                print(
                    f"{arch} batch {batch_size}: stdbp {s['median_ms']:.2f} ms ({s['peak_mib']:.0f} MiB), "
                    f"ReLU {r['median_ms']:.2f} ms ({r['peak_mib']:.0f} MiB), ratio {row['stdbp_over_relu']:.1f}; "
                    f"vs CPU: outputs {a['output_max_abs_diff']:.2e}, silent agree {a['silent_outputs_agree']}, "
                    f"gradients {a['grad_max_rel_diff']:.2e}",
                    flush=True,
                )
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
