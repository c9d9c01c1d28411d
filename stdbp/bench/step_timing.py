"""``stdbp bench``: the cost of one training step, stdbp against the same-shape ReLU network and snnTorch.

Every step is a full training step on a real MNIST batch: forward, loss, backward, Adam update
(PyTorch's fused Adam for every configuration). The stdbp step is the one ``stdbp train`` runs
(:func:`stdbp.training.step.loss_and_backward`); the others go through autograd.
The configurations are timed in one process, interleaved (one step of each in turn), and the
median after warm-up is reported. Peak memory is measured in a fresh process per configuration
(:func:`memory_probe`): the peak growth of the resident set while the model is built and trained,
after the code has been loaded, with glibc mapping every block of 64 KiB or more on its own
(:data:`PROBE_MALLOC`) so that the figure is the training's own peak, not the allocator's history.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..checkpoint import default_pretrained_dir, load_model, pretrained_checkpoint
from ..nn import SpikingLinear, build, parse_arch
from ..training.data import load_dataset
from ..training.loop import encode
from ..training.step import loss_and_backward

__all__ = [
    "PROBE_MALLOC",
    "memory_probe",
    "relu_network",
    "snntorch_network",
    "make_steps",
    "run_bench",
    "shipped_checkpoint",
    "tiny_arch",
]

DEFAULT_ARCHS = ("784-800-10", "28x28-6C5-P2-16C5-P2-1024-128-10")


def relu_network(arch: str) -> nn.Module:
    """The ANN of the same shape: ``nn.Linear``/``nn.Conv2d`` (zero padding as the notation says), max-pooling, ReLU."""
    specs = parse_arch(arch)
    layers: list[nn.Module] = []
    shape = specs[0].shape
    channels: int | None  # both None while the input is flat: the architectures SpikingNetwork builds (convolutions
    spatial: tuple[int, ...] | None  # and pooling only on a spatial map) never reach a conv or pool spec then
    channels, spatial = (shape[0], shape[1:]) if len(shape) == 3 else (None, None)
    features = specs[0].size
    for index, spec in enumerate(specs[1:]):
        last = index == len(specs) - 2
        if spec.kind == "conv":
            layers += [nn.Conv2d(cast(int, channels), spec.size, spec.kernel, padding=spec.padding), nn.ReLU()]
            channels = spec.size
            spatial = tuple(d + 2 * spec.padding - spec.kernel + 1 for d in cast("tuple[int, ...]", spatial))
        elif spec.kind == "pool":
            layers.append(nn.MaxPool2d(spec.kernel))
            spatial = tuple(d // spec.kernel for d in cast("tuple[int, ...]", spatial))
        else:
            if spatial is not None:
                layers.append(nn.Flatten())
                features, spatial = cast(int, channels) * spatial[0] * spatial[1], None
            layers.append(nn.Linear(features, spec.size))
            if not last:
                layers.append(nn.ReLU())
            features = spec.size
    return nn.Sequential(*layers)


def snntorch_network(arch: str, num_steps: int) -> nn.Module | None:
    """snnTorch ``Leaky`` neurons of the same (fully connected) shape, run for ``num_steps``; None if unavailable."""
    try:
        import snntorch as snn
    except ImportError:
        return None
    specs = parse_arch(arch)
    if any(spec.kind != "linear" for spec in specs[1:]):
        return None
    sizes = [specs[0].size] + [spec.size for spec in specs[1:]]
    linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
    neurons = nn.ModuleList(snn.Leaky(beta=0.9) for _ in linears)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linears, self.neurons = linears, neurons

        def forward(self, spikes: torch.Tensor) -> torch.Tensor:  # (T, B, N_in) -> spike counts (B, classes)
            mems = [cast(Any, neuron).init_leaky() for neuron in self.neurons]  # snntorch is untyped
            count: torch.Tensor | int = 0
            for step in range(spikes.shape[0]):
                x = spikes[step]
                for k, (linear, neuron) in enumerate(zip(self.linears, self.neurons)):
                    x, mems[k] = neuron(linear(x), mems[k])
                count = count + x
            return cast(torch.Tensor, count)  # a tensor after the first time step

    return Net()


def latency_spike_train(t_in: torch.Tensor, num_steps: int) -> torch.Tensor:
    """``(B, N)`` spike times in [0, 1] (inf = none) -> ``(T, B, N)`` binary spike trains."""
    steps = torch.where(torch.isfinite(t_in), (t_in * (num_steps - 1)).round(), torch.full_like(t_in, -1)).long()
    return (torch.arange(num_steps).view(-1, 1, 1) == steps.unsqueeze(0)).float()


def make_steps(
    arch: str,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    snn_steps: tuple[int, ...] = (25,),
    only: str | None = None,
    trained: str | os.PathLike | None = None,
    backward: str = "auto",
    device: str | torch.device = "cpu",
) -> dict[str, Callable[[int], None]]:
    """One training-step function per configuration, each taking the index of the batch to use.

    With ``only``, just that configuration is built (for memory probes). With ``trained`` (a
    checkpoint of ``arch``), also ``stdbp_trained``: the same step starting from trained weights.
    ``backward``: how stdbp's fully connected layers sum eqs. 14-15 (``stdbp.kernels.BACKWARD_METHODS``).
    ``device``: where the stdbp and ReLU networks and their batches live (snnTorch stays on the CPU).
    """
    torch.manual_seed(0)
    steps: dict[str, Callable[[int], None]] = {}
    if only in (None, "stdbp"):
        steps["stdbp"] = _stdbp_step(arch, batches, backward=backward, device=device)
    if trained is not None and only in (None, "stdbp_trained"):
        steps["stdbp_trained"] = _stdbp_step(arch, batches, trained, backward, device)
    if only in (None, "relu"):
        steps["relu"] = _relu_step(arch, batches, device)
    for num_steps in snn_steps:
        if only in (None, f"snntorch_{num_steps}"):
            step = _snntorch_step(arch, batches, num_steps)
            if step is not None:
                steps[f"snntorch_{num_steps}"] = step
    return steps


def _adam_step(
    model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], loss_fn: Callable
) -> Callable[[int], None]:
    """A training step of ``model`` on ``data[i % len(data)]``: forward, loss, backward, fused Adam."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step(i: int) -> None:
        x, labels = data[i % len(data)]
        loss = loss_fn(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _stdbp_step(
    arch: str,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    checkpoint: str | os.PathLike | None = None,
    backward: str = "auto",
    device: str | torch.device = "cpu",
) -> Callable[[int], None]:
    """The step ``stdbp train`` runs: :func:`stdbp.training.step.loss_and_backward` (forward, loss and
    backward; the autograd path's results without its graph), then fused Adam."""
    coded = [(encode(images, 1.0).to(device), labels.to(device)) for images, labels in batches]
    model = (load_model(checkpoint, arch) if checkpoint is not None else build(arch)).to(device)
    for layer in model.layers:
        if isinstance(layer, SpikingLinear):
            layer.backward = backward
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step(i: int) -> None:
        t_in, labels = coded[i % len(coded)]
        optimizer.zero_grad(set_to_none=True)
        loss_and_backward(model, t_in, labels, tau=0.05)
        optimizer.step()

    return step


def shipped_checkpoint(arch: str, pretrained_dir: str | os.PathLike | None = None) -> Path | None:
    """The trained MNIST network of ``arch`` in ``pretrained_dir`` (``mnist-ARCH.pt``; default
    :func:`stdbp.checkpoint.default_pretrained_dir`, the repository's ``pretrained/``), if there is one."""
    return pretrained_checkpoint(default_pretrained_dir() if pretrained_dir is None else pretrained_dir, arch)


def _relu_step(
    arch: str, batches: list[tuple[torch.Tensor, torch.Tensor]], device: str | torch.device = "cpu"
) -> Callable[[int], None]:
    spatial = len(parse_arch(arch)[0].shape) == 3
    floats = [
        (
            ((images.float() / 255).unsqueeze(1) if spatial else (images.float() / 255).flatten(1)).to(device),
            labels.to(device),
        )
        for images, labels in batches
    ]
    return _adam_step(relu_network(arch).to(device), floats, nn.functional.cross_entropy)


def _snntorch_step(
    arch: str, batches: list[tuple[torch.Tensor, torch.Tensor]], num_steps: int
) -> Callable[[int], None] | None:
    net = snntorch_network(arch, num_steps)
    if net is None:
        return None
    trains = [(latency_spike_train(encode(images, 1.0).flatten(1), num_steps), labels) for images, labels in batches]
    return _adam_step(net, trains, nn.functional.cross_entropy)


def mnist_batches(batch_size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    train = load_dataset("mnist", splits=("train",))["train"]
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=generator)[: batch_size * count]
    return [(train.images[idx], train.labels[idx]) for idx in order.split(batch_size)]


def time_steps(steps: dict[str, Callable[[int], None]], warmup: int, repeats: int, slow: set[str]) -> dict[str, float]:
    """Median milliseconds per step, interleaved; configurations in ``slow`` run every 4th round."""
    for name, step in steps.items():
        for i in range(warmup if name not in slow else 2):
            step(i)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats):
        for name, step in steps.items():
            if name in slow and r % 4:
                continue
            start = time.perf_counter()
            step(r)
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


