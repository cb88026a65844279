"""engine.viz.regions: the discriminator's decision regions on a concept map."""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from engine.viz.project import ConceptProjector
from engine.viz.regions import (
    RegionGrid,
    discriminator_logits,
    neighbour_regions,
    pca_regions,
    probe_external_classes,
    regions_for,
    softmax,
)


def linear_disc(d=8, classes=4, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"disc.net.weight": rng.normal(size=(classes, d)).astype(np.float32),
            "disc.net.bias": rng.normal(size=classes).astype(np.float32)}


def mlp_disc(d=8, classes=4, hidden=16, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"disc.net.0.weight": rng.normal(size=(hidden, d)).astype(np.float32),
            "disc.net.0.bias": rng.normal(size=hidden).astype(np.float32),
            "disc.net.2.weight": rng.normal(size=(classes, hidden)).astype(np.float32),
            "disc.net.2.bias": rng.normal(size=classes).astype(np.float32)}


def clusters(n=200, d=8, k=4, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, k, n)
    return (rng.normal(size=(k, d))[label] * 4 + rng.normal(size=(n, d))).astype(np.float32), label


def plane(g: RegionGrid) -> np.ndarray:
    return np.stack(np.meshgrid(g.x, g.y), -1).reshape(-1, 2)


@pytest.mark.parametrize("disc", [linear_disc(), mlp_disc()], ids=["linear", "mlp"])
def test_pca_regions_are_d_on_the_plane(disc):
    X, _ = clusters()
    proj = ConceptProjector("pca").fit(X).update(X + 0.1)  # aligned frame: the inverse must undo it
    g = pca_regions(proj, disc, ["a", "b", "c", "d"], grid=40)
    assert g.exact and g.method.startswith("exact") and g.pred.shape == g.conf.shape == (40, 40)
    probs = softmax(discriminator_logits(disc, proj.inverse_transform(plane(g))))
    assert np.array_equal(g.pred, probs.argmax(-1).reshape(40, 40))
    assert np.allclose(g.conf, probs.max(-1).reshape(40, 40), atol=1e-6)
    lo, hi = proj.embedding_.min(0), proj.embedding_.max(0)  # default bounds: the extent plus a margin
    assert g.x[0] < lo[0] and g.x[-1] > hi[0] and g.y[0] < lo[1] and g.y[-1] > hi[1]


def test_probe_points_on_the_plane_sit_in_their_own_region():
    rng = np.random.default_rng(1)
    mean, basis = rng.normal(size=8), np.linalg.qr(rng.normal(size=(8, 2)))[0].T  # a 2-D plane in 8-D
    coef = rng.normal(size=(300, 2)) * [4, 2]
    X = (mean + coef @ basis).astype(np.float32)  # every concept lies on the plane
    disc = linear_disc()
    proj = ConceptProjector("pca").fit(X)
    d_pred = discriminator_logits(disc, X).argmax(-1)
    # exactly: the map position of each point maps back to the point itself
    assert np.array_equal(discriminator_logits(disc, proj.inverse_transform(proj.embedding_)).argmax(-1), d_pred)
    g = pca_regions(proj, disc, list("abcd"), grid=80)
    ix = np.abs(g.x[None] - proj.embedding_[:, :1]).argmin(1)
    iy = np.abs(g.y[None] - proj.embedding_[:, 1:]).argmin(1)
    assert (g.pred[iy, ix] == d_pred).mean() > 0.95  # the nearest grid node: all but boundary cases


def test_neighbour_regions_take_the_clusters_prediction():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    label = np.repeat([0, 1, 2], 30)
    xy = centres[label] + rng.normal(size=(90, 2)) * 0.5
    conf = np.full(90, 0.8)
    g = neighbour_regions(xy, label, conf, ["x", "y", "z"], bounds=(-2, 12, -2, 12), grid=15, k=5)
    assert not g.exact and "approximate" in g.method and g.pred.shape == (15, 15)
    assert g.x[0] == -2 and g.x[-1] == 12 and g.class_names == ["x", "y", "z"]
    for c, (cx, cy) in enumerate(centres):
        i, j = np.abs(g.y - cy).argmin(), np.abs(g.x - cx).argmin()
        assert g.pred[i, j] == c and g.conf[i, j] == pytest.approx(0.8)  # all 5 agree, each 0.8 sure
    assert ((0 <= g.conf) & (g.conf <= 1)).all()


