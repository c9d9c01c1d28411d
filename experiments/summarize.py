"""Print the README's results table from the run directories under results/.

Usage: python experiments/summarize.py results/table1 [more result dirs...]

Each run directory holds config.json and metrics.jsonl written by `stdbp train`; runs are
grouped by (dataset, arch) and summarised over seeds: final test accuracy (mean, sample std,
min-max), epochs, total training wall time and seconds per epoch (both as logged, eval included).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

#: options that are part of a run's recipe, with the defaults of `stdbp train`
RECIPE = {
    "batch_size": 64,
    "lr": 0.001,
    "schedule": "cosine",
    "tau": 0.05,
    "threshold": 1.0,
    "t_max": 1.0,
    "jitter": 0.02,
    "shift": 1,
    "rotate": 0.0,
    "scale": 0.0,
}


def recipe_flags(config: dict) -> str:
    """The `stdbp train` flags of the options that differ from the defaults, e.g. ``--shift 2``."""
    flags = [
        f"--{key.replace('_', '-')} {config[key]:g}"
        if isinstance(config[key], float)
        else f"--{key.replace('_', '-')} {config[key]}"
        for key, default in RECIPE.items()
        if config.get(key, default) != default
    ]
    return " ".join(flags)


def load_runs(roots: list[Path]) -> dict[tuple[str, str, int, str], list[dict]]:
    groups: dict[tuple[str, str, int, str], list[dict]] = defaultdict(list)
    for root in roots:
        for metrics in sorted(root.glob("*/metrics.jsonl")):
            config = json.loads((metrics.parent / "config.json").read_text())
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            if not rows or rows[-1]["epoch"] != config["epochs"]:
                continue  # unfinished
            groups[(config["dataset"], config["arch"], config["epochs"], recipe_flags(config))].append(
                {"config": config, "rows": rows, "dir": metrics.parent}
            )
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


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path("results/table1")]
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
