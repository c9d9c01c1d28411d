"""Training and evaluation of spiking networks on image datasets.

A run directory holds ``config.json`` (the resolved configuration), ``metrics.jsonl`` (one JSON
object per epoch), ``checkpoint.pt`` (everything needed to resume, written every
``checkpoint_every`` steps and at the end of each epoch) and, once training has finished,
``model.pt`` (the network alone). Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import get_total_norm
from tqdm import tqdm

from .. import functional as F
from ..checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from ..encoding import latency_encode
from ..errors import CheckpointError, RunDirError, StdbpError
from ..kernels import all_finite, numba_cache_ready
from ..nn import AlphaSpikingLinear, SpikingLinear, SpikingNetwork, build
from .augment import jitter_times, random_affine, random_erase, random_hflip, random_shift
from .config import TrainConfig
from .data import Split, load_dataset
from .distributed import SINGLE, Context, dist_backend, numba_threads
from .regularisation import weight_sum_penalty
from .step import loss_and_backward

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train", "evaluate", "encode", "resume_config", "TrainingInterrupted"]


def _match_optimizer_layout(optimizer: torch.optim.Optimizer) -> None:
    """Transpose optimizer state saved for a parameter stored the other way round (checkpoints of
    stdbp 0.1.0 held ``SpikingLinear`` weights as ``(out, in)``; the parameter is now ``weight_t``)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if not (torch.is_tensor(value) and value.dim() == 2 and value.t().shape == param.shape):
                    continue
                # the old layout: (out, in), or a square matrix stored transposed (strides of an (in, out) array)
                if value.shape != param.shape or not value.is_contiguous():
                    optimizer.state[param][key] = value.t().contiguous()


#: What a training checkpoint holds beyond a model file's entries, and the type of each.
_TRAINING_STATE: dict[str, type | tuple[type, ...]] = {
    "config": dict,
    "optimizer": dict,
    "scheduler": dict,
    "augment_rng": torch.Tensor,
    "torch_rng": torch.Tensor,
    "step": int,
}


def _training_state(path: Path) -> dict[str, Any]:
    """``path`` loaded and checked as a training checkpoint (``--resume``)."""
    state = load_checkpoint(path)
    for key, kind in _TRAINING_STATE.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise CheckpointError(f"{path} is not a training checkpoint: its {key!r} entry is missing or malformed")
    if state["step"] < 0:
        raise CheckpointError(f"{path}: its step is {state['step']}")
    metrics, running = state.get("metrics", []), state.get("running", {})
    nonfinite, skipped = state.get("nonfinite_steps", 0), state.get("skipped_steps", 0)
    if not (
        isinstance(metrics, list)
        and all(isinstance(row, dict) and type(row.get("epoch")) is int for row in metrics)
        and isinstance(running, dict)
        and all(k in ("loss_sum", "correct", "seen") and type(v) in (int, float) for k, v in running.items())
        and type(nonfinite) is int
        and type(skipped) is int
    ):
        raise CheckpointError(f"{path} is not a training checkpoint: its metrics or running sums are malformed")
    return state


def resume_config(run_dir: str | Path) -> TrainConfig:
    """The configuration saved in ``run_dir/checkpoint.pt``, checked as ``TrainConfig.validate`` does."""
    path = Path(run_dir) / "checkpoint.pt"
    saved = _training_state(path)["config"]
    unknown = set(saved) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise CheckpointError(f"{path}: its config has unknown keys {', '.join(sorted(map(str, unknown)))}")
    config = TrainConfig(**saved)
    try:
        config.validate()
    except StdbpError as exc:
        raise CheckpointError(f"{path}: its config is invalid ({exc})") from None
    return config


def encode(images: Tensor, t_max: float) -> Tensor:
    """Latency-code a uint8 image batch ``(B, H, W)`` into input spike times ``(B, 1, H, W)``."""
    return latency_encode(images, t_max=t_max).unsqueeze(1)


