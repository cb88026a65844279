"""--augment: small random distortions of the training task images, drawn from (seed, step)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import TrainConfig
from engine.data.augment import AUGMENTS, augment, batch_rows
from engine.errors import UserError
from engine.train.trainer import Trainer
from tests.test_trainer import tiny


def dots(count: int, size: int = 28) -> torch.Tensor:
    """(count, 1, size, size): a 4x4 bright square at the centre of a dark image."""
    x = torch.zeros(count, 1, size, size)
    x[:, :, size // 2 - 2: size // 2 + 2, size // 2 - 2: size // 2 + 2] = 1.0
    return x


def grid_of(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's row and column, (H, W) each."""
    h, w = x.shape[-2:]
    return torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")


def centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 2) the ink's mean (row, column)."""
    rows, cols = grid_of(x)
    mass = x.sum((1, 2, 3))
    return torch.stack([(x * rows).sum((1, 2, 3)) / mass, (x * cols).sum((1, 2, 3)) / mass], 1)


def test_none_leaves_the_images_alone():
    x = dots(3)
    assert augment(x, "none", (0, 1)) is x


def test_shift_moves_each_image_by_whole_pixels_up_to_two_at_28_and_copies_them_exactly():
    x = dots(200)
    out = augment(x, "shift", (0, 7))
    moved = centre_of_mass(out) - centre_of_mass(x)  # (200, 2) in pixels
    assert set(moved.round().flatten().tolist()) == {-2.0, -1.0, 0.0, 1.0, 2.0}  # 1/14 of 28 px, each used
    assert torch.allclose(moved, moved.round(), atol=1e-4)  # whole pixels
    assert set(out.unique().tolist()) == {0.0, 1.0}  # each pixel copied: no blur
    assert torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))  # the ink is kept (the square stays inside)
    assert len({tuple(r) for r in moved.round().tolist()}) == 25  # x and y drawn apart


def test_affine_also_turns_and_scales_but_keeps_a_drawing_recognisable():
    x = torch.zeros(50, 1, 28, 28)
    x[:, :, 6:22, 13:15] = 1.0  # a vertical bar
    out = augment(x, "affine", (3, 2))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.allclose(out, augment(x, "shift", (3, 2)))  # more than the shift
    assert len(out.unique()) > 2  # resampled bilinearly (the strokes' edges blur)
    ink_ratio = out.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert ink_ratio.min() > 0.75 and ink_ratio.max() < 1.3  # about the scale's range squared
    tilt = bar_tilt_degrees(out)  # the bar's long axis against the vertical
    assert tilt.abs().max() < 10 + 6 + 1  # 10 degrees of turn and 0.1 of shear (under 6 degrees)
    assert tilt.abs().max() > 5  # the turn is used


def bar_tilt_degrees(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B,) the angle of the ink's principal axis from the vertical (second moments)."""
    rows, cols = grid_of(x)
    r0, c0 = centre_of_mass(x).T
    dr, dc = rows - r0[:, None, None, None], cols - c0[:, None, None, None]
    mrr, mcc, mrc = ((x * dr * dr).sum((1, 2, 3)), (x * dc * dc).sum((1, 2, 3)), (x * dr * dc).sum((1, 2, 3)))
    return torch.rad2deg(0.5 * torch.atan2(2 * mrc, mrr - mcc))


def test_the_same_key_draws_the_same_distortions_and_another_step_others():
    x = dots(8)
    assert torch.equal(augment(x, "affine", (0, 5)), augment(x, "affine", (0, 5)))
    assert not torch.allclose(augment(x, "affine", (0, 5)), augment(x, "affine", (0, 6)))
    assert not torch.allclose(augment(x, "affine", (0, 5)), augment(x, "affine", (1, 5)))


def test_an_image_draws_by_its_place_in_the_whole_batch():
    x = dots(12)
    whole = augment(x, "affine", (0, 3))
    rows = np.array([9, 2, 10])
    assert torch.equal(augment(x[rows], "affine", (0, 3), rows), whole[rows])


def test_batch_rows_are_a_share_of_the_whole_layout():
    # 4 tasks of 3 support and 5 query images: supports at 0..11, queries at 12..31
    assert batch_rows(4, slice(0, 4), 3, 5).tolist() == list(range(32))
    assert batch_rows(4, slice(2, 4), 3, 5).tolist() == [6, 7, 8, 9, 10, 11, *range(22, 32)]


def test_an_unknown_augment_is_a_clear_error():
    with pytest.raises(UserError, match="--augment must be one of none, shift, affine, not 'flip'"):
        TrainConfig(augment="flip")
    assert TrainConfig.from_dict({"augment": "shift"}).augment == "shift"
    with pytest.raises(UserError, match="setting 'augment' is 'flip', which is not one of none, shift, affine"):
        TrainConfig.from_dict({"augment": "flip"})


def test_training_distorts_the_task_images_only_and_draws_the_same_tasks():
    plain, bent = (Trainer(tiny(augment=a)).sample_batch(4) for a in ("none", "affine"))
    assert not torch.allclose(plain["x"], bent["x"])
    assert torch.equal(plain["x_ext"], bent["x_ext"])  # external images as drawn
    assert torch.equal(augment(plain["x"], "affine", (0, 4)), bent["x"])  # the same images, distorted
    assert set(AUGMENTS) == {"none", "shift", "affine"}
