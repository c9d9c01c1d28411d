"""Where the time of a stdbp training step goes, layer by layer (the README's "Where the time goes").

Usage: NUMBA_NUM_THREADS=1 python benchmarks/layer_times.py [--arch 784-800-10] [--batch-size 64] [--checkpoint FILE]

For each fully connected ReL-PSP layer of a freshly initialised network (or of ``--checkpoint``),
on a real MNIST batch (the layers before it, convolutions included, run untimed): the sort of
the spiking inputs alone, the whole forward kernel, both weight-gradient kernels (by causal
prefixes and by rows, of which the training step takes the cheaper) and the input-gradient
kernel (as the training step calls it), with the number of spiking inputs per sample and
nanoseconds per neuron update (forward time / (batch * spiking inputs * neurons)). Then
PyTorch's fused Adam on that layer's weights, contiguous and transposed. Medians of wall time
over repeats, on numba's (and PyTorch's) thread count:
``NUMBA_NUM_THREADS=1`` for one thread.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numba
import numpy as np
import torch
from numba import njit, prange

from stdbp.bench.step_timing import mnist_batches
from stdbp.checkpoint import load_model
from stdbp.kernels import numba_linear, numba_linear_backward, sort_keys
from stdbp.nn.layers import SpikingLinear
from stdbp.nn.network import build
from stdbp.training.loop import encode


@njit(parallel=True)
def _sort_only(t_in, keys, order, times, n_spikes):  # pragma: no cover - compiled
    for b in prange(t_in.shape[0]):
        n_spikes[b] = numba_linear.sorted_spikes(t_in[b], keys[b], order[b], times[b])


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def layer_times(layer: SpikingLinear, t_in: torch.Tensor, repeats: int) -> tuple[dict[str, float], torch.Tensor]:
    t_np = t_in.detach().numpy()
    w_t = layer.weight_t.detach().numpy()
    batch, n_in = t_np.shape
    n_out = w_t.shape[1]
    outs = [np.empty((batch, n_out), np.float32) for _ in range(4)]  # t_out, anchor, inv_slope, n_causal
    order, times = np.empty((batch, n_in), np.int32), np.empty((batch, n_in), np.float32)
    n_spikes = np.empty(batch, np.int32)
    keys = sort_keys(t_np)
    _, n_chunks = numba_linear.scan_tasks(n_out, numba.get_num_threads())

    def forward() -> None:
        numba_linear.relpsp_linear_forward(
            t_np, keys, w_t, np.float32(layer.threshold), *outs, order, times, n_spikes, n_chunks
        )

    row = {
        "forward_ms": median_ms(forward, repeats),
        "sort_ms": median_ms(lambda: _sort_only(t_np, keys, order, times, n_spikes), repeats),
    }
    forward()
    grad_scaled = (np.random.default_rng(0).standard_normal((batch, n_out)) * outs[2]).astype(np.float32)
    grad_w, grad_in = np.zeros_like(w_t), np.zeros((batch, n_in), np.float32)
    threads = numba.get_num_threads()
    row["grad_weight_ms"] = median_ms(
        lambda: numba_linear_backward.relpsp_linear_backward_weight(
            times, grad_scaled, outs[1], outs[3], order, n_spikes, threads, grad_w
        ),
        repeats,
    )
    row["grad_weight_rows_ms"] = median_ms(
        lambda: numba_linear_backward.relpsp_linear_backward_weight_rows(t_np, grad_scaled, outs[1], threads, grad_w),
        repeats,
    )
    if n_out <= numba_linear_backward.NARROW:  # as the training step sums it
        weight = np.ascontiguousarray(w_t.T)
        row["grad_input_ms"] = median_ms(
            lambda: numba_linear_backward.relpsp_linear_backward_input_narrow(
                weight, grad_scaled, outs[3], order, n_spikes, grad_in
            ),
            repeats,
        )
    else:
        row["grad_input_ms"] = median_ms(
            lambda: numba_linear_backward.relpsp_linear_backward_input(
                w_t, grad_scaled, outs[3], order, n_spikes, grad_in
            ),
            repeats,
        )
    row["spiking_inputs_per_sample"] = float(n_spikes.mean())
    row["fired_fraction"] = float(np.isfinite(outs[0]).mean())
    row["ns_per_update"] = 1e6 * row["forward_ms"] / (batch * n_spikes.mean() * n_out)
    return row, torch.from_numpy(outs[0].copy())


def adam_ms(shape: tuple[int, int], transposed: bool, repeats: int) -> float:
    data = torch.randn(shape[::-1]).t() if transposed else torch.randn(shape)
    param = torch.nn.Parameter(data)
    param.grad = torch.randn_like(param)
    optimizer = torch.optim.Adam([param], lr=1e-3, fused=True)
    return median_ms(optimizer.step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="784-800-10", help="an architecture; its fully connected layers are timed")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint", help="time these trained weights instead of a fresh network")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(numba.get_num_threads())
    model = load_model(args.checkpoint) if args.checkpoint else build(args.arch)
    images, _ = mnist_batches(args.batch_size, 1)[0]
    t = model.shape_input(encode(images, 1.0))
    print(
        f"{args.checkpoint or args.arch}, batch {args.batch_size}, {numba.get_num_threads()} thread(s), medians of {args.repeats} (wall time)"
    )
    for index, layer in enumerate(model.layers):
        if not isinstance(layer, SpikingLinear):  # convolutions and pooling: run, not timed
            with torch.no_grad():
                t = layer(t)
            continue
        row, t = layer_times(layer, t.flatten(1), args.repeats)
        print(
            f"layer {index} ({layer.in_features}->{layer.out_features}): forward {row['forward_ms']:.2f} ms "
            f"(sort {row['sort_ms']:.2f}), grad weight {row['grad_weight_ms']:.2f} ms by prefixes, {row['grad_weight_rows_ms']:.2f} ms by rows, "
            f"grad input {row['grad_input_ms']:.2f} ms; "
            f"{row['spiking_inputs_per_sample']:.0f} spiking inputs/sample, {100 * row['fired_fraction']:.1f} % fire, "
            f"{row['ns_per_update']:.2f} ns per neuron update"
        )
        shape = (layer.in_features, layer.out_features)
        print(
            f"  fused Adam on its weights: contiguous {adam_ms(shape, False, args.repeats):.2f} ms, transposed {adam_ms(shape, True, args.repeats):.2f} ms"
        )


if __name__ == "__main__":
    main()
