"""How well a ReLU network of the same shape fits a dataset: the yardstick for a spiking network's fit.

Usage: python experiments/relu_fit.py [--arch ARCH] [--dataset fashion-mnist] [--epochs 10] [--shift 1]
       [--erase 0] [--weight-decay 0] [--seed 0] [--out results/beyond/relu-fit] [--tag TAG]
       python experiments/relu_fit.py --spiking MODEL [--dataset fashion-mnist]

Trains ``stdbp.bench.step_timing.relu_network(ARCH)`` (the same layers, ReLU and max-pooling) on
pixel intensities in [0, 1], with what `stdbp train` uses by default: Adam 1e-3 with a cosine
schedule, batch 64, random shifts of up to one pixel, cross-entropy; ``--erase P`` adds `stdbp
train --erase`'s random erasing, ``--weight-decay WD`` its decoupled weight decay (AdamW). After each epoch it prints
and writes (JSON lines, ``OUT/DATASET-ARCH-seedS.jsonl``) the accuracy on the whole training set
without augmentation ("clean") and on the test set. One thread; a 10-epoch run of the paper's
network takes a few minutes. With ``--spiking MODEL`` it prints the same two accuracies of a
trained spiking network (first-spike decisions, `stdbp eval`'s) instead, and writes them beside.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from stdbp.bench.step_timing import relu_network
from stdbp.checkpoint import load_model
from stdbp.training.augment import random_erase, random_shift
from stdbp.training.data import load_dataset
from stdbp.training.loop import evaluate


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Share of ``images`` ``(N, H, W)`` uint8 that ``model`` classifies as ``labels``."""
    correct = 0
    for start in range(0, len(images), 1000):
        x = images[start : start + 1000].unsqueeze(1).float() / 255
        correct += int((model(x).argmax(1) == labels[start : start + 1000]).sum())
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="28x28-6C5-P2-16C5-P2-1024-128-10")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--shift", type=int, default=1)
    parser.add_argument("--erase", type=float, default=0.0, help="random erasing probability")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay (AdamW)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="appended to the output file's name")
    parser.add_argument("--out", default="results/beyond/relu-fit")
    parser.add_argument("--spiking", metavar="MODEL", help="measure this trained spiking network instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset)
    train, test = data["train"], data["test"]
    if args.spiking:
        spiking = load_model(args.spiking)
        row = {
            "model": args.spiking,
            "clean_train_accuracy": evaluate(spiking, train)["accuracy"],
            "test_accuracy": evaluate(spiking, test)["accuracy"],
        }
        print(json.dumps(row))
        model_path = Path(args.spiking)  # a run's model.pt is named by its run directory
        name = model_path.parent.name if model_path.stem == "model" else model_path.stem
        path = Path(args.out) / f"{name}-spiking.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row) + "\n")
        return
    model = relu_network(args.arch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=args.weight_decay)
    steps = args.epochs * ((len(train) + 63) // 64)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(args.seed + 1)
    out = Path(args.out) / f"{args.dataset}-{args.arch}{'-' + args.tag if args.tag else ''}-seed{args.seed}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.train()
        for index in torch.randperm(len(train), generator=generator).split(64):
            x = random_shift(train.images[index], args.shift, generator)
            x = random_erase(x, args.erase, generator).unsqueeze(1).float() / 255
            loss = nn.functional.cross_entropy(model(x), train.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        row = {
            "epoch": epoch,
            "clean_train_accuracy": accuracy(model, train.images, train.labels),
            "test_accuracy": accuracy(model, test.images, test.labels),
            "seconds": time.perf_counter() - start,
        }
        print(json.dumps(row), flush=True)
        with out.open("a") as file:
            file.write(json.dumps(row) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
