"""Augmentation: the affine transform against exact pixel permutations, and generator-driven draws."""

import math

import pytest
import torch

from stdbp.training.augment import (
    affine_transform,
    elastic_displacement,
    jitter_times,
    random_affine,
    random_erase,
    random_hflip,
    random_shift,
)


def test_affine_quarter_turn_is_rot90_counter_clockwise():
    images = torch.rand(3, 28, 28)
    turned = affine_transform(images, torch.full((3,), math.pi / 2), torch.ones(3))
    torch.testing.assert_close(turned, torch.rot90(images, 1, (1, 2)), atol=1e-5, rtol=0)


def test_affine_identity_and_half_turn():
    images = torch.rand(2, 9, 9)
    torch.testing.assert_close(affine_transform(images, torch.zeros(2), torch.ones(2)), images, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        affine_transform(images, torch.full((2,), math.pi), torch.ones(2)), images.flip(1, 2), atol=1e-5, rtol=0
    )


def test_affine_scale_enlarges_about_the_centre():
    image = torch.zeros(1, 8, 8)
    image[0, 3:5, 3:5] = 1.0  # a centred 2x2 square
    enlarged = affine_transform(image, torch.zeros(1), torch.tensor([2.0]))
    assert enlarged[0, 2:6, 2:6].min() > 0.2 and enlarged[0, 2:6, 2:6].sum() > image.sum() * 2
    shrunk = affine_transform(image, torch.zeros(1), torch.tensor([0.5]))
    assert shrunk.sum() < image.sum() * 0.5


def test_random_affine_is_a_function_of_the_generator():
    images = torch.rand(4, 28, 28)
    a = random_affine(images, 15.0, 0.1, torch.Generator().manual_seed(3))
    b = random_affine(images, 15.0, 0.1, torch.Generator().manual_seed(3))
    c = random_affine(images, 15.0, 0.1, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, images, atol=1e-3)


def test_disabled_augmentations_draw_nothing():
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    images = torch.rand(2, 5, 5)
    assert random_affine(images, 0.0, 0.0, gen) is images
    assert random_shift(images, 0, gen) is images
    assert jitter_times(images, 0.0, gen) is images
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("max_shift", [1, 2])
def test_random_shift_moves_content_by_at_most_max_shift(max_shift):
    image = torch.zeros(50, 11, 11)
    image[:, 5, 5] = 1.0
    shifted = random_shift(image, max_shift, torch.Generator().manual_seed(1))
    rows, cols = (shifted == 1.0).nonzero()[:, 1], (shifted == 1.0).nonzero()[:, 2]
    assert len(rows) == 50 and (rows - 5).abs().max() == max_shift and (cols - 5).abs().max() == max_shift


def test_jitter_keeps_silence_and_non_negative_times():
    times = torch.tensor([[0.0, 0.5, math.inf, 1.0]])
    out = jitter_times(times.expand(200, 4).contiguous(), 0.1, torch.Generator().manual_seed(0))
    assert torch.isinf(out[:, 2]).all() and (out[:, [0, 1, 3]] >= 0).all()
    assert 0.05 < out[:, 1].std() < 0.15


def test_affine_keeps_uint8_pixels():
    images = (torch.rand(2, 28, 28) * 255).to(torch.uint8)
    turned = random_affine(images, 10.0, 0.1, torch.Generator().manual_seed(0))
    assert turned.dtype == torch.uint8 and turned.shape == images.shape
    exact = affine_transform(images, torch.full((2,), math.pi / 2), torch.ones(2))
    assert torch.equal(exact, torch.rot90(images, 1, (1, 2)))


