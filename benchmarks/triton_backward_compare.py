"""Another version of the Triton linear kernel against this one, on a CUDA device: results and timings.

Usage:
    git show 02f1054:stdbp/kernels/triton_linear.py > /tmp/serial_triton_linear.py
    python benchmarks/triton_backward_compare.py /tmp/serial_triton_linear.py [--batch-size 64 1024]

For each batch size (real MNIST images, latency coded; a 784-800 layer of random weights), one
forward and backward of ``RelpspLinearTriton`` from each file: whether the output times and the
weight and input gradients are bitwise equal, the largest input-gradient difference, and the
median milliseconds of forward plus backward over 20 repeats (CUDA events).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from types import ModuleType

import torch

from stdbp.bench.step_timing import mnist_batches
from stdbp.kernels import triton_linear
from stdbp.training.loop import encode


def load_kernel(path: str) -> ModuleType:
    """The kernel file at ``path``, imported inside ``stdbp.kernels`` so that its relative imports resolve."""
    spec = importlib.util.spec_from_file_location("stdbp.kernels._compared", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def forward_backward(module: ModuleType, t: torch.Tensor, w: torch.Tensor, g: torch.Tensor, repeats: int):
    """``(output, input gradient, weight gradient, median ms)`` of ``module.RelpspLinearTriton``."""
    times = []
    for _ in range(repeats + 1):
        ti, wi = t.clone().requires_grad_(), w.clone().requires_grad_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = module.RelpspLinearTriton.apply(ti, wi, 1.0)
        out.backward(g)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return out.detach(), ti.grad, wi.grad, statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", help="a version of stdbp/kernels/triton_linear.py")
    parser.add_argument("--batch-size", nargs="+", type=int, default=[64, 1024])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("triton_backward_compare.py: no CUDA device", file=sys.stderr)
        return 2
    other = load_kernel(args.other)
    torch.manual_seed(0)
    for batch_size in args.batch_size:
        images, _ = mnist_batches(batch_size, 1)[0]
        t = encode(images, 1.0).flatten(1).cuda()
        w = torch.randn(800, 784, device="cuda") * 0.05 + 0.01
        g = torch.randn(batch_size, 800, device="cuda")
        o0, gi0, gw0, ms0 = forward_backward(other, t, w, g, args.repeats)
        o1, gi1, gw1, ms1 = forward_backward(triton_linear, t, w, g, args.repeats)
        print(
            f"batch {batch_size}: {args.other} {ms0:.3f} ms, this one {ms1:.3f} ms (forward + backward); "
            f"outputs equal {torch.equal(o0, o1)}, weight gradients equal {torch.equal(gw0, gw1)}, "
            f"input gradients equal {torch.equal(gi0, gi1)} (largest difference {float((gi0 - gi1).abs().max()):.2e}"
            f" of {float(gi0.abs().max()):.2e}); {int(torch.isfinite(o0).sum())} of {o0.numel()} neurons fired",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
