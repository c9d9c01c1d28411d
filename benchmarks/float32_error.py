"""How far float32 gradients are from float64 ones: the numba kernels and the PyTorch reference.

Usage: python benchmarks/float32_error.py [--arch 28x28-6C5-P2-16C5-P2-1024-128-10] [--batch-size 64]

One training step's gradients (``stdbp.training.step.loss_and_backward``, a fresh network of
seed 0, real MNIST images) from the numba kernels and from the reference, each in float32 and
float64, against the float64 reference: per parameter, the largest difference as a share of
the largest gradient, and how many entries differ by more than 1e-5 of it. The output times'
largest difference is printed too. The GPU runs the reference (convolutions) and Triton (fully
connected layers), so this says which side of a CPU-GPU difference the rounding is on.
"""

from __future__ import annotations

import argparse
import sys

import torch

from stdbp.bench.step_timing import mnist_batches
from stdbp.nn import EarliestSpikePool2d, SpikingConv2d, SpikingLinear, build
from stdbp.training.loop import encode
from stdbp.training.step import loss_and_backward


def gradients(arch: str, t_in: torch.Tensor, labels: torch.Tensor, backend: str, dtype: torch.dtype):
    """``(per-parameter gradients, output times)`` in float64, of one step with ``backend`` in ``dtype``."""
    torch.manual_seed(0)
    net = build(arch).to(dtype)
    for layer in net.layers:
        if isinstance(layer, (SpikingLinear, SpikingConv2d, EarliestSpikePool2d)):
            layer.backend = backend
    _, t_out = loss_and_backward(net, t_in.to(dtype), labels, tau=0.05)
    return [p.grad.double() for p in net.parameters() if p.grad is not None], t_out.double()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="28x28-6C5-P2-16C5-P2-1024-128-10")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    images, labels = mnist_batches(args.batch_size, 1)[0]
    t_in = encode(images, 1.0)
    truth, t_true = gradients(args.arch, t_in, labels, "reference", torch.float64)
    shapes = " ".join("x".join(map(str, g.shape)) for g in truth)
    print(f"{args.arch}, batch {args.batch_size}; parameters {shapes}")
    for backend in ("numba", "reference"):
        for dtype in (torch.float32, torch.float64):
            grads, t_out = gradients(args.arch, t_in, labels, backend, dtype)
            shares = [(g - g0).abs() / g0.abs().max() for g, g0 in zip(grads, truth)]
            finite = torch.isfinite(t_true)
            print(
                f"{backend:9s} {str(dtype)[6:]}: largest difference / largest gradient "
                + " ".join(f"{float(s.max()):.1e}" for s in shares)
                + "; entries above 1e-5 of it "
                + " ".join(str(int((s > 1e-5).sum())) for s in shares)
                + f"; output times {float((t_out - t_true)[finite].abs().max()):.1e}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
