"""Data augmentation for image batches and input spike times, driven by an explicit generator.

Each random function draws for a whole batch. With ``rows=(start, total)`` the images passed are
rows ``[start, start + len)`` of a batch of ``total``: the draws are made for all ``total`` rows
(the generator advances as for the whole batch) and these rows' draws are applied, so that a
batch split over processes gets exactly the augmentation it would get in one process.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = [
    "affine_transform",
    "elastic_displacement",
    "random_affine",
    "random_erase",
    "random_hflip",
    "random_shift",
    "jitter_times",
]


def affine_transform(images: Tensor, angles: Tensor, scales: Tensor, displacement: Tensor | None = None) -> Tensor:
    """Rotate each image of ``(B, H, W)`` about its centre and scale it, bilinear, zeros outside.

    ``angles`` ``(B,)`` are in radians, positive = counter-clockwise as displayed (row 0 at the top);
    ``scales`` ``(B,)`` > 1 enlarge the content. ``displacement`` ``(B, 2, H, W)``, in pixels, moves
    where each output pixel samples its input (``[:, 0]`` along x, ``[:, 1]`` along y) after the
    affine map: an elastic distortion in the same single interpolation. Integer images (uint8
    pixels) come back rounded, same dtype.
    """
    batch, height, width = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    cos, sin = torch.cos(angles) / scales, torch.sin(angles) / scales
    # maps output coordinates (x right, y down, in [-1, 1]) to input coordinates
    theta = torch.zeros(batch, 2, 3, dtype=dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    grid = torch.nn.functional.affine_grid(theta, [batch, 1, height, width], align_corners=False)
    if displacement is not None:
        # one pixel is 2 / size in grid_sample's normalised coordinates (align_corners=False)
        per_pixel = torch.tensor([2.0 / width, 2.0 / height], dtype=dtype)
        grid = grid + displacement.to(dtype).permute(0, 2, 3, 1) * per_pixel
    out = torch.nn.functional.grid_sample(
        images.unsqueeze(1).to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    out = out.squeeze(1)
    return out if images.is_floating_point() else out.round().to(images.dtype)


def _rows(images: Tensor, rows: tuple[int, int] | None) -> tuple[int, int]:
    """``(start, total)``: the images' first row in the batch and the batch's size."""
    return (0, images.shape[0]) if rows is None else rows


def elastic_displacement(uniform: Tensor, alpha: float, sigma: float) -> Tensor:
    """Simard et al.'s elastic distortion field: ``uniform`` ``(B, 2, H, W)`` draws in ``[-1, 1]``,
    smoothed by a normalised Gaussian of ``sigma`` pixels (zeros beyond the image) and scaled by
    ``alpha``; returns displacements in pixels, same shape and dtype."""
    batch, two, height, width = uniform.shape
    rows = uniform.reshape(-1, width) @ _gaussian_matrix(width, sigma, uniform.dtype)  # along x
    columns = rows.view(-1, height, width).transpose(1, 2).reshape(-1, height) @ _gaussian_matrix(
        height, sigma, uniform.dtype
    )
    return alpha * columns.view(batch, two, width, height).transpose(2, 3)


@functools.cache
def _gaussian_matrix(size: int, sigma: float, dtype: torch.dtype) -> Tensor:
    """``(size, size)``, symmetric: row ``i`` is the normalised Gaussian of ``sigma`` (cut at 3 sigma) centred
    on ``i``, zero beyond the image, so that a product with it is a zero-padded convolution."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    distance = torch.arange(size).view(1, -1) - torch.arange(size).view(-1, 1)
    inside = distance.abs() <= radius
    return torch.where(inside, kernel[(distance + radius).clamp(0, 2 * radius)], torch.zeros((), dtype=dtype))


def random_affine(
    images: Tensor,
    max_degrees: float,
    max_scale: float,
    generator: torch.Generator,
    rows: tuple[int, int] | None = None,
    elastic: float = 0.0,
    elastic_sigma: float = 6.0,
) -> Tensor:
    """Rotate each image of ``(B, H, W)`` by a uniform angle in ``[-max_degrees, max_degrees]``, scale it
    by a uniform factor in ``[1 - max_scale, 1 + max_scale]`` and, if ``elastic > 0``, distort it by
    :func:`elastic_displacement` of strength ``elastic`` and smoothness ``elastic_sigma`` (pixels),
    all in one bilinear interpolation. Draws nothing when all three are 0; the angle and scale draws
    come first and are the same with or without the elastic field.
    """
    if max_degrees <= 0 and max_scale <= 0 and elastic <= 0:
        return images
    start, total = _rows(images, rows)
    batch, height, width = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    angles, scales = torch.zeros(batch, dtype=dtype), torch.ones(batch, dtype=dtype)
    if max_degrees > 0 or max_scale > 0:
        draws = torch.rand(2, total, generator=generator, dtype=torch.float64) * 2 - 1
        draws = draws[:, start : start + batch]
        angles = (draws[0] * math.radians(max_degrees)).to(dtype)
        scales = (1 + draws[1] * max_scale).to(dtype)
    displacement = None
    if elastic > 0:
        uniform = torch.rand(total, 2, height, width, generator=generator, dtype=dtype) * 2 - 1
        displacement = elastic_displacement(uniform[start : start + batch], elastic, elastic_sigma)
    return affine_transform(images, angles, scales, displacement)


