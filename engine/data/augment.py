"""Small random distortions of training task images (`--augment`): each image on its own is
shifted by whole pixels ("shift"), or shifted, turned, scaled and sheared a little ("affine"), so a meta-train class shows
more drawings than it has. The parameters come from a generator seeded by (seed, step) alone, so a
run repeats exactly (and resumes exactly), and the classes and images a step draws are the same
with or without it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AffineRange:
    """The largest distortion of each kind; each image draws each uniformly in ±range."""

    shift: float  # fraction of the image side (1/14: 2 px of 28)
    degrees: float = 0.0  # rotation
    scale: float = 0.0  # 0.1: scaled by 0.9..1.1
    shear: float = 0.0  # horizontal shear factor
    # shifts by whole pixels only, each pixel copied as it is: no resampling blur (a bilinear shift by
    # a fraction of a pixel dims thin strokes, and the images scored at test time are never blurred)
    whole_pixels: bool = False


# the ranges of the usual Omniglot distortions (Koch et al. 2015 used larger ones for whole-image
# verification; these stay inside what a writer's own hand varies)
AUGMENTS: dict[str, AffineRange | None] = {
    "none": None,
    "shift": AffineRange(shift=1 / 14, whole_pixels=True),
    "affine": AffineRange(shift=1 / 14, degrees=10.0, scale=0.1, shear=0.1),
}


def augment(x: torch.Tensor, name: str, key: tuple[int, ...], rows: np.ndarray | None = None) -> torch.Tensor:
    """(B, C, H, W) floats -> the same shape, each image distorted by its own draw within AUGMENTS[name].
    rows[i]: image i's place in the whole step's batch (default 0..B-1), so a process holding a share
    of the step draws what one process would for those images. Borders repeat the edge pixels (the
    paper's colour, whatever the polarity)."""
    spec = AUGMENTS[name]
    if spec is None:
        return x
    rows = np.arange(len(x)) if rows is None else rows
    # one row of 5 numbers per image, in order: a draw of more rows begins with these, so a row's
    # numbers depend on its place alone; a stream of its own, so the step's other draws do not move
    u = np.random.default_rng([*key, 0xA06]).uniform(-1, 1, (rows.max() + 1, 5))[rows]  # (B, 5)
    shift_x, shift_y = spec.shift * u[:, 0], spec.shift * u[:, 1]  # fractions of the side
    if spec.whole_pixels:  # -m..m pixels, each as likely
        m = round(spec.shift * x.shape[-1])
        shift_x, shift_y = ((np.floor((u[:, :2] + 1) / 2 * (2 * m + 1)).clip(max=2 * m) - m) / x.shape[-1]).T
    shift_x, shift_y = 2 * shift_x, 2 * shift_y  # grid units: 2 is the whole side
    turn, scale, shear = np.radians(spec.degrees * u[:, 2]), 1 + spec.scale * u[:, 3], spec.shear * u[:, 4]
    cos, sin = np.cos(turn) / scale, np.sin(turn) / scale
    # the output-to-input map affine_grid expects: rotation and scale, sheared, then shifted
    theta = np.stack([np.stack([cos, cos * shear - sin, shift_x], -1),
                      np.stack([sin, sin * shear + cos, shift_y], -1)], 1)  # (B, 2, 3)
    theta = torch.from_numpy(theta).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    # whole-pixel shifts sample exactly at pixel centres, where "nearest" copies each pixel unchanged
    mode = "nearest" if spec.whole_pixels else "bilinear"
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)

def batch_rows(meta_batch: int, share: slice, nk: int, nq: int) -> np.ndarray:
    """Where the images of tasks share.start..stop-1 sit in the whole meta-batch's layout (every
    task's N*K support images, then every task's N*Q queries): one process's rows of augment's draws."""
    tasks = np.arange(meta_batch)[share]
    support = (tasks[:, None] * nk + np.arange(nk)).reshape(-1)
    query = meta_batch * nk + (tasks[:, None] * nq + np.arange(nq)).reshape(-1)
    return np.concatenate([support, query])