_PROBE = """
import gc, sys
from pathlib import Path
from stdbp.bench.step_timing import make_steps, mnist_batches, tiny_arch

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024

arch, batch_size, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
snn = (int(name.split("_")[1]),) if name.startswith("snntorch") else ()
batches = mnist_batches(batch_size, 4)
for backward in ("prefix", "dense", "rows"):  # every kernel the backward may pick (stdbp.kernels.BACKWARD_METHODS)
    warm = make_steps(tiny_arch(arch), mnist_batches(2, 1), snn, only=name, backward=backward)
    for i in range(2):
        warm[name](i)  # load the code (numba's compiled kernels, PyTorch's lazily initialised ones)
    del warm
gc.collect()
base = rss("VmRSS:")
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
steps = make_steps(arch, batches, snn, only=name)
for i in range(6):
    steps[name](i)
print(rss("VmHWM:") - base)
"""


def cpu_description(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """``cpu_model`` (the processor's model name) and ``cpu_vector`` (its widest vector
    extension) from ``cpuinfo`` (Linux's ``/proc/cpuinfo``; empty where there is none): the
    bench's figures hold for that processor."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    vector = next((name for name in ("avx512f", "avx2", "avx", "sse4_2", "asimd") if name in flags), None)
    described: dict[str, Any] = {}
    if fields.get("model name"):
        described["cpu_model"] = fields["model name"]
    if vector:
        described["cpu_vector"] = vector
    return described


def tiny_arch(arch: str) -> str:
    """A network of the same kinds of layers as ``arch``, with one channel or neuron per hidden layer."""
    tokens = arch.split("-")
    tiny = [tokens[0]]
    for token in tokens[1:-1]:
        tiny.append("1C" + token.split("C")[1] if "C" in token else token if token.startswith("P") else "1")
    return "-".join([*tiny, tokens[-1]])


#: Environment of the memory probes: glibc serves every block of 64 KiB or more with its own
#: mapping, returned to the system when freed (``MALLOC_MMAP_THRESHOLD_``, which also stops glibc
#: from raising that threshold as blocks are freed). Under the default setting, large blocks come
#: from heap memory that glibc keeps after they are freed, so how much of a step's memory shows
#: up as growth of the resident set depends on what the process freed before the probe: the same
#: ReLU probe then measured anywhere from 8.9 to 11.8 MiB (784-800-10, batch 64), against 13.1
#: +- 0.1 MiB with this setting.
PROBE_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def memory_probe(arch: str, batch_size: int, name: str, runs: int = 3, default_malloc: bool = False) -> float:
    """Peak memory in MiB of ``name``'s training (model, optimizer, steps), in a fresh process.

    The peak resident set while the model and optimizer are built and six training steps run,
    less the resident set before. Code is loaded first (and not counted) by training a tiny
    network of the same layer kinds (:func:`tiny_arch`): numba's compiled kernels for stdbp
    (each of the ways its backward pass may sum eqs. 14-15), PyTorch's lazily initialised
    kernels for the others. The process runs with
    :data:`PROBE_MALLOC` unless ``default_malloc``; the result is the median of ``runs`` fresh
    processes.
    """
    env = dict(os.environ)
    for key in PROBE_MALLOC:
        env.pop(key, None)
    if not default_malloc:
        env.update(PROBE_MALLOC)
    peaks = []
    for _ in range(runs):
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, arch, str(batch_size), name], capture_output=True, text=True, env=env
        )
        if result.returncode != 0:
            raise RuntimeError(f"memory probe for {name} failed: {result.stderr.strip().splitlines()[-1]}")
        peaks.append(float(result.stdout.strip().splitlines()[-1]))
    return statistics.median(peaks)


def run_bench(
    archs: tuple[str, ...],
    batch_sizes: tuple[int, ...],
    warmup: int = 10,
    repeats: int = 60,
    memory: bool = True,
    snn_steps: tuple[int, ...] = (25, 100),
    trained: bool = True,
    default_malloc: bool = False,
    pretrained_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Measure every (arch, batch size); returns ``{"machine": ..., "memory_probe": ..., "results": [...]}``.

    The stdbp step is timed on a freshly initialised network (``stdbp_step_ms``, the figure
    compared with ReLU); with ``trained``, also from the repository's trained network of that
    architecture in ``pretrained_dir`` where there is one (``stdbp_trained_step_ms``; default
    ``./pretrained``): trained networks spike less, so their steps are cheaper.
    """
    results = []
    for arch in archs:
        checkpoint = shipped_checkpoint(arch, pretrained_dir) if trained else None
        for batch_size in batch_sizes:
            steps = make_steps(arch, mnist_batches(batch_size, 8), snn_steps, trained=checkpoint)
            ms = time_steps(steps, warmup, repeats, slow={n for n in steps if n.startswith("snntorch")})
            row: dict[str, Any] = {
                "arch": arch,
                "batch_size": batch_size,
                "stdbp_step_ms": round(ms["stdbp"], 3),
                "relu_step_ms": round(ms["relu"], 3),
                "ratio_vs_relu": round(ms["stdbp"] / ms["relu"], 3),
                "stdbp_epoch_s": round(ms["stdbp"] * 60000 / batch_size / 1000, 1),
                "relu_epoch_s": round(ms["relu"] * 60000 / batch_size / 1000, 1),
            }
            if checkpoint is not None:
                row["stdbp_trained_step_ms"] = round(ms["stdbp_trained"], 3)
                row["ratio_vs_relu_trained"] = round(ms["stdbp_trained"] / ms["relu"], 3)
                row["trained_checkpoint"] = checkpoint.as_posix()
            for name in steps:
                if name.startswith("snntorch"):
                    row[f"{name}_step_ms"] = round(ms[name], 3)
                    row[f"speedup_vs_{name}"] = round(ms[name] / ms["stdbp"], 2)
            if memory:
                for name in (n for n in steps if n != "stdbp_trained"):
                    row[f"{name}_peak_mib"] = round(
                        memory_probe(arch, batch_size, name, default_malloc=default_malloc), 1
                    )
                row["memory_ratio_vs_relu"] = round(row["stdbp_peak_mib"] / max(row["relu_peak_mib"], 1e-9), 2)
            results.append(row)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        **cpu_description(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    try:
        import numba

        machine["numba_threads"] = numba.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    probe = "default glibc malloc" if default_malloc else " ".join(f"{k}={v}" for k, v in PROBE_MALLOC.items())
    return {"machine": machine, "memory_probe": probe if memory else None, "results": results}