def random_hflip(images: Tensor, p: float, generator: torch.Generator, rows: tuple[int, int] | None = None) -> Tensor:
    """Mirror each image of ``(B, H, W)`` left to right with probability ``p``. Draws nothing when
    ``p`` is 0."""
    if p <= 0:
        return images
    start, total = _rows(images, rows)
    mirrored = torch.rand(total, generator=generator, dtype=torch.float64)[start : start + images.shape[0]] < p
    return torch.where(mirrored.view(-1, 1, 1), images.flip(-1), images)


def random_shift(
    images: Tensor, max_shift: int, generator: torch.Generator, rows: tuple[int, int] | None = None
) -> Tensor:
    """Shift each image of ``(B, H, W)`` by up to ``max_shift`` pixels in x and y, filling with zeros."""
    if max_shift <= 0:
        return images
    batch, height, width = images.shape
    padded = torch.nn.functional.pad(images, (max_shift, max_shift, max_shift, max_shift))
    start, total = _rows(images, rows)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, total), generator=generator)[:, start : start + batch]
    row_index = offsets[0].view(-1, 1) + torch.arange(height).view(1, -1)  # (B, H)
    col_index = offsets[1].view(-1, 1) + torch.arange(width).view(1, -1)  # (B, W)
    return padded[torch.arange(batch).view(-1, 1, 1), row_index.unsqueeze(-1), col_index.unsqueeze(1)]


def random_erase(
    images: Tensor,
    p: float,
    generator: torch.Generator,
    rows: tuple[int, int] | None = None,
    area: tuple[float, float] = (0.02, 0.4),
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
) -> Tensor:
    """Random erasing (Zhong et al., 2020): with probability ``p``, set a rectangle of each image of
    ``(B, H, W)`` to 0 (in latency coding: no input spikes there). The rectangle covers a uniform
    share in ``area`` of the image, its height/width ratio is log-uniform in ``aspect``, its sides
    are rounded and cut at the image's, and its position is uniform among those inside the image.
    Draws nothing when ``p`` is 0.
    """
    if p <= 0:
        return images
    start, total = _rows(images, rows)
    batch, height, width = images.shape
    draws = torch.rand(5, total, generator=generator, dtype=torch.float64)[:, start : start + batch]
    share = area[0] + draws[1] * (area[1] - area[0])
    ratio = torch.exp(math.log(aspect[0]) + draws[2] * (math.log(aspect[1]) - math.log(aspect[0])))
    pixels = share * height * width
    h = torch.sqrt(pixels * ratio).round().clamp(1, height).long()
    w = torch.sqrt(pixels / ratio).round().clamp(1, width).long()
    top = (draws[3] * (height - h + 1)).long()
    left = (draws[4] * (width - w + 1)).long()
    y, x = torch.arange(height).view(1, -1), torch.arange(width).view(1, -1)
    inside_y = (y >= top.view(-1, 1)) & (y < (top + h).view(-1, 1))  # (B, H)
    inside_x = (x >= left.view(-1, 1)) & (x < (left + w).view(-1, 1))  # (B, W)
    erased = (draws[0] < p).view(-1, 1, 1) & inside_y.unsqueeze(-1) & inside_x.unsqueeze(1)
    return images.masked_fill(erased, 0)


def jitter_times(times: Tensor, std: float, generator: torch.Generator, rows: tuple[int, int] | None = None) -> Tensor:
    """Add Gaussian noise of ``std`` time units to the finite spike times, clamping at 0."""
    if std <= 0:
        return times
    start, total = _rows(times, rows)
    noise = (
        torch.randn((total, *times.shape[1:]), generator=generator, dtype=times.dtype)[start : start + times.shape[0]]
        * std
    )
    return torch.where(torch.isfinite(times), (times + noise).clamp_min(0.0), times)