def test_elastic_field_is_smoothed_uniform_noise_scaled_by_alpha():
    gen = torch.Generator().manual_seed(0)
    uniform = torch.rand(64, 2, 28, 28, generator=gen, dtype=torch.float64) * 2 - 1
    field = elastic_displacement(uniform, 34.0, 4.0)
    # independent oracle: a dense 2-D Gaussian, zeros beyond the image, applied pixel by pixel at the centre
    ys, xs = torch.meshgrid(*[torch.arange(28, dtype=torch.float64)] * 2, indexing="ij")
    weights = torch.exp(-0.5 * ((ys - 14) ** 2 + (xs - 14) ** 2) / 16)
    radius = 12  # ceil(3 sigma)
    inside = ((ys - 14).abs() <= radius) & ((xs - 14).abs() <= radius)
    weights = weights * inside
    norm = torch.exp(-0.5 * torch.arange(-radius, radius + 1, dtype=torch.float64) ** 2 / 16).sum() ** 2
    expected = 34.0 * (uniform * weights).sum(dim=(2, 3)) / norm
    torch.testing.assert_close(field[:, :, 14, 14], expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(elastic_displacement(uniform, 17.0, 4.0) * 2, field)
    # smoothing shrinks the field: std 0.577 * alpha / (2 sqrt(pi) sigma) in the interior
    interior = field[:, :, 12:16, 12:16]
    assert 0.8 < float(interior.std()) / (0.577 * 34 / (2 * math.sqrt(math.pi) * 4)) < 1.25


def test_displacement_moves_sampling_points_by_whole_pixels():
    images = torch.rand(2, 10, 12)
    displacement = torch.zeros(2, 2, 10, 12)
    displacement[:, 0] = 1.0  # each output pixel samples its right-hand neighbour
    displacement[1, 1] = -2.0  # and, in image 1, two rows up
    moved = affine_transform(images, torch.zeros(2), torch.ones(2), displacement)
    torch.testing.assert_close(moved[0, :, :-1], images[0, :, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(moved[1, 2:, :-1], images[1, :-2, 1:], atol=1e-5, rtol=0)
    assert moved[0, :, -1].abs().max() == 0 and moved[1, :2].abs().max() == 0


def test_elastic_keeps_the_affine_draws_and_splits_over_rows():
    images = torch.rand(6, 28, 28)
    plain = random_affine(images, 10.0, 0.1, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    distorted = random_affine(images, 10.0, 0.1, gen, elastic=34.0)
    assert not torch.allclose(plain, distorted, atol=1e-3)
    # the affine draws are the same: a zero-strength field leaves the affine result
    zero = random_affine(images, 10.0, 0.1, torch.Generator().manual_seed(5), elastic=1e-300)
    torch.testing.assert_close(zero, plain, atol=1e-6, rtol=0)
    # rows (start, total) of a batch split over processes get the whole batch's draws
    halves = [
        random_affine(images[s : s + 3], 10.0, 0.1, torch.Generator().manual_seed(5), (s, 6), elastic=34.0)
        for s in (0, 3)
    ]
    assert torch.equal(torch.cat(halves), distorted)
    only = random_affine(images, 0.0, 0.0, torch.Generator().manual_seed(5), elastic=34.0)
    assert not torch.allclose(only, images, atol=1e-3)


def test_hflip_mirrors_each_image_or_leaves_it_and_splits_over_rows():
    images = torch.randint(0, 256, (200, 5, 7), dtype=torch.uint8)
    flipped = random_hflip(images, 0.5, torch.Generator().manual_seed(3))
    assert flipped.dtype == torch.uint8
    mirrored = torch.tensor([torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images)])
    kept = torch.tensor([torch.equal(f, i) for f, i in zip(flipped, images)])
    assert bool((mirrored ^ kept).all())  # random images are never symmetric: each is one or the other
    # the oracle: image k is mirrored exactly when the k-th uniform draw is below p
    draws = torch.rand(200, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(mirrored, draws < 0.5)
    assert 70 < int(mirrored.sum()) < 130
    halves = [random_hflip(images[s : s + 100], 0.5, torch.Generator().manual_seed(3), (s, 200)) for s in (0, 100)]
    assert torch.equal(torch.cat(halves), flipped)
    assert torch.equal(random_hflip(images, 1.0, torch.Generator()), images.flip(-1))
    gen = torch.Generator().manual_seed(3)
    assert random_hflip(images, 0.0, gen) is images and torch.equal(
        gen.get_state(), torch.Generator().manual_seed(3).get_state()
    )


def _rectangle(erased: torch.Tensor) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` of the bounding box of ``erased`` ``(H, W)``, or None."""
    ys, xs = torch.nonzero(erased, as_tuple=True)
    if len(ys) == 0:
        return None
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def test_erase_zeroes_one_rectangle_of_the_drawn_images_and_splits_over_rows():
    height, width = 28, 20
    images = torch.randint(1, 256, (400, height, width), dtype=torch.uint8)  # no zeros of their own
    erased = random_erase(images, 0.5, torch.Generator().manual_seed(4))
    assert erased.dtype == torch.uint8
    zero = erased == 0
    assert torch.equal(erased[~zero], images[~zero])  # only erased pixels change
    # the oracle: image k is erased exactly when the first of its five draws is below p
    draws = torch.rand(5, 400, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(zero.flatten(1).any(1), draws[0] < 0.5)
    shares, aspects = [], []
    for k in torch.nonzero(draws[0] < 0.5).flatten().tolist():
        top, bottom, left, right = _rectangle(zero[k])
        assert bool(zero[k, top:bottom, left:right].all())  # a solid rectangle, nothing outside it
        assert int(zero[k].sum()) == (bottom - top) * (right - left)
        shares.append((bottom - top) * (right - left) / (height * width))
        aspects.append((bottom - top) / (right - left))
        # the share of the image drawn, up to the rounding of both sides (and the cut at the image's)
        h, w = bottom - top, right - left
        drawn = 0.02 + float(draws[1, k]) * 0.38
        if h < height and w < width:
            assert (h - 0.5) * (w - 0.5) <= drawn * height * width <= (h + 0.5) * (w + 0.5)
    assert min(shares) < 0.06 and max(shares) > 0.3  # spans the share range
    assert min(aspects) < 0.6 and max(aspects) > 1.7  # taller and wider rectangles both
    halves = [random_erase(images[s : s + 150], 0.5, torch.Generator().manual_seed(4), (s, 400)) for s in (0, 150)]
    halves.append(random_erase(images[300:], 0.5, torch.Generator().manual_seed(4), (300, 400)))
    assert torch.equal(torch.cat(halves), erased)
    assert bool((random_erase(images, 1.0, torch.Generator()) == 0).flatten(1).any(1).all())
    gen = torch.Generator().manual_seed(4)
    assert random_erase(images, 0.0, gen) is images and torch.equal(
        gen.get_state(), torch.Generator().manual_seed(4).get_state()
    )
