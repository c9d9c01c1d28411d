"""Reference ReL-PSP kernel in plain PyTorch: the specification the fast kernels are tested against.

It materialises a ``(batch, in_features, out_features)`` tensor, so it is meant for tests, small
models and devices without a fast kernel, not for training at scale. Autograd through the
closed form of eq. 12 with the causal set held fixed gives exactly eqs. 14-15.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: A silent neuron that receives a gradient is treated, in the backward pass only, as if it
#: fired at ``t_ref = t_last + SILENT_HORIZON`` with unit slope, where ``t_last`` is its
#: sample's latest input spike: ``t~ = t_ref + threshold - V(t_ref)``. This pushes the weights
#: of every spiking input up, earlier inputs more, so that a silent neuron can learn to fire.
SILENT_HORIZON = 1.0


def relpsp_linear_reference(t_in: Tensor, weight: Tensor, threshold: float = 1.0) -> Tensor:
    """First-spike times of ReL-PSP neurons, by sorting and cumulative sums.

    Args:
        t_in: ``(B, N_in)`` input spike times, ``+inf`` for no spike.
        weight: ``(N_out, N_in)`` synaptic weights.
        threshold: firing threshold ``theta > 0``.

    Returns:
        ``(B, N_out)`` output spike times, ``+inf`` where the potential never reaches threshold.
    """
    inf = torch.tensor(float("inf"), dtype=t_in.dtype, device=t_in.device)
    t_sorted, order = torch.sort(t_in, dim=1)  # (B, N_in), silent inputs last
    finite = torch.isfinite(t_sorted)
    t0 = torch.where(finite, t_sorted, torch.zeros_like(t_sorted))
    w_sorted = weight.t()[order] * finite.unsqueeze(-1)  # (B, N_in, N_out)
    slope = torch.cumsum(w_sorted, dim=1)  # sum of causal weights after each input
    weighted = torch.cumsum(w_sorted * t0.unsqueeze(-1), dim=1)
    t_next = torch.cat([t_sorted[:, 1:], inf.expand(t_in.shape[0], 1)], dim=1)
    # Candidates are checked only where a group of equal input times ends.
    group_end = (finite & (t_next != t_sorted)).unsqueeze(-1)
    with torch.no_grad():
        num = threshold + weighted
        valid = group_end & (slope > 0) & (num <= t_next.unsqueeze(-1) * slope)
        fired = valid.any(dim=1)  # (B, N_out)
        first = torch.argmax(valid.to(torch.int8), dim=1)  # first crossing segment
        positions = torch.arange(t_in.shape[1], device=t_in.device).view(1, -1, 1)
        causal = (positions <= first.unsqueeze(1)) & fired.unsqueeze(1)  # (B, N_in, N_out)

    s = (w_sorted * causal).sum(dim=1)
    s_safe = torch.where(fired, s, torch.ones_like(s))
    t_fire = (threshold + (w_sorted * t0.unsqueeze(-1) * causal).sum(dim=1)) / s_safe

    # Silent neurons: forward value +inf, backward through the surrogate described above.
    t_last = torch.where(finite, t_sorted, torch.zeros_like(t_sorted)).amax(dim=1, keepdim=True)
    t_ref = (t_last + SILENT_HORIZON).detach()
    v_ref = (w_sorted * (t_ref - t0).unsqueeze(-1)).sum(dim=1)
    t_surrogate = t_ref + threshold - v_ref
    t_silent = t_surrogate + (inf - t_surrogate).detach()
    return torch.where(fired, t_fire, t_silent)
