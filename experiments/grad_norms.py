"""Gradient norms of ordinary training steps: what `stdbp train --skip-grad-norm` must stay above.

Usage: python experiments/grad_norms.py NETWORK [NETWORK ...] [--batches 150] [--seed 0]

NETWORK is a model file (a trained network) or an architecture in the paper's notation (a fresh
one, initialised as `stdbp train --seed 0` does). For each, the script draws MNIST training
batches of 64 with the augmentation of the wider networks' recipe (rotations of up to 10
degrees, zooms of up to 10 %, shifts of one pixel, jitter 0.02), computes the loss and exact
gradients as a training step does, and prints percentiles of the gradient's 2-norm (float64)
and of the loss. Nothing is updated.
"""

from __future__ import annotations

import argparse
import math

import torch

from stdbp.checkpoint import load_model
from stdbp.nn import build
from stdbp.training.augment import jitter_times, random_affine, random_shift
from stdbp.training.data import load_dataset
from stdbp.training.loop import encode
from stdbp.training.step import loss_and_backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="+")
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = load_dataset("mnist", None)["train"]
    for network in args.networks:
        torch.manual_seed(args.seed)
        model = load_model(network) if network.endswith(".pt") else build(network)
        model.train()
        generator = torch.Generator().manual_seed(args.seed + 1)
        norms, losses = [], []
        for _ in range(args.batches):
            index = torch.randint(0, len(train), (64,), generator=generator)
            images = random_shift(random_affine(train.images[index], 10.0, 0.1, generator), 1, generator)
            t_in = jitter_times(encode(images, 1.0), 0.02, generator)
            for p in model.parameters():
                p.grad = None
            loss, _ = loss_and_backward(model, t_in, train.labels[index], tau=0.05)
            grads = [p.grad.double() for p in model.parameters() if p.grad is not None]
            norms.append(math.sqrt(sum(float(g.pow(2).sum()) for g in grads)))
            losses.append(loss.item())

        def pct(values: list[float], q: float) -> float:
            return sorted(values)[min(len(values) - 1, int(q * len(values)))]

        print(
            f"{network}: gradient norm p10 {pct(norms, 0.1):.3g}  p50 {pct(norms, 0.5):.3g}  p90 {pct(norms, 0.9):.3g}"
            f"  p99 {pct(norms, 0.99):.3g}  max {max(norms):.3g};  loss p50 {pct(losses, 0.5):.3g}  max {max(losses):.3g}"
            f"  ({args.batches} batches of 64)"
        )


if __name__ == "__main__":
    main()
