"""``stdbp reproduce``: the paper's Table 1, Fig. 5 and Section 2 comparison in one command, with a report.

1. **Table 1**: the MNIST test accuracy of each of the paper's three architectures, from the
   pretrained checkpoint ``pretrained/mnist-ARCH.pt`` if there is one (evaluated), else trained
   here with the README recipe of that row (:data:`RECIPES`: 20 epochs for the fully connected
   networks; 30 epochs with random rotations and scaling for the convolutional one).
2. **Fig. 5**: :func:`stdbp.paper.analysis.analyze_checkpoint` on the two fully connected networks.
3. **Section 2**: :func:`stdbp.paper.psp_comparison.compare_psp`, ReL-PSP against alpha-PSP on 784-400-10.

The output directory receives ``report.md`` (ours beside the paper's, with the command behind
each number), ``reproduce.json`` and the figures (``fig5/ARCH/``, ``compare_psp/``). ``quick``
trains every network on a few images for one epoch and analyses a thousand test images, so that
CI checks every step in a few minutes; its numbers are not the paper's, and the report says so.
The quick run always trains (it ignores pretrained checkpoints).

Finished work is reused: a training run whose ``config.json`` matches is not trained again
(an unfinished one is resumed), and a ``compare_psp.json`` of the same configuration is kept,
so an interrupted full run continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import torch

from ..checkpoint import atomic_write_text, default_pretrained_dir, load_checkpoint, load_model, pretrained_checkpoint
from ..errors import StdbpError
from ..training.data import load_dataset
from ..training.loop import TrainConfig, evaluate, train
from ..version import __version__
from .analysis import analyze_checkpoint
from .psp_comparison import ComparePspConfig, compare_psp
from .reporting import json_safe

__all__ = ["ARCHS", "PAPER", "Budget", "QUICK", "FULL", "reproduce", "add_parser", "run"]

#: The paper's Table 1 architectures (ours: the three STDBP rows).
ARCHS = ("784-400-10", "784-800-10", "28x28-6C5-P2-16C5-P2-1024-128-10")
FC_ARCHS = ARCHS[:2]
COMPARE_ARCH = "784-400-10"
#: The paper's numbers, in percent.
PAPER: dict[str, dict[str, Any]] = {
    "table1": {"784-400-10": 98.1, "784-800-10": 98.4, "28x28-6C5-P2-16C5-P2-1024-128-10": 99.2},
    "fig5": {"784-400-10": {"hidden_fired_before_decision": 48.6, "hidden_fired": 66.3}},
}


@dataclass(frozen=True)
class Budget:
    """How much to train and analyse. ``None`` limits mean the whole dataset."""

    epochs: int = 20
    train_limit: int | None = None
    analyze_limit: int | None = None
    compare_epochs: int = ComparePspConfig.epochs
    compare_train_limit: int | None = None
    compare_heldout: int = ComparePspConfig.heldout
    compare_test_limit: int | None = None
    recipes: bool = True  # train with RECIPES (else every network for ``epochs`` with the defaults)


FULL = Budget()

#: The README's training recipe per architecture, beyond ``TrainConfig``'s defaults (a budget's
#: ``epochs`` applies where a recipe has none); used when ``Budget.recipes``.
RECIPES: dict[str, dict[str, Any]] = {"28x28-6C5-P2-16C5-P2-1024-128-10": {"epochs": 30, "rotate": 10.0, "scale": 0.1}}
QUICK = Budget(
    epochs=1, train_limit=4096, analyze_limit=1000, compare_epochs=1, compare_train_limit=2048, recipes=False
)


def _flag(name: str, value: Any) -> str:
    return "" if value is None else f" --{name} {value}"


def _table1_row(
    arch: str,
    budget: Budget,
    pretrained: Path | None,
    run_dir: Path,
    data_dir: str | None,
    progress: bool,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Test accuracy of ``arch``: the pretrained checkpoint evaluated, or a run trained (or reused) in ``run_dir``."""
    if pretrained is not None:
        model = load_model(pretrained, arch=arch)
        trained = load_checkpoint(pretrained).get("config", {})
        test = load_dataset("mnist", data_dir, splits=("test",))["test"]
        result = evaluate(model.eval(), test, t_max=trained.get("t_max", 1.0), progress=progress)
        command = f"stdbp eval {pretrained}{_flag('data-dir', data_dir)}"
        return {
            "arch": arch,
            "accuracy": result["accuracy"],
            "source": "pretrained",
            "checkpoint": str(pretrained),
            "command": command,
        }
    recipe = {"epochs": budget.epochs, **(RECIPES.get(arch, {}) if budget.recipes else {})}
    config = TrainConfig(arch=arch, train_limit=budget.train_limit, data_dir=data_dir, **recipe)
    saved = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else None
    same = saved == dataclasses.asdict(config)
    if same and (run_dir / "model.pt").is_file():
        echo(f"  reusing the finished run {run_dir}")
    elif same and (run_dir / "checkpoint.pt").is_file():
        train(config, run_dir, resume=True, progress=progress, echo=echo)
    else:
        train(config, run_dir, force=True, progress=progress, echo=echo)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    flags = "".join(_flag(key, value) for key, value in recipe.items())
    command = f"stdbp train --arch {arch}{flags}{_flag('train-limit', budget.train_limit)}{_flag('data-dir', data_dir)} --out {run_dir}"
    return {
        "arch": arch,
        "accuracy": last["test_accuracy"],
        "source": "trained",
        "checkpoint": str(run_dir / "model.pt"),
        "command": command,
        "epochs": last["epoch"],
    }


