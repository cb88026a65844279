"""The discriminator's decision regions on a 2-D concept map.

A snapshot stores the discriminator's weights as arrays ("disc.net.weight", "disc.net.bias" for
a linear D; "disc.net.0.*" and "disc.net.2.*" for the MLP), so regions can be drawn for any
frame of a run without the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RegionGrid:
    """What the discriminator predicts over a regular grid on the map's plane."""

    x: np.ndarray  # (Gx,) grid coordinates along the map's x axis
    y: np.ndarray  # (Gy,) along y
    pred: np.ndarray  # (Gy, Gx) int: predicted external class at each grid point
    conf: np.ndarray  # (Gy, Gx) float in [0, 1]: its probability (or the neighbours' agreement)
    exact: bool  # True: D itself classified each grid point; False: an approximation (see `method`)
    method: str  # how it was computed, said in the figure ("exact (PCA inverse)", "nearest probes")
    class_names: list[str]  # external class names, indexed by pred


def discriminator_logits(disc: dict[str, np.ndarray], concepts: np.ndarray) -> np.ndarray:
    """D's logits for concepts (M, D) -> (M, classes), from snapshot arrays (prefix "disc.")."""
    if "disc.net.weight" in disc:  # linear
        return concepts @ disc["disc.net.weight"].T + disc["disc.net.bias"]
    hidden = np.maximum(concepts @ disc["disc.net.0.weight"].T + disc["disc.net.0.bias"], 0.0)
    return hidden @ disc["disc.net.2.weight"].T + disc["disc.net.2.bias"]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)
