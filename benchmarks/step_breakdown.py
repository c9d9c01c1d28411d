"""Where the time of whole stdbp training steps goes: kernels, loss, Adam and the rest (the README's "Speed").

Usage: python benchmarks/step_breakdown.py [--arch 784-800-10] [--batch-size 64] [--steps 200] [--per-kernel]

Runs ``--steps`` training steps of a freshly initialised network on real MNIST batches (as
``stdbp bench`` does: ``stdbp.training.step.loss_and_backward``, then fused Adam) and, interleaved, of the
same-shape ReLU network, and reports per step the median wall time of: the whole step; the
forward and backward numba kernels (each call timed, summed per step); the Adam update; and
what is left (the loss, Python, tensor conversions). The kernels' sum plus Adam is a floor
for any implementation of this step that keeps the kernels: compare it with the ReLU step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from stdbp.bench.step_timing import mnist_batches, relu_network
from stdbp.kernels import numba_conv, numba_linear, numba_linear_backward, numba_pool, numba_stack
from stdbp.nn.network import build
from stdbp.training.loop import encode
from stdbp.training.step import loss_and_backward

KERNELS = {
    "forward": [
        (numba_stack, "stack_forward"),
        (numba_conv, "weight_layout"),
        (numba_conv, "relpsp_conv2d_forward"),
        (numba_pool, "pool_forward"),
        (numba_linear, "relpsp_linear_forward"),
    ],
    "backward": [
        (numba_stack, "scale_gradient"),
        (numba_stack, "abs_max"),
        (numba_stack, "input_gradient"),
        (numba_stack, "weight_gradient_correction"),
        (numba_linear_backward, "relpsp_linear_backward_weight"),
        (numba_linear_backward, "relpsp_linear_backward_weight_rows"),
        (numba_linear_backward, "relpsp_linear_backward_input"),
        (numba_linear_backward, "relpsp_linear_backward_input_narrow"),
        (numba_linear, "saturate_"),
        (numba_conv, "relpsp_conv2d_backward"),
        (numba_conv, "weight_gradient"),
        (numba_pool, "pool_backward"),
        (torch, "mm"),
    ],
}


def instrument(spent: dict[str, float], calls: dict[str, float]) -> None:
    """Wrap every kernel entry point so that its wall time is added to ``spent[kind]`` and to
    ``calls["name shape"]`` (the shape of its first argument tells the layers apart)."""
    for kind, entries in KERNELS.items():
        for module, name in entries:
            original = getattr(module, name)

            def timed(*args, _original: Callable = original, _kind: str = kind, _name: str = name, **kwargs):
                start = time.perf_counter()
                result = _original(*args, **kwargs)
                seconds = time.perf_counter() - start
                spent[_kind] += seconds
                shape = "x".join(map(str, getattr(args[0], "shape", ()))) if args else ""
                calls[f"{_name} {shape}"] += seconds
                return result

            setattr(module, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="784-800-10")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--per-kernel", action="store_true", help="also each kernel call's median per step")
    args = parser.parse_args()

    batches = mnist_batches(args.batch_size, 8)
    spatial = "x" in args.arch.split("-")[0]
    coded = [(encode(images, 1.0), labels) for images, labels in batches]
    floats = [
        ((images.float() / 255).unsqueeze(1) if spatial else (images.float() / 255).flatten(1), labels)
        for images, labels in batches
    ]
    torch.manual_seed(0)
    model, relu = build(args.arch), relu_network(args.arch)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    relu_adam = torch.optim.Adam(relu.parameters(), lr=1e-3, fused=True)
    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, float] = defaultdict(float)
    rows: dict[str, list[float]] = defaultdict(list)
    per_kernel: dict[str, list[float]] = defaultdict(list)
    instrument(spent, calls)

    def stdbp_step(i: int) -> None:
        t_in, labels = coded[i % len(coded)]
        spent.clear()
        calls.clear()
        start = time.perf_counter()
        adam.zero_grad(set_to_none=True)
        loss_and_backward(model, t_in, labels, tau=0.05)
        adam_start = time.perf_counter()
        adam.step()
        end = time.perf_counter()
        rows["step"].append(end - start)
        rows["forward kernels"].append(spent["forward"])
        rows["backward kernels"].append(spent["backward"])
        rows["Adam"].append(end - adam_start)
        rows["the rest"].append((end - start) - spent["forward"] - spent["backward"] - (end - adam_start))
        for call, seconds in calls.items():
            per_kernel[call].append(seconds)

    def relu_step(i: int) -> None:
        x, labels = floats[i % len(floats)]
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(relu(x), labels)
        relu_adam.zero_grad(set_to_none=True)
        loss.backward()
        relu_adam.step()
        rows["ReLU step"].append(time.perf_counter() - start)

    for i in range(10):
        stdbp_step(i)
        relu_step(i)
    rows.clear()
    per_kernel.clear()
    for i in range(args.steps):
        stdbp_step(i)
        relu_step(i)
    print(
        f"{args.arch}, batch {args.batch_size}, fresh network, medians of {args.steps} steps (ms), {torch.get_num_threads()} threads"
    )
    for name, values in rows.items():
        print(f"  {name:18s} {1000 * statistics.median(values):7.2f}")
    floor = (
        statistics.median(rows["forward kernels"])
        + statistics.median(rows["backward kernels"])
        + statistics.median(rows["Adam"])
    )
    print(f"  kernels + Adam     {1000 * floor:7.2f}  ({floor / statistics.median(rows['ReLU step']):.2f} ReLU steps)")
    if args.per_kernel:
        print("  per kernel call (name, shape of its first argument):")
        for call, values in sorted(per_kernel.items(), key=lambda item: -statistics.median(item[1])):
            print(f"    {1000 * statistics.median(values):7.2f}  {call}")


if __name__ == "__main__":
    main()
