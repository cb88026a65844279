"""The discriminator's decision regions on a 2-D concept map.

A snapshot stores the discriminator's weights as arrays (the "disc.*" keys of
engine.records.Snapshot), so regions can be drawn for any frame of a run without the model.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from engine.records import Probe, Snapshot
from engine.viz.project import rms_radius


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


def probe_external_classes(probe: Probe) -> np.ndarray:
    """The external classes (indices into probe["external_classes"], D's classes) that the probe
    shows images of, sorted: the classes whose regions a map draws (D knows many more)."""
    split, label = np.asarray(probe["split"]), np.asarray(probe["label"])
    return np.unique(label[split == 2]).astype(np.int64)


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


# ----------------------------------------------------------------------------------------------
# Regions on a projector's map (engine.viz.project.ConceptProjector)
# ----------------------------------------------------------------------------------------------
GRID_MARGIN = 0.15  # fraction of the layout's extent added around it, for every region grid
EXACT_METHOD = "exact: D itself on the PCA plane"
APPROX_METHOD = "approximate: D at the nearest points (UMAP/t-SNE)"


def grid_axes(xy: np.ndarray, bounds: tuple[float, float, float, float] | None = None,
              grid: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Grid coordinates (gx, gy) over `bounds` = (xmin, xmax, ymin, ymax), by default the extent
    of `xy` (N, 2) plus GRID_MARGIN on every side."""
    if bounds is None:
        lo, hi = xy.min(0), xy.max(0)
        pad = (hi - lo) * GRID_MARGIN + 1e-6
        bounds = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    x0, x1, y0, y1 = (float(b) for b in bounds)
    return np.linspace(x0, x1, grid), np.linspace(y0, y1, grid)


def grid_plane(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """(Gy*Gx, 2) grid points, row-major over y then x (reshape to (Gy, Gx))."""
    return np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)


def pca_regions(projector, disc: dict[str, np.ndarray], class_names, bounds=None, grid: int = 60) -> RegionGrid:
    """EXACT regions on a PCA map: every grid point is mapped back to concept space by
    `projector.inverse_transform` (the PCA plane through the concepts' mean) and classified by D
    itself. What is drawn is what D answers on that plane; points off the plane (all real
    concepts, in D dimensions) are shown at their projection, so their own D prediction can
    differ from the region under them."""
    gx, gy = grid_axes(projector.embedding_, bounds, grid)
    concepts = projector.inverse_transform(grid_plane(gx, gy))  # (G*G, D)
    probs = softmax(discriminator_logits(disc, concepts.astype(np.float32)))
    return RegionGrid(x=gx, y=gy, pred=probs.argmax(-1).reshape(len(gy), len(gx)),
                      conf=probs.max(-1).reshape(len(gy), len(gx)).astype(np.float32),
                      exact=True, method=EXACT_METHOD, class_names=[str(c) for c in class_names])


def neighbour_regions(xy: np.ndarray, probe_pred: np.ndarray, probe_conf: np.ndarray, class_names,
                      bounds=None, grid: int = 60, k: int = 5) -> RegionGrid:
    """APPROXIMATE regions for maps without a cheap inverse (UMAP, t-SNE): each grid point takes
    the majority of D's predictions for its k nearest probe points on the map (ties go to the
    class of the nearer points); conf = fraction of the k that agree x their mean confidence."""
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=np.float64)
    probe_pred = np.asarray(probe_pred).astype(np.int64)
    probe_conf = np.asarray(probe_conf, dtype=np.float64)
    gx, gy = grid_axes(xy, bounds, grid)
    k = max(1, min(k, len(xy)))
    _, idx = cKDTree(xy).query(grid_plane(gx, gy), k=k)
    idx = idx.reshape(-1, k)  # (G*G, k), nearest first
    n_classes = max(len(class_names), int(probe_pred.max()) + 1 if len(probe_pred) else 1)
    votes = np.zeros((len(idx), n_classes))
    rank_bonus = 1e-3 * (k - np.arange(k)) / k  # < 1 vote in total: only breaks ties, nearer wins
    rows = np.repeat(np.arange(len(idx)), k)
    np.add.at(votes, (rows, probe_pred[idx].ravel()), np.tile(1.0 + rank_bonus, len(idx)))
    pred = votes.argmax(-1)
    agree = probe_pred[idx] == pred[:, None]  # (G*G, k)
    n_agree = agree.sum(1)
    mean_conf = (probe_conf[idx] * agree).sum(1) / np.maximum(n_agree, 1)
    conf = n_agree / k * mean_conf
    return RegionGrid(x=gx, y=gy, pred=pred.reshape(len(gy), len(gx)),
                      conf=conf.reshape(len(gy), len(gx)).astype(np.float32),
                      exact=False, method=APPROX_METHOD, class_names=[str(c) for c in class_names])


def regions_for(projector, snapshot: Snapshot, probe: Probe,
                grid: int = 60, bounds=None) -> RegionGrid | None:
    """D's regions on `projector`'s map of this snapshot's probe concepts: exact on a PCA map,
    approximate (nearest probes) on UMAP/t-SNE; None when the run has no discriminator or never
    trained it (lambda = 0: its regions would be noise from the initial weights)."""
    disc = {k: v for k, v in snapshot.items() if k.startswith("disc.")}
    if not disc or not bool(snapshot.get("disc_trained", True)):
        return None
    class_names = [str(c) for c in probe.get("external_classes", [])]
    if getattr(projector, "method_", None) == "pca":
        return pca_regions(projector, disc, class_names, bounds=bounds, grid=grid)
    if "disc_pred" in snapshot and "disc_conf" in snapshot:
        pred, conf = snapshot["disc_pred"], snapshot["disc_conf"]
    else:  # recompute from the weights
        probs = softmax(discriminator_logits(disc, np.asarray(snapshot["concepts"], np.float32)))
        pred, conf = probs.argmax(-1), probs.max(-1)
    return neighbour_regions(projector.embedding_, pred, conf, class_names, bounds=bounds, grid=grid)


def normalise_frame(xy: np.ndarray, regions: RegionGrid | None) -> tuple[np.ndarray, RegionGrid | None]:
    """A frame centred and scaled to unit RMS radius, its region grid moved with it. Concept space
    grows many times over during training; a replay shows shape, not size."""
    centre = xy.mean(0)
    radius = rms_radius(xy) or 1.0
    moved = ((xy - centre) / radius).astype(np.float32)
    if regions is None:
        return moved, None
    return moved, replace(regions, x=(regions.x - centre[0]) / radius, y=(regions.y - centre[1]) / radius)