def _fig5(checkpoint: str, out: Path, budget: Budget, data_dir: str | None, progress: bool) -> dict[str, Any]:
    """:func:`analyze_checkpoint` and the command that repeats it; histograms left in ``out/analysis.json``."""
    result = analyze_checkpoint(checkpoint, out, data_dir=data_dir, limit=budget.analyze_limit, progress=progress)
    summary = {k: v for k, v in result.items() if k not in ("histograms", "definitions")}
    summary["out"] = str(out)
    summary["command"] = (
        f"stdbp analyze {checkpoint} --out {out}{_flag('limit', budget.analyze_limit)}{_flag('data-dir', data_dir)}"
    )
    return summary


def _section2(out: Path, budget: Budget, progress: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """:func:`compare_psp` on 784-400-10 (or its saved result of the same configuration): final rows per kernel."""
    options: dict[str, Any] = {"heldout": budget.compare_heldout, "test_limit": budget.compare_test_limit}
    config = ComparePspConfig(
        arch=COMPARE_ARCH, epochs=budget.compare_epochs, train_limit=budget.compare_train_limit, **options
    )
    saved_path = out / "compare_psp.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
    if saved is not None and saved.get("config") == dataclasses.asdict(config):
        echo(f"  reusing {saved_path}")
        result = saved
    else:
        result = compare_psp(
            arch=config.arch,
            epochs=config.epochs,
            train_limit=config.train_limit,
            out_dir=out,
            progress=progress,
            echo=echo,
            **options,
        )
    command = f"stdbp compare-psp --arch {config.arch} --epochs {config.epochs}{_flag('train-limit', config.train_limit)} --out {out}"
    extra = {k: v for k, v in options.items() if v != getattr(ComparePspConfig, k)}
    return {
        "config": dataclasses.asdict(config),
        "final": {kernel: json_safe(run_["history"][-1]) for kernel, run_ in result["kernels"].items()},
        "figures": [Path(f).name for f in result.get("figures", [])],
        "out": str(out),
        "command": command
        + (
            f"  (with {', '.join(f'{k}={v}' for k, v in extra.items())}, which only the Python API sets)"
            if extra
            else ""
        ),
    }


def reproduce(
    out_dir: str | Path = "runs/reproduce",
    quick: bool = False,
    pretrained_dir: str | Path | None = None,
    data_dir: str | None = None,
    budget: Budget | None = None,
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every step (module docstring) and write ``report.md`` and ``reproduce.json`` into ``out_dir``.

    Args:
        out_dir: output directory (created).
        quick: tiny budgets (:data:`QUICK`), always training; the report says its numbers are not the paper's.
        pretrained_dir: where to look for ``mnist-ARCH.pt`` (full run only); default :func:`default_pretrained_dir`.
        data_dir: an MNIST IDX directory instead of the packaged copy (Table 1 and Fig. 5).
        budget: overrides the budget that ``quick`` selects (tests use an even smaller one).
        progress: progress bars.
        echo: receives one line per step.

    Returns:
        The content of ``reproduce.json``.
    """
    from .report import render_report

    start = time.perf_counter()
    budget = budget or (QUICK if quick else FULL)
    pretrained = None if quick else (Path(pretrained_dir) if pretrained_dir is not None else default_pretrained_dir())
    if pretrained is not None and not pretrained.is_dir():
        raise StdbpError(f"--pretrained {pretrained} is not a directory")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "quick": quick,
        "budget": dataclasses.asdict(budget),
        "reduced_budget": budget != (QUICK if quick else FULL),
        "pretrained_dir": None if pretrained is None else str(pretrained),
        "data_dir": data_dir,
        "paper": PAPER,
        "environment": {
            "stdbp": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        },
        "table1": [],
        "fig5": {},
        "seconds": {},
    }
    steps = len(ARCHS) + len(FC_ARCHS) + 1
    checkpoints = {}
    for k, arch in enumerate(ARCHS, 1):
        echo(f"[{k}/{steps}] Table 1: {arch}")
        t0 = time.perf_counter()
        row = _table1_row(
            arch,
            budget,
            pretrained_checkpoint(pretrained, arch),
            out / ("train-quick" if quick else "train") / arch,
            data_dir,
            progress,
            echo,
        )
        summary["table1"].append(row)
        checkpoints[arch] = row["checkpoint"]
        summary["seconds"][f"table1 {arch}"] = time.perf_counter() - t0
        echo(f"  test accuracy {100 * row['accuracy']:.2f}% (paper {PAPER['table1'][arch]}%)")
    for k, arch in enumerate(FC_ARCHS, len(ARCHS) + 1):
        echo(f"[{k}/{steps}] Fig. 5: analyze {arch}")
        t0 = time.perf_counter()
        summary["fig5"][arch] = _fig5(checkpoints[arch], out / "fig5" / arch, budget, data_dir, progress)
        summary["seconds"][f"fig5 {arch}"] = time.perf_counter() - t0
    echo(f"[{steps}/{steps}] Section 2: ReL-PSP vs alpha-PSP on {COMPARE_ARCH}")
    t0 = time.perf_counter()
    summary["section2"] = _section2(out / "compare_psp", budget, progress, echo)
    summary["seconds"]["section2"] = time.perf_counter() - t0
    summary["wall_seconds"] = time.perf_counter() - start
    summary["out"] = str(out)
    atomic_write_text(out / "reproduce.json", json.dumps(json_safe(summary), indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "report.md", render_report(summary))
    return summary


def _budget_overrides(base: Budget, items: list[str]) -> Budget:
    """``base`` with ``KEY=VALUE`` overrides (``VALUE`` an int or ``none``), for the hidden ``--budget`` option."""
    fields = {f.name for f in dataclasses.fields(Budget)}
    changes: dict[str, int | None] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in fields or not value:
            raise StdbpError(f"--budget {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        try:
            changes[key] = None if value.lower() == "none" else int(value)
        except ValueError:
            raise StdbpError(f"--budget {item!r}: the value must be an integer or 'none'") from None
    return dataclasses.replace(base, **cast(dict[str, Any], changes))  # fields checked above; values int or None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``stdbp reproduce`` on the CLI's subparsers; it runs :func:`run`."""
    p = subparsers.add_parser(
        "reproduce",
        help="Table 1, Fig. 5 and the Section 2 comparison in one report",
        description="Reproduce the paper's Table 1 (train, or evaluate pretrained/mnist-ARCH.pt), Fig. 5 (stdbp analyze on the "
        "fully connected networks) and the Section 2 comparison (stdbp compare-psp), and write report.md beside the paper's numbers.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny budgets that check every step in a few minutes (numbers are not the paper's)",
    )
    p.add_argument("--out", default="runs/reproduce", help="output directory (default runs/reproduce)")
    p.add_argument(
        "--pretrained",
        help="directory of mnist-ARCH.pt checkpoints (default ./pretrained where it exists; --quick ignores it)",
    )
    p.add_argument("--data-dir", help="MNIST IDX directory for Table 1 and Fig. 5 (default: the packaged copy)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)  # for tests
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``stdbp reproduce`` from parsed arguments; return the exit status."""
    budget = _budget_overrides(QUICK if args.quick else FULL, args.budget)
    summary = reproduce(
        args.out,
        args.quick,
        args.pretrained,
        args.data_dir,
        budget,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(f"wrote {Path(args.out) / 'report.md'} ({summary['wall_seconds']:.0f} s)")
    return 0