def test_neighbour_regions_confidence_counts_disagreement():
    xy = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1]])
    g = neighbour_regions(xy, np.array([1, 1, 1, 0]), np.array([1.0, 0.5, 0.5, 0.9]), ["p", "q"],
                          bounds=(0.05, 0.05, 0.05, 0.05), grid=1, k=4)
    assert g.pred[0, 0] == 1 and g.conf[0, 0] == pytest.approx(0.75 * (2.0 / 3))


def snapshot_of(X, disc):
    probs = softmax(discriminator_logits(disc, X))
    return {"step": np.int64(5), "concepts": X, "disc_pred": probs.argmax(-1), "disc_conf": probs.max(-1), **disc}


def test_regions_for_picks_exact_or_approximate():
    X, _ = clusters()
    disc = linear_disc()
    probe = {"external_classes": np.array(["a", "b", "c", "d"])}
    snap = snapshot_of(X, disc)
    proj = ConceptProjector("pca").fit(X)
    g = regions_for(proj, snap, probe, grid=30)
    assert g.exact and g.class_names == ["a", "b", "c", "d"] and g.pred.shape == (30, 30)
    umap_like = SimpleNamespace(method_="umap", embedding_=proj.embedding_)  # any non-PCA map
    approx = regions_for(umap_like, snap, probe, grid=30)
    assert not approx.exact and "approximate" in approx.method
    assert regions_for(proj, {"step": np.int64(0), "concepts": X}, probe) is None  # no discriminator


def test_regions_for_is_cheap_for_a_live_loop():
    X, _ = clusters(n=2000, d=64, k=20)
    disc = linear_disc(d=64, classes=40)
    snap, probe = snapshot_of(X, disc), {"external_classes": np.array([f"c{i}" for i in range(40)])}
    proj = ConceptProjector("pca").fit(X)
    umap_like = SimpleNamespace(method_="umap", embedding_=proj.embedding_)
    for p in (proj, umap_like):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            regions_for(p, snap, probe, grid=60)
            times.append(time.perf_counter() - t0)
        assert np.median(times) < 0.25  # measured ~0.01 s; generous for a shared machine


def test_normalised_frame_keeps_points_on_their_regions():
    from engine.viz.regions import RegionGrid, normalise_frame

    xy = np.array([[10.3, 0.4], [12.4, 0.1], [9.6, 4.2]])  # no point halfway between grid lines
    grid = RegionGrid(x=np.array([9.0, 11.0, 13.0]), y=np.array([-1.0, 5.0]), pred=np.array([[0, 1, 1], [0, 0, 1]]),
                      conf=np.ones((2, 3)), exact=True, method="exact", class_names=["a", "b"])
    moved, g = normalise_frame(xy, grid)
    assert np.allclose(moved.mean(0), 0) and np.isclose(np.sqrt((moved ** 2).sum(1).mean()), 1.0)
    # the same affine map moves points and grid: a point's nearest grid column stays the same one
    for p, q in zip(xy, moved):
        assert np.argmin(abs(grid.x - p[0])) == np.argmin(abs(g.x - q[0]))
        assert np.argmin(abs(grid.y - p[1])) == np.argmin(abs(g.y - q[1]))
    assert normalise_frame(xy, None)[1] is None


def test_no_regions_for_an_untrained_discriminator():
    from engine.viz.project import ConceptProjector
    from engine.viz.regions import regions_for

    rng = np.random.default_rng(0)
    concepts = rng.normal(size=(30, 4)).astype(np.float32)
    snap = {"concepts": concepts, "disc.net.weight": rng.normal(size=(3, 4)), "disc.net.bias": np.zeros(3),
            "disc_trained": np.bool_(True)}
    probe = {"external_classes": np.array(["a", "b", "c"])}
    projector = ConceptProjector(method="pca").fit(concepts)
    assert regions_for(projector, snap, probe) is not None
    assert regions_for(projector, {**snap, "disc_trained": np.bool_(False)}, probe) is None


def test_probe_external_classes_are_those_the_probe_shows():
    probe = {"split": np.array([0, 2, 2, 1, 2, 2]), "label": np.array([7, 40, 3, 7, 40, 12]),
             "external_classes": np.array([f"e{i}" for i in range(80)])}
    assert probe_external_classes(probe).tolist() == [3, 12, 40]  # sorted, once each, external rows only
    assert probe_external_classes({**probe, "split": np.array([0, 0, 1, 1, 0, 0])}).tolist() == []