@torch.no_grad()
def evaluate(
    model: SpikingNetwork,
    split: Split,
    t_max: float = 1.0,
    batch_size: int = 1000,
    progress: bool = False,
    context: Context = SINGLE,
) -> dict[str, Any]:
    """Accuracy of first-spike decisions on ``split``: ``{"accuracy", "correct", "n", "silent"}``.
    Under torchrun each rank evaluates its share of ``split`` and the counts are summed."""
    correct = silent = 0
    lo, hi = context.rows(len(split))
    batches = range(lo, hi, batch_size)
    for start in tqdm(batches, desc="eval", leave=False, disable=not progress or not context.leader):
        end = min(start + batch_size, hi)
        t_out = model(encode(split.images[start:end], t_max))
        decision = F.first_spike_decision(t_out)
        correct += int((decision == split.labels[start:end]).sum())
        silent += int((decision < 0).sum())
    if context.distributed:
        correct, silent = (int(x) for x in context.reduce_sums([correct, silent]))
    return {"accuracy": correct / len(split), "correct": correct, "n": len(split), "silent": silent}


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag that the training loop checks after each step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, run_dir: Path, signum: int) -> None:
        super().__init__(
            f"interrupted by signal {signum}; checkpoint saved, continue with: stdbp train --resume {run_dir}"
        )
        self.signum = signum


def _holds_run(out: Path) -> bool:
    return (out / "checkpoint.pt").exists() or (out / "model.pt").exists()


def fresh_run_dir(base: str | Path) -> Path:
    """``base`` if it holds no run, else the first of ``base-2``, ``base-3``, ... that holds none:
    a default run directory is never overwritten."""
    base = Path(base)
    candidate, number = base, 1
    while _holds_run(candidate):
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def _prepare_run_dir(out: Path, force: bool) -> None:
    if _holds_run(out) and not force:
        state = "a finished run" if (out / "model.pt").exists() else "an unfinished run"
        raise RunDirError(
            f"{out} already holds {state}; use --resume {out} to continue it, --force to overwrite, or another --out"
        )
    out.mkdir(parents=True, exist_ok=True)


def _classes(model: SpikingNetwork) -> int:
    """Neurons of the network's output layer."""
    last = model.layers[-1]
    if not isinstance(last, (SpikingLinear, AlphaSpikingLinear)):
        raise StdbpError(f"{model.arch}: the output layer must be fully connected")
    return last.out_features


def _silent(message: str) -> None:
    """The ``echo`` of ranks other than 0."""


