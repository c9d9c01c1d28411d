"""What the training augmentations do to images: a grid of the same training images, augmented.

Usage: python experiments/augmentations.py [--dataset mnist] [--images 10] [--out results/beyond/augmentations.png]

Row 1 holds the first training images as they are; each further row applies one recipe of
`stdbp train` (`--rotate 10 --scale 0.1`, then with `--elastic 34` added, then `--elastic 34`
alone), with the same draws `stdbp train` would make from its generator for a batch of these
images, before the shift and the jitter on spike times (which act after, on every recipe alike).
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from stdbp.training.augment import random_affine  # noqa: E402
from stdbp.training.data import load_dataset  # noqa: E402

RECIPES = [
    ("as they are", 0.0, 0.0, 0.0),
    ("--rotate 10 --scale 0.1", 10.0, 0.1, 0.0),
    ("... --elastic 34", 10.0, 0.1, 34.0),
    ("--elastic 34 alone", 0.0, 0.0, 34.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/beyond/augmentations.png")
    args = parser.parse_args()
    images = load_dataset(args.dataset, splits=("train",))["train"].images[: args.images]
    fig, axes = plt.subplots(len(RECIPES), args.images, figsize=(args.images * 0.9, len(RECIPES) * 1.0), squeeze=False)
    for row, (label, degrees, scale, elastic) in enumerate(RECIPES):
        generator = torch.Generator().manual_seed(args.seed + 1)  # as stdbp train seeds its augmentation
        augmented = random_affine(images, degrees, scale, generator, elastic=elastic)
        for col in range(args.images):
            axes[row, col].imshow(augmented[col], cmap="gray", vmin=0, vmax=255)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
