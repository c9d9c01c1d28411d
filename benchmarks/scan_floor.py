"""What bounds the forward scan of a fully connected layer: the full scan against the same loop
without the threshold test, and against streaming the weight rows alone (the README's "Speed").

Usage: python benchmarks/scan_floor.py [--arch 28x28-6C5-P2-16C5-P2-1024-128-10] [--batch-size 128] [--repeats 30]

Takes the first fully connected layer of a freshly initialised network (the layers before it
run once to make its input from a real MNIST batch) and times, per batch, on numba's thread
count: the layer's forward kernel as the training step runs it (``numba_linear.relpsp_linear_forward``:
sort, scan, outputs); the same sort and loops with the scan's threshold test removed (every
input accumulated into ``s``, ``r`` and the count, as for a neuron that never fires, which a
freshly initialised hidden neuron nearly is); and with only one add per weight (the weight rows
streamed in each sample's time order, nothing else). The last two are not spike times; they
show how much of the scan is the test and how much the weights' trip through the caches.
"""

from __future__ import annotations

import argparse

import numba
import numpy as np
import torch
from layer_times import median_ms  # benchmarks/ is the script's directory, so on sys.path
from numba import njit, prange

from stdbp.bench.step_timing import mnist_batches
from stdbp.kernels import numba_linear, sort_keys
from stdbp.nn.layers import SpikingLinear
from stdbp.nn.network import build
from stdbp.training.loop import encode


@njit(nogil=True, fastmath={"contract"})
def _accumulate_only(times, order, count, weight_t, s, r, n, stream_only):  # pragma: no cover - compiled
    """The scan's loop, four inputs a pass, without the threshold test (or with one add per weight)."""
    width = s.shape[0]
    one = np.ones(1, dtype=times.dtype)[0]
    k = 0
    while k + 4 <= count:
        t0, t1, t2, t3 = times[k], times[k + 1], times[k + 2], times[k + 3]
        w0, w1, w2, w3 = weight_t[order[k]], weight_t[order[k + 1]], weight_t[order[k + 2]], weight_t[order[k + 3]]
        k += 4
        if stream_only:
            for j in range(width):
                s[j] += w0[j] + w1[j] + w2[j] + w3[j]
        else:
            for j in range(width):
                s[j] += w0[j] + w1[j] + w2[j] + w3[j]
                r[j] += w0[j] * t0 + w1[j] * t1 + w2[j] * t2 + w3[j] * t3
                n[j] += one + one + one + one


@njit(parallel=True)
def _variant_forward(t_in, keys, weight_t, order, times, n_spikes, s_out, stream_only):  # pragma: no cover - compiled
    """Sort every sample's spikes as the forward kernel does, then run :func:`_accumulate_only` per sample."""
    for b in prange(t_in.shape[0]):
        n_spikes[b] = numba_linear.sorted_spikes(t_in[b], keys[b], order[b], times[b])
    for b in prange(t_in.shape[0]):
        width = weight_t.shape[1]
        s = np.zeros(width, dtype=t_in.dtype)
        r = np.zeros(width, dtype=t_in.dtype)
        n = np.zeros(width, dtype=t_in.dtype)
        _accumulate_only(times[b], order[b], n_spikes[b], weight_t, s, r, n, stream_only)
        s_out[b] = s + r + n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="28x28-6C5-P2-16C5-P2-1024-128-10")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build(args.arch)
    images, _ = mnist_batches(args.batch_size, 1)[0]
    t = model.shape_input(encode(images, 1.0))
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer, SpikingLinear):
                break
            t = layer(t)
    t_np = np.ascontiguousarray(t.reshape(t.shape[0], -1).numpy())
    w_t = np.ascontiguousarray(layer.weight_t.detach().numpy())
    batch, n_in = t_np.shape
    n_out = w_t.shape[1]
    keys = sort_keys(t_np)
    order, times = np.empty((batch, n_in), np.int32), np.empty((batch, n_in), np.float32)
    n_spikes = np.empty(batch, np.int32)
    outs = [np.empty((batch, n_out), np.float32) for _ in range(4)]
    _, n_chunks = numba_linear.scan_tasks(n_out, numba.get_num_threads())
    rows = {
        "full scan (the forward kernel)": lambda: numba_linear.relpsp_linear_forward(
            t_np, keys, w_t, np.float32(layer.threshold), *outs, order, times, n_spikes, n_chunks
        ),
        "without the threshold test": lambda: _variant_forward(t_np, keys, w_t, order, times, n_spikes, outs[0], False),
        "weight rows streamed, one add each": lambda: _variant_forward(
            t_np, keys, w_t, order, times, n_spikes, outs[0], True
        ),
    }
    print(
        f"{args.arch}, layer {layer.in_features}->{layer.out_features}, batch {batch}, {numba.get_num_threads()} thread(s), medians of {args.repeats} (ms)"
    )
    for name, fn in rows.items():
        print(f"  {name:36s} {median_ms(fn, args.repeats):6.2f}")
    print(f"  spiking inputs per sample: {n_spikes.mean():.0f}")


if __name__ == "__main__":
    main()
