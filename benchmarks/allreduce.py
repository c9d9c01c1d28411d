"""Time the one all-reduce per training step of data-parallel stdbp (docs/distributed.md).

Usage: torchrun --standalone --nproc_per_node=2 benchmarks/allreduce.py [--arch 784-800-10 ...]

For each architecture: the float32 values one step reduces (every weight's gradient, plus the
loss sum, accuracy count and stop flag), their bytes, and the median time of ``all_reduce`` on
that buffer over ``--repeats`` calls after a warm-up, as the training step makes it (gloo on CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from stdbp import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["784-800-10", "28x28-6C5-P2-16C5-P2-1024-128-10"])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    for arch in args.arch:
        values = sum(p.numel() for p in build(arch).parameters()) + 3
        buffer = torch.ones(values)
        for _ in range(10):
            dist.all_reduce(buffer)
        times = []
        for _ in range(args.repeats):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(buffer)
            times.append(1000 * (time.perf_counter() - start))
        if dist.get_rank() == 0:
            print(
                f"{arch}: {values} float32 values, {4 * values / 2**20:.2f} MiB, all_reduce median {statistics.median(times):.2f} ms over {dist.get_world_size()} processes"
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
