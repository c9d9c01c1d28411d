"""The ``stdbp`` command: ``train``, ``eval``, ``download``, ``bench``, ``compare-psp``, ``analyze``, ``reproduce``.

User errors (bad files, bad options, bad architectures) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from .errors import StdbpError
from .version import __version__

EXIT_USAGE = 2


def _config_file(path: str) -> dict:
    """Read a TOML or JSON file of training options (keys as in ``config.json``): a table/object."""
    import tomllib

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise StdbpError(f"cannot read --config {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise StdbpError(f"--config {file} is not UTF-8 text") from None
    try:
        options = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise StdbpError(f"--config {file} does not parse: {str(exc)[:200]}") from None
    if not isinstance(options, dict):
        raise StdbpError(f"--config {file} must hold a table of options, not a {type(options).__name__}")
    return options


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .training.config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train", help="train a spiking network", description="Train a spiking network with exact spike-time gradients."
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--arch", help=f"architecture in the paper's notation (default {d.arch})")
    g.add_argument("--dataset", help=f"mnist or fashion-mnist (default {d.dataset})")
    g.add_argument("--data-dir", help="directory with the four IDX files (overrides the dataset's location)")
    g.add_argument("--threshold", type=float, help=f"firing threshold (default {d.threshold})")
    g.add_argument("--t-max", type=float, help=f"latency-coding window in time units (default {d.t_max})")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help=f"epochs (default {d.epochs})")
    g.add_argument("--batch-size", type=int, help=f"batch size (default {d.batch_size})")
    g.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.lr})")
    g.add_argument(
        "--weight-decay",
        type=float,
        metavar="WD",
        help=f"decoupled weight decay (AdamW): each step shrinks the weights by lr * WD (default {d.weight_decay})",
    )
    g.add_argument(
        "--weight-sum-penalty",
        type=float,
        metavar="K",
        help="add K * sum over neurons of max(0, threshold - the sum of its input weights) to the loss "
        f"(Mostafa 2017): no neuron falls silent for good (default {d.weight_sum_penalty})",
    )
    g.add_argument("--schedule", choices=["cosine", "constant"], help=f"learning-rate schedule (default {d.schedule})")
    g.add_argument("--tau", type=float, help=f"softmax time scale of the loss (default {d.tau})")
    g.add_argument("--jitter", type=float, help=f"std of Gaussian noise on input spike times (default {d.jitter})")
    g.add_argument("--shift", type=int, help=f"random image shifts of up to this many pixels (default {d.shift})")
    g.add_argument("--rotate", type=float, help=f"random rotations of up to this many degrees (default {d.rotate})")
    g.add_argument("--scale", type=float, help=f"random scaling by a factor in [1-S, 1+S] (default {d.scale})")
    g.add_argument(
        "--elastic",
        type=float,
        metavar="ALPHA",
        help=f"random elastic distortions of strength ALPHA pixels (Simard et al. 2003; try 34; default {d.elastic})",
    )
    g.add_argument(
        "--elastic-sigma",
        type=float,
        metavar="SIGMA",
        help=f"smoothness of the elastic distortions in pixels (default {d.elastic_sigma})",
    )
    g.add_argument(
        "--hflip",
        type=float,
        metavar="P",
        help=f"mirror each training image left to right with probability P (default {d.hflip})",
    )
    g.add_argument(
        "--erase",
        type=float,
        metavar="P",
        help=f"erase a random rectangle (2-40 %% of the image) of each training image with probability P (default {d.erase})",
    )
    g.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    g.add_argument("--train-limit", type=int, help="train on the first N training images only")
    g.add_argument(
        "--skip-grad-norm",
        type=float,
        metavar="NORM",
        help="skip a step whose gradient norm exceeds NORM, as a step with a NaN or inf is skipped (default: never)",
    )
    g = p.add_argument_group("run directory")
    g.add_argument(
        "--out", help="run directory (default runs/DATASET-ARCH-seedSEED, or -2, -3, ... after it if that holds a run)"
    )
    g.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    g.add_argument("--force", action="store_true", help="overwrite a run directory that holds a run")
    g.add_argument(
        "--checkpoint-every", type=int, help=f"steps between periodic checkpoints (default {d.checkpoint_every})"
    )
    g.add_argument("--config", help="TOML or JSON file of options; command-line flags override it")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.distributed import init_from_environment
    from .training.loop import TrainConfig, TrainingInterrupted, fresh_run_dir, resume_config, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.resume:
        base = dataclasses.asdict(resume_config(args.resume))
        unknown = set(given) - {"epochs"}
        if unknown:
            raise StdbpError(
                f"--resume continues the saved configuration; only --epochs may change, not {', '.join(sorted(unknown))}"
            )
        out = Path(args.resume)
    else:
        base = _config_file(args.config) if args.config else {}
        bad = set(base) - fields
        if bad:
            raise StdbpError(f"--config {args.config} has unknown keys {', '.join(sorted(bad))}")
        base = {**dataclasses.asdict(TrainConfig()), **base}
    config = TrainConfig(**{**base, **given})
    config.validate()
    context = init_from_environment()  # torchrun: this process's rank; otherwise one process
    try:
        if not args.resume:
            out = (
                Path(args.out) if args.out else fresh_run_dir(f"runs/{config.dataset}-{config.arch}-seed{config.seed}")
            )
            out = Path(context.broadcast_text(str(out)))  # rank 0's choice of a fresh directory
        start = time.perf_counter()
        try:
            last = train(
                config,
                out,
                resume=bool(args.resume),
                force=args.force,
                progress=not args.no_progress and sys.stderr.isatty(),
                context=context,
            )
        except TrainingInterrupted as exc:
            if context.leader:
                print(f"stdbp: {exc}", file=sys.stderr)
            return 128 + exc.signum
    finally:
        context.close()
    if context.leader:
        print(
            f"test accuracy {100 * last['test_accuracy']:.2f}% after {last['epoch']} epochs ({time.perf_counter() - start:.0f} s); "
            f"run in {out}" + (f" ({context.world} processes)" if context.distributed else "")
        )
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="test accuracy of a checkpoint", description="Evaluate a checkpoint on a test set.")
    p.add_argument("checkpoint", help="a .pt file written by stdbp train (model.pt or checkpoint.pt)")
    p.add_argument("--dataset", help="dataset (default: the one it was trained on)")
    p.add_argument("--data-dir", help="directory with the four IDX files")
    p.add_argument("--arch", help="fail unless the checkpoint has this architecture")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, load_model
    from .training.data import load_dataset
    from .training.loop import evaluate

    payload = load_checkpoint(args.checkpoint)
    trained = payload.get("config", {})
    dataset = args.dataset or trained.get("dataset", "mnist")
    model = load_model(args.checkpoint, arch=args.arch)
    model.eval()
    test = load_dataset(dataset, args.data_dir, splits=("test",))["test"]
    model.shape_input(test.images[:1].unsqueeze(1).float())
    result = evaluate(model, test, t_max=trained.get("t_max", 1.0), progress=not args.json and sys.stderr.isatty())
    report = {
        "accuracy": result["accuracy"],
        "dataset": dataset,
        "arch": model.arch,
        "n": result["n"],
        "silent": result["silent"],
        "checkpoint": str(args.checkpoint),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{model.arch} on {dataset}: test accuracy {100 * result['accuracy']:.2f}% ({result['correct']}/{result['n']}, {result['silent']} undecided)"
        )
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="download a dataset with checksums",
        description="Download MNIST or Fashion-MNIST IDX files, verifying checksums.",
    )
    p.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    p.add_argument("--out", required=True, help="directory to write the files to")
    p.set_defaults(func=_cmd_download)


def _cmd_download(args: argparse.Namespace) -> int:
    from .training.data import download

    path = download(args.dataset, args.out)
    print(f"{args.dataset} in {path}; use it with --data-dir {path}")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time a training step against ReLU and snnTorch",
        description=(
            "Time one training step (forward, loss, backward, Adam) of stdbp, the same-shape ReLU network and, if installed, "
            "snnTorch, interleaved on real MNIST batches; medians after warm-up. Peak memory in a fresh process each."
        ),
    )
    p.add_argument(
        "--arch", nargs="+", help="architectures (default: 784-800-10 and the paper's convolutional network)"
    )
    p.add_argument("--batch-size", nargs="+", type=int, default=[64, 128], help="batch sizes (default 64 128)")
    p.add_argument("--repeats", type=int, default=60, help="timed steps per configuration (default 60)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    p.add_argument("--snn-steps", nargs="*", type=int, default=[25, 100], help="snnTorch time steps (default 25 100)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help=(
            "probe memory under glibc's default allocator settings (the figure then depends on what the process freed before; "
            "by default every block of 64 KiB or more is mapped on its own: MALLOC_MMAP_THRESHOLD_=65536)"
        ),
    )
    p.add_argument(
        "--no-trained",
        action="store_true",
        help="skip the step from the shipped trained network (PRETRAINED/mnist-ARCH.pt)",
    )
    p.add_argument(
        "--pretrained",
        metavar="DIR",
        help="directory of trained mnist-ARCH.pt networks (default ./pretrained where it exists)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench.step_timing import DEFAULT_ARCHS, run_bench
    from .nn.network import parse_arch

    archs = tuple(args.arch or DEFAULT_ARCHS)
    for arch in archs:
        parse_arch(arch)
    if args.repeats < 1 or args.warmup < 0 or any(b < 1 for b in args.batch_size):
        raise StdbpError("--repeats and --batch-size must be at least 1, --warmup at least 0")
    if args.pretrained is not None and not Path(args.pretrained).is_dir():
        raise StdbpError(f"--pretrained {args.pretrained} is not a directory")
    report = run_bench(
        archs,
        tuple(args.batch_size),
        args.warmup,
        args.repeats,
        not args.no_memory,
        tuple(args.snn_steps),
        not args.no_trained,
        args.default_malloc,
        args.pretrained,
    )
    if args.json:
        print(json.dumps(report))
        return 0
    print(json.dumps(report["machine"]), f"memory probe: {report['memory_probe']}" if report["memory_probe"] else "")
    for row in report["results"]:
        extra = "".join(f"  {k}={v}" for k, v in row.items() if k not in ("arch", "batch_size"))
        print(f"{row['arch']} batch {row['batch_size']}:{extra}")
    return 0


def one_line(message: str) -> str:
    """``message`` on one line: line breaks (from a value a user typed or a file held) escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class _Parser(argparse.ArgumentParser):
    """argparse with the command's one-line errors: ``stdbp: error: ...`` and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"stdbp: error: {one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stdbp", description="Deep spiking networks trained by exact spike-time backpropagation.")
    parser.add_argument("--version", action="version", version=f"stdbp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_download(sub)
    _add_bench(sub)
    from .paper.psp_comparison import add_parser as _add_compare_psp

    _add_compare_psp(sub)
    from .paper.analysis import add_parser as _add_analyze

    _add_analyze(sub)
    from .paper.reproduce import add_parser as _add_reproduce

    _add_reproduce(sub)
    from .interop.nir import add_parser as _add_nir

    _add_nir(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except StdbpError as exc:
        print(f"stdbp: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("stdbp: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
