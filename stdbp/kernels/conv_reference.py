"""Reference convolutional ReL-PSP kernel in plain PyTorch: the specification the numba kernel is tested against.

Every output position of a convolution is a ReL-PSP neuron whose inputs are its receptive
field. The reference cuts the receptive fields out with :func:`torch.nn.functional.unfold`
(padding with ``+inf``, so that padding never spikes) and hands each one to the linear
reference as if it were a sample of its own. So everything the linear reference specifies
holds per receptive field, including the silent-neuron surrogate: ``t_ref`` is the latest
input spike *in the neuron's receptive field* plus ``SILENT_HORIZON`` (0 + ``SILENT_HORIZON``
when the field holds no spike, in which case no gradient flows anywhere).

It materialises a ``(B * H_out * W_out, C_in * kH * kW, C_out)`` tensor: for tests and small
models only.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .reference import relpsp_linear_reference


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis, as :func:`torch.nn.functional.conv2d` (0 if nothing fits)."""
    return max(0, (size + 2 * padding - kernel) // stride + 1)


def relpsp_conv2d_reference(
    t_in: Tensor,
    weight: Tensor,
    threshold: float = 1.0,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
) -> Tensor:
    """First-spike times of a convolutional layer of ReL-PSP neurons, per receptive field.

    Args:
        t_in: ``(B, C_in, H, W)`` input spike times, ``+inf`` for no spike.
        weight: ``(C_out, C_in, kH, kW)`` synaptic weights, as in :func:`torch.nn.functional.conv2d`.
        threshold: firing threshold ``theta > 0``.
        stride: ``(sH, sW)`` step between receptive fields, in input pixels.
        padding: ``(pH, pW)`` rows/columns of silent inputs added on each side.

    Returns:
        ``(B, C_out, H_out, W_out)`` output spike times, ``+inf`` where a neuron never reaches threshold.
    """
    batch, c_in, height, width = t_in.shape
    c_out, _, k_h, k_w = weight.shape
    h_out = conv_output_size(height, k_h, stride[0], padding[0])
    w_out = conv_output_size(width, k_w, stride[1], padding[1])
    pad = (padding[1], padding[1], padding[0], padding[0])
    t_pad = F.pad(t_in, pad, value=float("inf"))  # (B, C_in, H + 2pH, W + 2pW)
    fields = F.unfold(t_pad, (k_h, k_w), stride=stride)  # (B, C_in*kH*kW, H_out*W_out)
    rows = fields.transpose(1, 2).reshape(batch * h_out * w_out, c_in * k_h * k_w)
    t_out = relpsp_linear_reference(rows, weight.reshape(c_out, -1), threshold)  # (B*H_out*W_out, C_out)
    return t_out.reshape(batch, h_out, w_out, c_out).permute(0, 3, 1, 2)