def _write_metrics(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def train(
    config: TrainConfig,
    out: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    context: Context = SINGLE,
) -> dict[str, Any]:
    """Train a network as ``config`` says, in run directory ``out``; return the final metrics row.

    With ``resume``, ``out`` must hold a ``checkpoint.pt``; the run continues from it. Pass the
    saved configuration (:func:`resume_config`), with ``epochs`` raised to extend the run.
    ``context``: this process's place in a data-parallel run (:mod:`stdbp.training.distributed`);
    every rank calls ``train`` alike, rank 0 alone writes files and prints.
    """
    out = Path(out)
    config.validate()
    if config.batch_size < context.world:
        raise StdbpError(
            f"--batch-size {config.batch_size} is the global batch: it needs at least one image for each of the {context.world} processes"
        )
    if not context.leader:
        progress, echo = False, _silent
    # Everything a user can get wrong is checked before the run directory is touched.
    state = _training_state(out / "checkpoint.pt") if resume else None
    data = load_dataset(config.dataset, config.data_dir)
    train_split, test_split = data["train"], data["test"]
    if config.train_limit:
        train_split = Split(train_split.images[: config.train_limit], train_split.labels[: config.train_limit])
    torch.manual_seed(config.seed)
    model = build(config.arch, threshold=config.threshold)
    model.shape_input(encode(train_split.images[:1], config.t_max))  # the data must fit the architecture
    classes = _classes(model)
    for name, split in (("training", train_split), ("test", test_split)):
        if len(split) == 0 or int(split.labels.max()) >= classes:
            raise StdbpError(
                f"the {name} labels must be classes 0 to {classes - 1} of the network's output layer ({len(split)} images)"
            )
    if config.shift >= min(train_split.images.shape[1:]):
        raise StdbpError(
            f"--shift {config.shift} must be smaller than the images ({'x'.join(map(str, train_split.images.shape[1:]))})"
        )
    if context.leader:
        refused = None
        try:
            if not resume:
                _prepare_run_dir(out, force)
            atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        except StdbpError as exc:
            refused = exc
        if context.reduce_sums([float(refused is not None)])[0] and refused is not None:
            raise refused
    elif context.reduce_sums([0.0])[0]:
        raise StdbpError(f"rank 0 refused the run directory {out}")

    optimizer: torch.optim.Optimizer
    if config.weight_decay > 0:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    else:  # one kernel for the whole update
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    augment_rng = torch.Generator().manual_seed(config.seed + 1)
    step = 0
    metrics: list[dict] = []
    nonfinite_steps = skipped_steps = 0
    if state is not None:
        try:
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            _match_optimizer_layout(optimizer)
            scheduler.load_state_dict(state["scheduler"])
            augment_rng.set_state(state["augment_rng"])
            torch.set_rng_state(state["torch_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{out / 'checkpoint.pt'}: its training state does not fit this run ({first})"
            ) from None
        if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max != total_steps:
            # a run extended with --epochs: the cosine curve is stretched to the new length. The
            # scheduler updates the rate recursively from its last value (0 at the end of a
            # finished run), so the rate is set from the closed form first.
            scheduler.T_max = total_steps
            for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base_lr * (1 + math.cos(math.pi * state["step"] / total_steps)) / 2
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        step = state["step"]
        nonfinite_steps = state.get("nonfinite_steps", 0)
        skipped_steps = state.get("skipped_steps", 0)
        metrics = [row for row in state.get("metrics", []) if row["epoch"] * steps_per_epoch <= step]
        echo(f"resuming {out} at epoch {step // steps_per_epoch + 1}, step {step}")

    running = {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0}  # the current epoch's sums so far
    if state is not None:
        running.update(state.get("running", {}))

    def checkpoint() -> None:
        if not context.leader:
            return
        save_checkpoint(
            out / "checkpoint.pt",
            model,
            config=dataclasses.asdict(config),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            augment_rng=augment_rng.get_state(),
            torch_rng=torch.get_rng_state(),
            step=step,
            epoch=step // steps_per_epoch,
            nonfinite_steps=nonfinite_steps,
            skipped_steps=skipped_steps,
            metrics=metrics,
            running=running,
        )

    last: dict[str, Any] = metrics[-1] if metrics else {}
    if context.distributed:
        echo(
            f"{context.world} processes ({dist_backend()}), global batch {config.batch_size}; "
            f"threads per process: numba {numba_threads()}, torch {torch.get_num_threads()}"
        )
    compiling = context.leader and not numba_cache_ready() and next(model.parameters()).device.type == "cpu"
    if compiling:
        print(
            "stdbp: compiling the numba kernels for this machine (first run only, about 30 s on 2 cores) ...",
            file=sys.stderr,
            flush=True,
        )
    with _StopRequest() as stop:
        while step < total_steps:
            epoch = step // steps_per_epoch
            order = torch.randperm(
                len(train_split), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            )
            start_time = time.perf_counter()
            if step % steps_per_epoch == 0:
                running = {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0}
            bar = tqdm(
                total=steps_per_epoch,
                initial=step % steps_per_epoch,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                disable=not progress,
                leave=False,
            )
            model.train()
            while step < (epoch + 1) * steps_per_epoch:
                batch_index = order[(step % steps_per_epoch) * config.batch_size :][: config.batch_size]
                rows = None
                if context.distributed:  # this rank's rows of the global batch; draws made for all of it
                    lo, hi = context.rows(len(batch_index))
                    rows, batch_index = (lo, len(batch_index)), batch_index[lo:hi]
                images = random_hflip(train_split.images[batch_index], config.hflip, augment_rng, rows)
                images = random_affine(
                    images,
                    config.rotate,
                    config.scale,
                    augment_rng,
                    rows,
                    config.elastic,
                    config.elastic_sigma,
                )
                images = random_shift(images, config.shift, augment_rng, rows)
                images = random_erase(images, config.erase, augment_rng, rows)
                t_in = jitter_times(encode(images, config.t_max), config.jitter, augment_rng, rows)
                labels = train_split.labels[batch_index]
                optimizer.zero_grad(set_to_none=True)
                loss, t_out = loss_and_backward(
                    model, t_in, labels, tau=config.tau
                )  # loss.backward(), without the graph
                if compiling:
                    print(
                        f"stdbp: kernels compiled ({time.perf_counter() - start_time:.0f} s); training",
                        file=sys.stderr,
                        flush=True,
                    )
                    compiling = False
                loss_value = loss.item()
                correct = float((F.first_spike_decision(t_out) == labels).sum())
                seen = len(labels)
                if context.distributed:  # one all-reduce: gradients (as the global batch's mean), sums, stop flag
                    total = rows[1] if rows is not None else seen
                    loss_sum, correct, stopping = context.reduce_step(
                        model.parameters(), seen / total, [loss_value * seen, correct, float(stop.signal is not None)]
                    )
                    loss_value, seen = loss_sum / total, total
                    if stopping and stop.signal is None:
                        stop.signal = signal.SIGTERM  # another rank was told to stop
                if config.weight_sum_penalty > 0:  # the same on every rank: added after the all-reduce
                    (config.weight_sum_penalty * weight_sum_penalty(model, config.threshold)).backward()
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                if not (math.isfinite(loss_value) and all_finite(grads)):
                    nonfinite_steps += 1
                elif (
                    config.skip_grad_norm is not None and (norm := float(get_total_norm(grads))) > config.skip_grad_norm
                ):
                    skipped_steps += 1  # Adam's second moment would carry this one step's size for thousands of steps
                    note = f"step {step + 1}: gradient norm {norm:.3g} > --skip-grad-norm {config.skip_grad_norm:g} (loss {loss_value:.3g}), skipped"
                    if progress:
                        bar.write(note)
                    else:
                        echo(note)
                else:
                    optimizer.step()
                scheduler.step()
                step += 1
                running["loss_sum"] += loss_value * seen
                running["correct"] += correct
                running["seen"] += seen
                bar.update(1)
                bar.set_postfix(
                    loss=f"{running['loss_sum'] / running['seen']:.4f}",
                    acc=f"{running['correct'] / running['seen']:.4f}",
                )
                if stop.signal is not None:
                    bar.close()
                    checkpoint()
                    raise TrainingInterrupted(out, stop.signal)
                if step % config.checkpoint_every == 0:
                    checkpoint()
            bar.close()
            model.eval()
            test = evaluate(model, test_split, config.t_max, config.eval_batch_size, context=context)
            seconds = time.perf_counter() - start_time
            last = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": running["loss_sum"] / max(running["seen"], 1),
                "train_accuracy": running["correct"] / max(running["seen"], 1),
                "test_accuracy": test["accuracy"],
                "test_silent": test["silent"],
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds,
                "nonfinite_steps": nonfinite_steps,
                "skipped_steps": skipped_steps,
            }
            metrics.append(last)
            if context.leader:
                _write_metrics(out / "metrics.jsonl", metrics)
            checkpoint()
            echo(
                f"epoch {epoch + 1}/{config.epochs}  loss {last['train_loss']:.4f}  train {100 * last['train_accuracy']:.2f}%  "
                f"test {100 * test['accuracy']:.2f}%  {seconds:.1f} s"
            )
    if context.leader:
        save_checkpoint(out / "model.pt", model, config=dataclasses.asdict(config), metrics=metrics)
    return last
