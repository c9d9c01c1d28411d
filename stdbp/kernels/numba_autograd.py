"""``torch.autograd.Function`` wrappers of the fully connected numba kernels (``numba_linear``,
``numba_linear_backward``, ``numba_stack``): tensors to NumPy arrays and back, what the backward
pass keeps, and the cost model that picks how the backward pass sums eqs. 14-15. The
convolution's and pooling's wrappers are in :mod:`stdbp.kernels.numba_autograd_conv`.
The forward kernels count input entries that are not spike times as they read them, and the
wrappers raise ``ValueError`` for them (no separate pass over the input).

Only :mod:`stdbp.kernels` (the dispatch point) and the training step use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..validation import check_spike_times

#: How the backward passes of fully connected layers sum eqs. 14-15: ``"auto"`` (the cheapest
#: way for each layer and batch, by the costs below), ``"prefix"`` (causal prefixes),
#: ``"dense"`` (matrix products less the non-causal pairs, where they cannot overflow) or
#: ``"rows"`` (eq. 14 over all pairs, ``numba_linear_backward.relpsp_linear_backward_weight_rows``;
#: eq. 15 by prefixes). Every method gives the same gradients up to float rounding.
BACKWARD_METHODS = ("auto", "prefix", "dense", "rows")


def raise_if_invalid(bad: int, t_in: Tensor) -> None:
    """Raise ``ValueError`` if a kernel counted ``bad`` input entries that are not spike times."""
    if bad:
        check_spike_times(t_in)  # names what is wrong
        raise ValueError("t_in contains invalid spike times")  # pragma: no cover - check_spike_times raised


def sort_keys(t: np.ndarray) -> np.ndarray:
    """Integer sort keys of non-negative times: the bit patterns of ``|t|`` (so -0.0 sorts as 0.0)."""
    return np.abs(t).view(np.int32 if t.dtype == np.float32 else np.int64)


class LinearScan(NamedTuple):
    """What the forward scan of one fully connected layer keeps for the backward pass (``B``
    samples, ``N_in`` inputs, ``N_out`` neurons)."""

    t_in: np.ndarray  # (B, N_in) input times
    times: np.ndarray  # (B, N_in) each sample's spiking input times, sorted (first n_spikes[b])
    w_t: np.ndarray  # (N_in, N_out) weights, C-contiguous
    anchor: np.ndarray  # (B, N_out) spike time t_j, or t_ref of a silent neuron
    inv_slope: np.ndarray  # (B, N_out) 1 / (causal weight sum)
    n_causal: np.ndarray  # (B, N_out) length of the causal prefix in time order
    order: np.ndarray  # (B, N_in) int32 input index of each sorted spike
    n_spikes: np.ndarray  # (B,) int32 spiking inputs per sample


def _check_method(method: str) -> None:
    if method not in BACKWARD_METHODS:
        raise ValueError(f"unknown backward method {method!r}; choose one of {', '.join(BACKWARD_METHODS)}")


class RelpspLinearNumba(torch.autograd.Function):
    """Autograd wrapper of the numba scan: forward eq. 12, backward eqs. 14-15.

    ``apply(t_in, weight, threshold, method)``: ``method`` one of :data:`BACKWARD_METHODS`.
    """

    @staticmethod
    def forward(ctx, t_in: Tensor, weight: Tensor, threshold: float, method: str = "auto") -> Tensor:
        _check_method(method)
        import numba

        from . import numba_linear

        t_np = t_in.detach().contiguous().numpy()
        w_t = np.ascontiguousarray(weight.detach().numpy().T)
        batch, n_in = t_np.shape
        n_out = w_t.shape[1]
        t_out = np.empty((batch, n_out), dtype=t_np.dtype)
        anchor = np.empty_like(t_out)
        inv_slope = np.empty_like(t_out)
        n_causal = np.empty((batch, n_out), dtype=t_np.dtype)
        order = np.empty((batch, n_in), dtype=np.int32)
        times = np.empty((batch, n_in), dtype=t_np.dtype)
        n_spikes = np.empty(batch, dtype=np.int32)
        thr = t_np.dtype.type(threshold)
        _, n_chunks = numba_linear.scan_tasks(n_out, numba.get_num_threads())
        bad = numba_linear.relpsp_linear_forward(
            t_np, sort_keys(t_np), w_t, thr, t_out, anchor, inv_slope, n_causal, order, times, n_spikes, n_chunks
        )
        raise_if_invalid(bad, t_in)
        ctx.scan = LinearScan(t_np, times, w_t, anchor, inv_slope, n_causal, order, n_spikes)
        ctx.method = method
        return torch.from_numpy(t_out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        from . import numba_linear, numba_linear_backward

        scan: LinearScan = ctx.scan
        t_np, times, w_t, anchor, inv_slope = scan.t_in, scan.times, scan.w_t, scan.anchor, scan.inv_slope
        n_causal, order, n_spikes = scan.n_causal, scan.order, scan.n_spikes
        method = getattr(ctx, "method", "auto")
        with np.errstate(invalid="ignore", over="ignore"):  # extreme slopes: saturated below
            grad_scaled = grad_out.detach().contiguous().numpy() * inv_slope
        grad_t = grad_w = None
        if ctx.needs_input_grad[1]:
            summation = weight_gradient_method(method, int(n_spikes.sum()), t_np, w_t.shape, None)
            grad_w = _weight_gradient(summation, t_np, times, grad_scaled, anchor, n_causal, order, n_spikes, w_t)
        if ctx.needs_input_grad[0]:
            grad_t_np = np.zeros(times.shape, dtype=times.dtype)
            if w_t.shape[1] <= numba_linear_backward.NARROW:
                _narrow_input_gradient(w_t, w_t.shape[1], grad_scaled, n_causal, order, n_spikes, grad_t_np)
            else:
                numba_linear_backward.relpsp_linear_backward_input(
                    w_t, grad_scaled, n_causal, order, n_spikes, grad_t_np
                )
                numba_linear.saturate_(grad_t_np.reshape(-1))
            grad_t = torch.from_numpy(grad_t_np)
        return grad_t, grad_w, None, None


def _weight_gradient(
    method: str,
    t_in,
    times,
    grad_scaled,
    anchor,
    n_causal,
    order,
    n_spikes,
    w_t,
    top: tuple[float, float] | None = None,
) -> Tensor:
    """Eq. 14 for one fully connected layer from what its forward scan kept: ``(N_out, N_in)``.

    ``method``: ``"prefix"`` (sums over each neuron's causal prefix,
    ``numba_linear_backward.relpsp_linear_backward_weight``) or ``"rows"`` (over all pairs of the input times
    ``t_in`` ``(B, N_in)``, ``numba_linear_backward.relpsp_linear_backward_weight_rows``); see
    :func:`weight_gradient_method`. ``top``: the largest ``|grad_scaled|`` and ``anchor``
    (``inf`` for NaN) if already known.
    """
    import numba

    from . import numba_linear, numba_linear_backward

    grad_w_t = np.empty_like(w_t)
    if method == "rows":
        numba_linear_backward.relpsp_linear_backward_weight_rows(
            t_in, grad_scaled, anchor, numba.get_num_threads(), grad_w_t
        )
    else:
        numba_linear_backward.relpsp_linear_backward_weight(
            times, grad_scaled, anchor, n_causal, order, n_spikes, numba.get_num_threads(), grad_w_t
        )
    # each entry sums batch terms a * (t_i - t_j), |t_i - t_j| <= max |anchor|: saturate only if that may overflow
    if top is None:
        top = float(np.abs(grad_scaled).max(initial=0.0)), float(anchor.max(initial=0.0))  # NaN if any is NaN
    if not top[0] * top[1] * len(anchor) < 0.5 * float(np.finfo(w_t.dtype).max):
        numba_linear.saturate_(grad_w_t.reshape(-1))
    return torch.from_numpy(grad_w_t).t()


def _narrow_input_gradient(w_t, width: int, grad_scaled, n_causal, order, n_spikes, grad_in) -> None:
    """Eq. 15 into ``grad_in`` ``(B, N_in)`` for a layer of ``width <= numba_linear_backward.NARROW``
    neurons (the first ``width`` columns of ``w_t``; padding columns beyond are ignored), by
    ``numba_linear_backward.relpsp_linear_backward_input_narrow``, saturated."""
    from . import numba_linear, numba_linear_backward

    weight = np.ascontiguousarray(w_t[:, :width].T)  # (width, N_in): the kernel runs over the inputs
    numba_linear_backward.relpsp_linear_backward_input_narrow(weight, grad_scaled, n_causal, order, n_spikes, grad_in)
    numba_linear.saturate_(grad_in.reshape(-1))


def _padded(w_t: np.ndarray, cols: int) -> np.ndarray:
    """``w_t`` ``(N_in, N_out)`` C-contiguous, with zero columns up to ``cols``."""
    if w_t.shape[1] == cols:
        return np.ascontiguousarray(w_t)
    out = np.zeros((w_t.shape[0], cols), dtype=w_t.dtype)
    out[:, : w_t.shape[1]] = w_t
    return out


class StackScan(NamedTuple):
    """What the forward pass of a stack of fully connected layers keeps, per layer ``l`` (lists,
    so that a layer's entries can be released once its gradients are made): the fields of
    :class:`LinearScan` for each layer, and ``first_fire`` ``(L, B)``, the position in each
    sample's time order of the first input after which some neuron of the layer fired."""

    t_in: list  # [l] (B, N_l) input times of layer l
    w_ts: tuple  # [l] (N_l, W_l) weights, neurons padded to whole vectors of 8
    widths: np.ndarray  # (L,) neurons per layer before padding
    anchor: list
    inv_slope: list
    n_causal: list
    order: list
    times: list
    n_spikes: np.ndarray  # (L, B)
    first_fire: np.ndarray  # (L, B)


class RelpspStackNumba(torch.autograd.Function):
    """Autograd wrapper of ``numba_stack``: fully connected layers ``t_in -> ... -> t_out``, the
    forward in one kernel call, the backward a layer at a time (sums over causal prefixes, over
    all pairs, or matrix products, whichever is cheaper: :func:`dense_is_cheaper`,
    :func:`weight_gradient_method`). Spike times are those of :class:`RelpspLinearNumba` layer
    by layer, bit for bit; so are the gradients of prefix sums and of sums over all pairs.

    ``apply(t_in, thresholds, method, *weights)``: ``t_in`` ``(B, N_0)``, ``thresholds`` a tuple
    of floats, ``method`` one of :data:`BACKWARD_METHODS`, ``weights[l]`` ``(N_{l+1}, N_l)``;
    returns ``(B, N_L)``. Raises ``ValueError`` for
    input times that are NaN or negative (the kernel counts them while it reads them).

    A caller that runs the backward pass once (``stdbp.training.step``) sets ``ctx.single_backward``: each
    layer's saved state is then released as soon as its gradients are made, which lowers the
    step's memory peak (autograd keeps it, for ``retain_graph``).
    """

    @staticmethod
    def forward(ctx, t_in: Tensor, thresholds: Sequence[float], method: str, *weights: Tensor) -> Tensor:
        _check_method(method)
        from . import numba_stack

        t_np = t_in.detach().contiguous().numpy()
        dtype, batch = t_np.dtype, t_np.shape[0]
        widths = np.array([w.shape[0] for w in weights])
        w_ts = tuple(
            _padded(w.detach().numpy().T, -(-w.shape[0] // 8) * 8) for w in weights
        )  # whole vectors of 8 neurons
        t = (t_np, *(np.empty((batch, n), dtype=dtype) for n in widths))
        anchor = tuple(np.empty((batch, w.shape[1]), dtype=dtype) for w in w_ts)
        inv_slope = tuple(np.empty_like(x) for x in anchor)
        n_causal = tuple(np.empty_like(x) for x in anchor)
        order = tuple(np.empty((batch, w.shape[0]), dtype=np.int32) for w in w_ts)
        times = tuple(np.empty((batch, w.shape[0]), dtype=dtype) for w in w_ts)
        n_spikes = np.empty((len(w_ts), batch), dtype=np.int32)
        first_fire = np.empty_like(n_spikes)
        keys = (sort_keys(t_np), *(x.view(sort_keys(x[:0]).dtype) for x in t[1:]))  # hidden times are > 0
        bad = numba_stack.stack_forward(
            w_ts,
            widths,
            np.array(thresholds, dtype=dtype),
            t,
            keys,
            anchor,
            inv_slope,
            n_causal,
            order,
            times,
            n_spikes,
            first_fire,
        )
        raise_if_invalid(bad, t_in)
        ctx.scan = StackScan(
            [*t[:-1]], w_ts, widths, [*anchor], [*inv_slope], [*n_causal], [*order], [*times], n_spikes, first_fire
        )
        ctx.method = method
        return torch.from_numpy(t[-1])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        import numba

        from . import numba_linear_backward, numba_stack

        scan: StackScan = ctx.scan
        t, w_ts, widths, anchor, inv_slope = scan.t_in, scan.w_ts, scan.widths, scan.anchor, scan.inv_slope
        n_causal, order, times, n_spikes, first_fire = (
            scan.n_causal,
            scan.order,
            scan.times,
            scan.n_spikes,
            scan.first_fire,
        )
        grad = grad_out.detach().contiguous().numpy()
        batch, dtype = grad.shape[0], grad.dtype
        grads: list[Tensor | None] = [None] * (len(w_ts) + 1)  # input, then each weight
        limit = 0.5 * float(np.finfo(dtype).max)
        for l in range(len(w_ts) - 1, -1, -1):
            w_t, want_input = w_ts[l], l > 0 or ctx.needs_input_grad[0]
            a = np.empty_like(anchor[l])
            top_a, top_t, latest, spikes, non_causal, fewest = numba_stack.scale_gradient(
                grad, inv_slope[l], anchor[l], times[l], n_spikes[l], first_fire[l], a
            )
            # matrix products may be used if no term of eq. 14, nor a sum over all pairs (the
            # non-causal ones included), can overflow
            matmul_ok = top_a * top_t * batch < limit and top_a * max(latest, top_t) * batch < limit
            all_spike = fewest == t[l].shape[1]
            dense = want_input and matmul_ok and dense_is_cheaper(ctx.method, spikes, non_causal, batch, w_t.shape)
            if dense:
                dense = top_a * numba_stack.abs_max(w_t) * w_t.shape[1] < limit
            if want_input:
                grad_in = (
                    torch.mm(torch.from_numpy(a), torch.from_numpy(w_t).t()).numpy()
                    if dense
                    else np.empty((batch, w_t.shape[0]), dtype=dtype)
                )
                if not dense and widths[l] <= numba_linear_backward.NARROW:  # as RelpspLinearNumba does, bit for bit
                    _narrow_input_gradient(w_t, widths[l], a, n_causal[l], order[l], n_spikes[l], grad_in)
                else:
                    numba_stack.input_gradient(
                        w_t, widths[l], a, n_causal[l], order[l], n_spikes[l], dense, first_fire[l], grad_in
                    )
            if ctx.needs_input_grad[3 + l]:
                summation = weight_gradient_method(
                    ctx.method, spikes, t[l], w_t.shape, (non_causal, all_spike) if matmul_ok else None
                )
                if summation == "matmul":  # the sum over all spiking pairs of a_j t_i - a_j t_j, then the correction
                    if all_spike:  # the a_j t_j sum is the same for every row: subtracted in the correction
                        grad_w_t = torch.mm(torch.from_numpy(t[l]).t(), torch.from_numpy(a)).numpy()
                    else:
                        spiking = np.isfinite(t[l])
                        lhs = np.concatenate([np.where(spiking, t[l], 0), spiking.astype(dtype)])  # (2B, N_in)
                        rhs = np.concatenate([a, -(a * anchor[l])])  # (2B, W)
                        grad_w_t = torch.mm(torch.from_numpy(lhs).t(), torch.from_numpy(rhs)).numpy()
                    numba_stack.weight_gradient_correction(
                        times[l],
                        a,
                        anchor[l],
                        n_causal[l],
                        order[l],
                        n_spikes[l],
                        first_fire[l],
                        all_spike,
                        numba.get_num_threads(),
                        grad_w_t,
                    )
                    grad_w = torch.from_numpy(grad_w_t).t()
                else:
                    grad_w = _weight_gradient(
                        summation, t[l], times[l], a, anchor[l], n_causal[l], order[l], n_spikes[l], w_t, (top_a, top_t)
                    )
                grads[1 + l] = (
                    grad_w if widths[l] == w_t.shape[1] else grad_w[: widths[l]].t().contiguous().t()
                )  # laid out as weight_t
            if want_input:
                grad = grad_in
            if getattr(
                ctx, "single_backward", False
            ):  # the layer's state goes before the next layer's gradients are made
                for state in (t, anchor, inv_slope, n_causal, order, times):
                    state[l] = None
        if ctx.needs_input_grad[0]:
            grads[0] = torch.from_numpy(grad)
        return grads[0], None, None, *grads[1:]


#: Costs in units of one (input, neuron) pair of the causal-prefix kernels (~10 G pairs/s on the
#: 2-core CPU), measured on the layers of the README's networks: one multiply-add of ``torch.mm``
#: (47 G/s); one pair of ``relpsp_linear_backward_weight_rows`` (~22 G/s); and the fixed work per
#: spiking input of a prefix kernel, or per eight inputs of a sample for the rows kernel, in pairs
#: (why a 10-neuron layer runs at 1.4 G pairs/s by prefixes, 5.7 G by rows); and per input entry
#: the NumPy passes that lay out the matrix products' operands where not every input spikes
#: (0.25 ms of matrix products for a 10-neuron output layer at batch 64, 0.15 ms by rows).
_MATMUL_COST = 0.1
_MATMUL_PREP = 20
#: Most inputs that may be non-causal (share of the spiking ones) for the matrix-product form.
_MATMUL_MAX_NON_CAUSAL = 0.25
_ROWS_COST = 0.45
_PREFIX_OVERHEAD = 56
_ROWS_OVERHEAD = 48


def dense_is_cheaper(mode: str, spikes: int, non_causal: int, batch: int, shape: tuple[int, int]) -> bool:
    """Whether eq. 15 for a layer of ``shape = (N_in, W)`` is cheaper as a matrix product less the
    non-causal pairs than as sums over causal prefixes, for ``batch`` samples with ``spikes``
    spiking inputs in all, of which ``non_causal`` may be non-causal for some neuron (those from
    ``first_fire`` on).

    Never where more than a quarter of the inputs may be non-causal: a sum over all pairs less a
    large correction would lose float32 digits (measured: 4e-3 of the largest weight gradient
    for a 10-neuron output layer with half its inputs non-causal, 1e-5 for the CSNN's layers).
    """
    if mode != "auto":
        return mode == "dense"
    if non_causal > _MATMUL_MAX_NON_CAUSAL * spikes:
        return False
    prefix = float(spikes) * (shape[1] + _PREFIX_OVERHEAD)
    dense = _MATMUL_COST * batch * shape[0] * shape[1] + float(non_causal) * (shape[1] + _PREFIX_OVERHEAD)
    return dense < prefix


def weight_gradient_method(
    mode: str, spikes: int, t_in: np.ndarray, shape: tuple[int, int], matmul: tuple[int, bool] | None
) -> str:
    """How to sum eq. 14 for a layer of ``shape = (N_in, W)`` with input times ``t_in``
    ``(B, N_in)`` (``spikes`` of them spiking): ``"prefix"``, ``"rows"`` or ``"matmul"``, the
    cheapest by the costs above. ``matmul`` is ``(non_causal, all_spike)`` where matrix products
    may be used (the stack, where they cannot overflow), else ``None``; they are not used where
    more than a quarter of the inputs may be non-causal (see :func:`dense_is_cheaper`).
    """
    if mode != "auto":
        return {"prefix": "prefix", "rows": "rows", "dense": "matmul" if matmul is not None else "prefix"}[mode]
    batch, n_in = t_in.shape
    costs = {"prefix": float(spikes) * (shape[1] + _PREFIX_OVERHEAD)}
    if costs["prefix"] > 0:
        # the rows kernel skips a sample's eight inputs if none spikes: as many groups are left as
        # for inputs that spike independently (an upper bound where spikes cluster, as in images)
        density = spikes / (batch * n_in)
        groups = batch * -(-n_in // 8) * (1.0 - (1.0 - density) ** 8)
        costs["rows"] = _ROWS_COST * 8 * groups * (shape[1] + _ROWS_OVERHEAD)
    if matmul is not None and matmul[0] <= _MATMUL_MAX_NON_CAUSAL * spikes:
        products = batch * shape[0] * shape[1] * (1 if matmul[1] else 2)  # (B or 2B) x N_in x W
        prep = 0 if matmul[1] else _MATMUL_PREP * batch * n_in
        costs["matmul"] = _MATMUL_COST * products + prep + float(matmul[0]) * (shape[1] + _PREFIX_OVERHEAD)
    return min(costs, key=costs.__getitem__)
