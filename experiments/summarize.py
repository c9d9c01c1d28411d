"""Print the README's results table from the run directories under results/.

Usage: python experiments/summarize.py results/table1 [more result dirs...] [--frontier] [--plot PNG]
       [--size-plot PNG [--relu DIR]]

Each run directory holds config.json and metrics.jsonl written by `stdbp train`; runs are
grouped by (dataset, arch) and summarised over seeds: final test accuracy (mean, sample std,
min-max), epochs, total training wall time and seconds per epoch (both as logged, eval included).
``--frontier`` lists every run instead, finished or not, with its network's size (weights, dense
multiply-accumulates per image), last and best test accuracy and train accuracy: accuracy against
network size and epochs. ``--plot`` draws each run's test accuracy per epoch; ``--size-plot``
the last test accuracy of every finished run against its dense multiply-accumulates per image,
with the ReLU twins that ``experiments/relu_fit.py`` measured (``--relu``, default
results/beyond/relu-fit) beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

#: options that are not part of a run's recipe (what it trains, how long, where, how often it saves)
NOT_RECIPE = {"arch", "dataset", "data_dir", "epochs", "seed", "train_limit", "eval_batch_size", "checkpoint_every"}


def recipe_defaults() -> dict:
    """Every option of a run's recipe with the default of `stdbp train` (from `TrainConfig`)."""
    from stdbp.training.config import TrainConfig

    return {key: value for key, value in dataclasses.asdict(TrainConfig()).items() if key not in NOT_RECIPE}


#: issue 19's targets, test accuracy in %
TARGETS = {"mnist": 99.5, "fashion-mnist": 93.0}


def recipe_flags(config: dict) -> str:
    """The `stdbp train` flags of the options that differ from the defaults, e.g. ``--shift 2``."""
    flags = [
        f"--{key.replace('_', '-')} {config[key]:g}"
        if isinstance(config[key], float)
        else f"--{key.replace('_', '-')} {config[key]}"
        for key, default in recipe_defaults().items()
        if config.get(key, default) != default
    ]
    return " ".join(flags)


def load_runs(roots: list[Path]) -> dict[tuple[str, str, int, str], list[dict]]:
    """The finished runs, grouped by dataset, network, epochs and recipe."""
    groups: dict[tuple[str, str, int, str], list[dict]] = defaultdict(list)
    for run in load_all_runs(roots):
        config = run["config"]
        if run["rows"][-1]["epoch"] == config["epochs"]:
            groups[(config["dataset"], config["arch"], config["epochs"], recipe_flags(config))].append(run)
    return groups


def command(config: dict, run_dir: Path) -> str:
    """The command that made a run; a run extended with --resume says so (its log has the first part)."""
    first = (run_dir / "train.log").read_text().split("== resume", 1) if (run_dir / "train.log").exists() else [""]
    epochs = config["epochs"]
    if len(first) > 1:  # resumed: the first part ran for the epochs its log shows
        epochs = sum(1 for line in first[0].splitlines() if line.startswith("epoch "))
    flags = f"--arch {config['arch']} --epochs {epochs} --seed {config['seed']}"
    if config["dataset"] != "mnist":
        flags += f" --dataset {config['dataset']}"
    if recipe_flags(config):
        flags += " " + recipe_flags(config)
    cmd = f"stdbp train {flags}"
    if len(first) > 1:
        cmd += f"`, then `stdbp train --resume RUN_DIR --epochs {config['epochs']}"
    return cmd


@functools.cache
def network_size(arch: str) -> tuple[int, int]:
    """Trainable weights and dense multiply-accumulates per image of a network in the paper's notation."""
    from stdbp.nn import build
    from stdbp.paper.analysis import dense_macs
    from stdbp.sim.events import event_network

    net = build(arch)
    weights = sum(int(layer.weight.numel()) for layer in net.layers if hasattr(layer, "weight"))
    return weights, sum(dense_macs(event_network(net)))


def load_all_runs(roots: list[Path]) -> list[dict]:
    """Every run directory under the roots, finished or not, with its per-epoch rows."""
    runs = []
    for root in roots:
        for metrics in sorted(root.glob("*/metrics.jsonl")):
            config = json.loads((metrics.parent / "config.json").read_text())
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            if rows:
                runs.append({"config": config, "rows": rows, "dir": metrics.parent})
    return runs


