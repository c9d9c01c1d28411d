"""Augmentation: the affine transform against exact pixel permutations, and generator-driven draws."""

import math

import pytest
import torch

from stdbp.training.augment import affine_transform, jitter_times, random_affine, random_shift


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
