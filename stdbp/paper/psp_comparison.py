"""``stdbp compare-psp``: ReL-PSP against alpha-PSP neurons on the same network, data and budget.

Section 2 of the paper argues that alpha-PSP neurons trained by SpikeProp suffer from exploding
gradients (``dt/dV = -1/V'(t_j)`` with ``V'`` near 0 when the potential only just reaches
threshold) and dead neurons (a leaky PSP that stays sub-threshold); Section 3 that ReL-PSP cures
both. This module measures it: both kernels start from the *same* initial weights and see the
same batches in the same order, with the same Adam optimiser, learning rate and loss
(:func:`stdbp.functional.first_spike_cross_entropy`, ``tau = 0.05`` on the 1-unit latency
window, no augmentation). After every epoch (and once before training, epoch 0) it records for
each kernel: test accuracy, the share of dead hidden neurons (silent on every image of a
held-out batch of test images), percentiles of ``|dt/dV|`` over the hidden spikes of that batch
(float64), percentiles of the per-step gradient norms, and the number of steps whose loss or
gradient was NaN or inf (those updates are skipped). Results go to ``compare_psp.json``; the
figures (see :mod:`stdbp.paper.psp_comparison_plots`) to PNG files beside it.

One asymmetry is deliberate and configurable: the ReL-PSP kernel gives a silent neuron that
receives a gradient a surrogate one (``stdbp.kernels.SILENT_HORIZON``), SpikeProp gives it none.
``relpsp_silent_gradient=False`` removes the surrogate, for a comparison of the bare eqs. 14-15.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .. import functional as F
from ..checkpoint import atomic_write_text
from ..encoding import latency_encode
from ..errors import StdbpError
from ..nn.layers import SpikingLinear
from ..nn.network import SpikingNetwork, build
from ..training.data import Split, load_dataset
from ..training.loop import encode, evaluate
from .psp_measures import hidden_statistics, membrane_traces, percentiles
from .reporting import fmt, json_safe

__all__ = [
    "ComparePspConfig",
    "compare_psp",
    "alpha_network",
    "add_parser",
    "run",
]

KERNEL_NAMES = ("relpsp", "alpha")
#: log10 bin edges of the stored |dt/dV| histograms (time units per threshold unit).
DTDV_EDGES = np.linspace(-3.0, 9.0, 97)


@dataclass
class ComparePspConfig:
    """One comparison run; written into ``compare_psp.json``."""

    arch: str = "784-400-10"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    train_limit: int | None = None  # first N training images; None = all 60,000
    seed: int = 0
    threshold: float = 1.0
    tau: float = 1.0  # alpha-PSP time constant, time units (the latency window is t_max)
    tau_loss: float = 0.05  # softmax time scale of the loss
    t_max: float = 1.0
    heldout: int = 1000  # test images of the held-out batch for dead neurons and |dt/dV|
    test_limit: int | None = None  # first N test images for accuracy; None = all 10,000
    #: Keep the ReL-PSP kernel's silent-neuron surrogate gradient (stdbp.kernels.SILENT_HORIZON).
    #: False blocks every gradient into silent ReL-PSP neurons: pure eqs. 14-15, like SpikeProp.
    relpsp_silent_gradient: bool = True

    def validate(self) -> None:
        """Raise :class:`StdbpError` for values out of range."""
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0 and math.isfinite(self.lr), "--lr must be a positive number"),
            (self.train_limit is None or self.train_limit >= 1, "--train-limit must be at least 1"),
            (
                self.threshold > 0 and self.tau > 0 and self.tau_loss > 0 and self.t_max > 0,
                "threshold, tau, tau_loss and t_max must be positive",
            ),
            (self.heldout >= 1, "heldout must be at least 1"),
            (self.test_limit is None or self.test_limit >= 1, "test_limit must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise StdbpError(message)


def _block_silent_gradient(module: torch.nn.Module, inputs: Any, t_out: Tensor) -> Tensor:
    """Forward hook: silent (``+inf``) outputs pass no gradient, as in eqs. 14-15 without a surrogate."""
    return torch.where(torch.isinf(t_out), t_out.detach(), t_out)


def alpha_network(net: SpikingNetwork, tau: float = 1.0) -> SpikingNetwork:
    """The same network with alpha-PSP neurons (``stdbp.build(..., neuron="alpha")``) and ``net``'s weights."""
    alpha = build(net.arch, threshold=net.threshold, neuron="alpha", psp_tau=tau)
    alpha.load_state_dict(net.state_dict())
    return alpha


def _grad_norm(model: torch.nn.Module) -> float:
    """L2 norm of all parameter gradients, in float64 (inf or NaN if any entry is)."""
    total = sum(float(p.grad.detach().double().pow(2).sum()) for p in model.parameters() if p.grad is not None)
    return math.sqrt(total) if total == total else math.nan