def print_frontier(runs: list[dict]) -> None:
    """One row per run: size, epochs done, final and best test accuracy, train accuracy, time per epoch."""
    print(
        "| dataset | network | weights | dense MACs/image | recipe | seed | epochs | test % (last) | "
        "best test % (epoch) | train % (last) | s/epoch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def order(run: dict) -> tuple[str, int, str]:  # by dataset, then network size
        return run["config"]["dataset"], network_size(run["config"]["arch"])[1], run["dir"].name

    for run in sorted(runs, key=order):
        config, rows = run["config"], run["rows"]
        weights, macs = network_size(config["arch"])
        best = max(rows, key=lambda r: r["test_accuracy"])
        done = f"{rows[-1]['epoch']}" + ("" if rows[-1]["epoch"] == config["epochs"] else f" of {config['epochs']}")
        print(
            f"| {config['dataset']} | {config['arch']} | {weights / 1e6:.2f} M | {macs / 1e6:.2f} M | "
            f"{recipe_flags(config) or 'defaults'} | {config['seed']} | {done} | {100 * rows[-1]['test_accuracy']:.2f} | "
            f"{100 * best['test_accuracy']:.2f} ({best['epoch']}) | {100 * rows[-1]['train_accuracy']:.2f} | "
            f"{statistics.median(r['seconds'] for r in rows):.0f} |"
        )


def plot_curves(runs: list[dict], path: Path, targets: dict[str, float]) -> None:
    """Test accuracy per epoch of every run, one panel per dataset, with the target as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({run["config"]["dataset"] for run in runs})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for run in sorted((r for r in runs if r["config"]["dataset"] == dataset), key=lambda r: r["dir"].name):
            config, rows = run["config"], run["rows"]
            label = f"{config['arch']} {recipe_flags(config)} seed {config['seed']}, {config['epochs']} epochs"
            ax.plot([r["epoch"] for r in rows], [100 * r["test_accuracy"] for r in rows], label=label, lw=1.2)
        if dataset in targets:
            ax.axhline(targets[dataset], color="k", ls="--", lw=0.8, label=f"target {targets[dataset]:g} %")
        finals = [100 * run["rows"][-1]["test_accuracy"] for run in runs if run["config"]["dataset"] == dataset]
        top = max(finals + [targets.get(dataset, 0.0)])
        ax.set_ylim(min(finals) - 1.0, top + 0.3)
        ax.set_title(dataset)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    print(f"wrote {path}", file=sys.stderr)


def finished_points(runs: list[dict]) -> list[dict]:
    """Every finished run as a point: dataset, dense MACs per image, last test %, recipe, epochs."""
    points = []
    for run in runs:
        config, rows = run["config"], run["rows"]
        if rows[-1]["epoch"] == config["epochs"]:
            points.append(
                {
                    "dataset": config["dataset"],
                    "macs": network_size(config["arch"])[1],
                    "test": 100 * rows[-1]["test_accuracy"],
                    "recipe": recipe_flags(config) or "defaults",
                    "epochs": config["epochs"],
                }
            )
    return points


def relu_points(root: Path) -> list[dict]:
    """The ReLU twins under ``root`` (``DATASET-ARCH[-TAG]-seedS.jsonl`` of experiments/relu_fit.py)
    as points: dataset, dense MACs per image of the spiking network of that shape, last test %, epochs."""
    from stdbp.nn import parse_arch

    points = []
    for path in sorted(root.rglob("*-seed*.jsonl")):
        name = path.name.rsplit("-seed", 1)[0]
        dataset = next((d for d in ("fashion-mnist", "mnist") if name.startswith(d + "-")), None)
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if dataset is None or not rows:
            continue
        tokens = name[len(dataset) + 1 :].split("-")
        for end in range(len(tokens), 0, -1):  # the longest prefix that is a network (a tag may follow)
            arch = "-".join(tokens[:end])
            try:
                parse_arch(arch)
            except ValueError:
                continue
            points.append(
                {
                    "dataset": dataset,
                    "macs": network_size(arch)[1],
                    "test": 100 * rows[-1]["test_accuracy"],
                    "epochs": rows[-1]["epoch"],
                }
            )
            break
    return points


def plot_sizes(points: list[dict], relu: list[dict], path: Path, targets: dict[str, float]) -> None:
    """Last test accuracy against dense MACs per image, one panel per dataset: the measured frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({p["dataset"] for p in points})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        mine = [p for p in points if p["dataset"] == dataset]
        for defaults, style in ((True, dict(color="C0", label="spiking, defaults")), (False, dict(color="C1"))):
            chosen = [p for p in mine if (p["recipe"] == "defaults") == defaults]
            label = style.pop("label", "spiking, other recipes")
            ax.scatter([p["macs"] for p in chosen], [p["test"] for p in chosen], s=22, label=label, **style)
        most = statistics.mode(p["epochs"] for p in mine)
        for p in mine:
            if p["epochs"] != most:
                ax.annotate(
                    f"{p['epochs']} ep", (p["macs"], p["test"]), fontsize=7, xytext=(4, -8), textcoords="offset points"
                )
        twins = [p for p in relu if p["dataset"] == dataset]
        if twins:
            ax.scatter(
                [p["macs"] for p in twins],
                [p["test"] for p in twins],
                marker="s",
                facecolors="none",
                edgecolors="C2",
                s=36,
                label="ReLU network of the same shape",
            )
            for p in twins:
                ax.annotate(
                    f"{p['epochs']} ep", (p["macs"], p["test"]), fontsize=7, xytext=(4, 2), textcoords="offset points"
                )
        if dataset in targets:
            ax.axhline(targets[dataset], color="k", ls="--", lw=0.8, label=f"target {targets[dataset]:g} %")
        ax.set_xscale("log")
        ax.set_title(dataset)
        ax.set_xlabel("dense multiply-accumulates per image")
        ax.set_ylabel(f"test accuracy % (last epoch; {most} epochs unless marked)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="*", type=Path, help="directories of run directories (default results/table1)")
    parser.add_argument("--frontier", action="store_true", help="one row per run, finished or not, with its size")
    parser.add_argument("--plot", type=Path, help="also write test accuracy per epoch of every run to this image")
    parser.add_argument(
        "--size-plot", type=Path, help="also write last test accuracy against network size to this image"
    )
    parser.add_argument("--relu", type=Path, default=Path("results/beyond/relu-fit"), help="ReLU twins for --size-plot")
    args = parser.parse_args(argv)
    roots = args.roots or [Path("results/table1")]
    if args.frontier or args.plot or args.size_plot:
        runs = load_all_runs(roots)
        if args.frontier:
            print_frontier(runs)
        if args.plot:
            plot_curves(runs, args.plot, TARGETS)
        if args.size_plot:
            plot_sizes(finished_points(runs), relu_points(args.relu), args.size_plot, TARGETS)
        return 0
    print(
        "| dataset | network | seeds | test accuracy % (mean ± std) | min-max % | epochs | wall time per run | s/epoch | non-finite steps | command |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (dataset, arch, _, _), runs in sorted(load_runs(roots).items()):
        accs = [100 * run["rows"][-1]["test_accuracy"] for run in runs]
        walls = [sum(r["seconds"] for r in run["rows"]) for run in runs]
        epochs = runs[0]["config"]["epochs"]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        nonfinite = sum(run["rows"][-1]["nonfinite_steps"] for run in runs)
        seeds = ",".join(str(run["config"]["seed"]) for run in runs)
        cmd = command(runs[0]["config"], runs[0]["dir"])
        if len(runs) > 1:
            cmd = cmd.replace(f"--seed {runs[0]['config']['seed']}", "--seed S")
        print(
            f"| {dataset} | {arch} | {seeds} | {statistics.mean(accs):.2f}"
            + (f" ± {std:.2f}" if len(accs) > 1 else " (1 seed)")
            + f" | {min(accs):.2f}-{max(accs):.2f} | "
            f"{epochs} | {statistics.mean(walls) / 60:.1f} min | {statistics.mean(walls) / epochs:.1f} | {nonfinite} | `{cmd}` |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
