"""The first-spike cross-entropy (eq. 13) and its gradient in one numba call, for the fused
training step (``stdbp.training.step``): the same definition as ``stdbp.functional.first_spike_cross_entropy``
(silent outputs count as the latest output spike of the batch plus ``5 * tau``, or as
``silent_time``, and pass their gradient on), a handful of small tensor operations there.
Agrees with it, and with autograd's gradient of it, to float rounding (``tests/test_fused_step.py``).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def cross_entropy_and_gradient(t_out, labels, tau, silent_time, grad):  # pragma: no cover - compiled
    """Mean over the batch of ``-log softmax(-t / tau)[label]``; writes ``dL/dt_out`` to ``grad``.

    Args:
        t_out: ``(B, C)`` output times, ``inf`` for silent neurons.
        labels: ``(B,)`` int64 target classes (checked by the caller).
        tau: softmax time scale, ``> 0``.
        silent_time: the time silent outputs count as, or NaN for the batch's latest output
            spike plus ``5 * tau`` (0 plus ``5 * tau`` if no output fires).
        grad: ``(B, C)`` (written), in the dtype of ``t_out``.

    Returns the loss as a float64. Logits are computed in the dtype of ``t_out``, the
    log-sum-exp and the gradient in float64, then rounded.
    """
    batch, classes = t_out.shape
    for b in range(batch):
        if not 0 <= labels[b] < classes:
            raise ValueError("labels must be class indices in [0, classes)")
    fill = silent_time
    if fill != fill:
        latest = -np.inf
        for b in range(batch):
            for c in range(classes):
                if t_out[b, c] < np.inf:
                    latest = max(latest, np.float64(t_out[b, c]))
        fill = (latest if latest > -np.inf else 0.0) + 5.0 * tau
    fill_cast = np.full(1, fill, dtype=t_out.dtype)[0]
    tau_cast = np.full(1, tau, dtype=t_out.dtype)[0]
    logits = np.empty(classes, dtype=np.float64)
    total = 0.0
    for b in range(batch):
        top = -np.inf
        for c in range(classes):
            t = t_out[b, c] if t_out[b, c] < np.inf else fill_cast
            logits[c] = np.float64(-t / tau_cast)
            top = max(top, logits[c])
        norm = 0.0
        for c in range(classes):
            norm += np.exp(logits[c] - top)
        log_norm = top + np.log(norm)
        total += log_norm - logits[labels[b]]
        for c in range(classes):
            p = np.exp(logits[c] - log_norm) - (1.0 if c == labels[b] else 0.0)
            grad[b, c] = -p / (tau * batch)
    return total / batch