def _measure(
    model: SpikingNetwork, epoch: int, heldout: Tensor, test: Split, config: ComparePspConfig
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """One history row (accuracy, dead share, |dt/dV| percentiles) and the |dt/dV| histograms."""
    model.eval()
    acc = evaluate(model, test, config.t_max, batch_size=1000)
    stats = hidden_statistics(model, heldout)
    row = {
        "epoch": epoch,
        "test_accuracy": acc["accuracy"],
        "test_undecided": acc["silent"],
        "dead_share": stats["dead_share"],
        "dead_per_layer": stats["dead_per_layer"],
        "silent_fraction": stats["silent_fraction"],
        "dtdv": percentiles(stats["dtdv"]),
        "dtdv_effective": percentiles(stats["dtdv_effective"]),
        "dtdv_output": percentiles(stats["dtdv_output"]),
        "output_dead_share": stats["output_dead_share"],
        "output_silent_fraction": stats["output_silent_fraction"],
    }
    return row, {"all": _log_histogram(stats["dtdv"]), "effective": _log_histogram(stats["dtdv_effective"])}


def _log_histogram(values: np.ndarray) -> list[int]:
    finite = values[np.isfinite(values) & (values > 0)]
    clipped = np.clip(np.log10(finite), DTDV_EDGES[0], DTDV_EDGES[-1])
    return np.histogram(clipped, bins=DTDV_EDGES)[0].tolist()


def _train_kernel(
    kernel: str,
    model: SpikingNetwork,
    train: Split,
    test: Split,
    heldout: Tensor,
    config: ComparePspConfig,
    progress: bool,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Train ``model`` for ``config.epochs`` epochs; return its history, step gradient norms and histograms."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    row, histogram = _measure(model, 0, heldout, test, config)
    history, histograms, grad_norms, losses, undecided = [row], [histogram], [], [], []
    nonfinite_total = 0
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        epoch_start, loss_sum, seen, nonfinite, norms = time.perf_counter(), 0.0, 0, 0, []
        bar = tqdm(
            total=steps_per_epoch, desc=f"{kernel} epoch {epoch}/{config.epochs}", disable=not progress, leave=False
        )
        model.train()
        for step in range(steps_per_epoch):
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            t_out = model(encode(train.images[index], config.t_max))
            loss = F.first_spike_cross_entropy(t_out, train.labels[index], tau=config.tau_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = _grad_norm(model)
            if math.isfinite(loss.item()) and math.isfinite(norm):
                optimizer.step()
                loss_sum += loss.item() * len(index)
                seen += len(index)
            else:  # skip the update and count it; a skipped step has no gradient norm
                nonfinite += 1
                norm = math.nan
            norms.append(norm)
            losses.append(loss.item())
            undecided.append(float(torch.isinf(t_out.detach()).all(dim=1).double().mean()))
            bar.update(1)
        bar.close()
        nonfinite_total += nonfinite
        train_seconds = time.perf_counter() - epoch_start
        row, histogram = _measure(model, epoch, heldout, test, config)
        row.update(
            train_loss=loss_sum / seen if seen else None,
            grad_norm=percentiles(np.array(norms)),
            nonfinite_steps=nonfinite,
            nonfinite_steps_total=nonfinite_total,
            train_seconds=train_seconds,
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(row)
        histograms.append(histogram)
        grad_norms.extend(norms)
        echo(
            f"{kernel:>6} epoch {epoch}/{config.epochs}  loss {fmt(row['train_loss'], '.3g')}  test {100 * row['test_accuracy']:.2f}%  "
            f"dead {100 * row['dead_share']:.1f}%  |dt/dV| p99 {fmt(row['dtdv']['p99'], '.3g')} max {fmt(row['dtdv']['max'], '.3g')}  "
            f"grad norm max {fmt(row['grad_norm']['max'], '.3g')}  nonfinite steps {nonfinite}  {row['seconds']:.0f} s"
        )
    return {
        "history": history,
        "dtdv_histograms": histograms,
        "grad_norms": grad_norms,
        "train_losses": losses,
        "train_undecided": undecided,
        "seconds": time.perf_counter() - start,
    }


def compare_psp(
    arch: str = ComparePspConfig.arch,
    epochs: int = ComparePspConfig.epochs,
    batch_size: int = ComparePspConfig.batch_size,
    lr: float = ComparePspConfig.lr,
    train_limit: int | None = ComparePspConfig.train_limit,
    seed: int = ComparePspConfig.seed,
    out_dir: str | Path = "runs/compare-psp",
    progress: bool = True,
    echo: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Any]:
    """Train ``arch`` on MNIST with ReL-PSP and with alpha-PSP neurons under the same budget.

    Args:
        arch: architecture in the paper's notation, fully connected, at least one hidden layer.
        epochs, batch_size, lr, train_limit, seed: the shared training budget.
        out_dir: directory for ``compare_psp.json`` and the PNG figures (created).
        progress: show progress bars.
        echo: receives one line per kernel and epoch.
        **options: other :class:`ComparePspConfig` fields (``tau``, ``heldout``, ``test_limit``, ...).

    Returns:
        The content of ``compare_psp.json``: ``config``, ``kernels`` (per kernel ``history``
        (one row per epoch, epoch 0 = before training), ``grad_norms`` (per step),
        ``dtdv_histograms`` (per epoch, ``{"all", "effective"}`` counts on ``dtdv_log10_edges``),
        ``train_losses`` and ``train_undecided`` (per step: the batch loss, and the share of the
        batch whose output layer stayed silent), ``seconds``), ``traces``,
        ``figures`` and ``wall_seconds``.
    """
    from .psp_comparison_plots import save_figures

    try:
        config = ComparePspConfig(
            arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, train_limit=train_limit, seed=seed, **options
        )
    except TypeError as exc:
        raise StdbpError(f"compare_psp: {exc}") from None
    config.validate()
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    relpsp = build(config.arch, threshold=config.threshold)
    if len(relpsp.layers) < 2 or not all(isinstance(layer, SpikingLinear) for layer in relpsp.layers):
        raise StdbpError(
            f"compare-psp needs a fully connected architecture with a hidden layer, e.g. 784-400-10; got {config.arch!r}"
        )
    data = load_dataset("mnist")
    train, test = data["train"], data["test"]
    relpsp.shape_input(encode(train.images[:1], config.t_max))  # the data must fit the architecture
    if config.train_limit:
        train = Split(train.images[: config.train_limit], train.labels[: config.train_limit])
    if config.test_limit:
        test = Split(test.images[: config.test_limit], test.labels[: config.test_limit])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    alpha = alpha_network(relpsp, tau=config.tau)  # the same initial weights
    if not config.relpsp_silent_gradient:
        for layer in relpsp.layers:
            layer.register_forward_hook(_block_silent_gradient)
    heldout_images = data["test"].images[: config.heldout]
    heldout = latency_encode(heldout_images, config.t_max, dtype=torch.float64).reshape(len(heldout_images), -1)

    traces = membrane_traces(cast(Tensor, relpsp.layers[0].weight).detach(), heldout[0], config.threshold, config.tau)
    result: dict[str, Any] = {
        "config": asdict(config),
        "dtdv_log10_edges": DTDV_EDGES.tolist(),
        "traces": traces,
        "kernels": {},
    }
    for kernel, model in (("relpsp", relpsp), ("alpha", alpha)):
        result["kernels"][kernel] = _train_kernel(kernel, model, train, test, heldout, config, progress, echo)
    result["figures"] = save_figures(result, out)
    result["wall_seconds"] = time.perf_counter() - start
    atomic_write_text(out / "compare_psp.json", json.dumps(json_safe(result), allow_nan=False) + "\n")
    return result


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``stdbp compare-psp`` on the CLI's subparsers; it runs :func:`run`."""
    d = ComparePspConfig()
    p = subparsers.add_parser(
        "compare-psp",
        help="ReL-PSP vs alpha-PSP neurons: accuracy, dead neurons, exploding gradients",
        description="Train the same network with ReL-PSP and with alpha-PSP (SpikeProp) neurons under the same budget, "
        "and measure accuracy, dead hidden neurons, |dt/dV| and gradient norms per epoch (paper Sections 2-3).",
    )
    g = p.add_argument_group("budget")
    g.add_argument("--arch", default=d.arch, help=f"fully connected architecture (default {d.arch})")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs per kernel (default {d.epochs})")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    g.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    g.add_argument(
        "--train-limit",
        type=int,
        default=d.train_limit,
        help="train on the first N training images (default: all 60,000)",
    )
    g.add_argument(
        "--seed", type=int, default=d.seed, help=f"random seed of the shared initial weights (default {d.seed})"
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        default="runs/compare-psp",
        help="directory for compare_psp.json and figures (default runs/compare-psp)",
    )
    g.add_argument("--json", action="store_true", help="print the final epoch of each kernel as one JSON object")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``stdbp compare-psp`` from parsed arguments; return the exit status."""
    echo = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = compare_psp(
        arch=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        train_limit=args.train_limit,
        seed=args.seed,
        out_dir=args.out,
        progress=not args.no_progress and sys.stderr.isatty(),
        echo=echo,
    )
    final = {kernel: dict(run_["history"][-1]) for kernel, run_ in result["kernels"].items()}
    if args.json:
        print(
            json.dumps(
                json_safe({"out": str(args.out), "wall_seconds": result["wall_seconds"], "final": final}),
                allow_nan=False,
            )
        )
    else:
        for kernel, row in final.items():
            dtdv = "/".join(fmt(row["dtdv"][key], ".3g") for key in ("p50", "p90", "p99", "max"))
            print(
                f"{kernel:>6}: test {100 * row['test_accuracy']:.2f}%  dead hidden {100 * row['dead_share']:.1f}%  "
                f"|dt/dV| p50/p90/p99/max {dtdv}  nonfinite steps {row['nonfinite_steps_total']}"
            )
        print(
            f"wrote {Path(args.out) / 'compare_psp.json'} and {len(result['figures'])} figures ({result['wall_seconds']:.0f} s)"
        )
    return 0
