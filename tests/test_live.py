"""engine.viz.live: the state a live view keeps between refreshes (synthetic snapshots: no training,
except one tiny job for reading runs back)."""
from __future__ import annotations

import numpy as np
import pytest

from engine.config import TrainConfig
from engine.eval.twins import twin_dir_for
from engine.services.training import awaits_first_snapshot, is_active, new_run_dir
from engine.train.job import JobRegistry, TrainingJob
from engine.viz import project
from engine.viz.live import LiveMap, selected_rows
from engine.viz.project import frame_displacement
from engine.viz.run_view import val_summary

P_SPLIT, CLASSES, PER_CLASS, DIM, EXT = 3, 3, 4, 8, 3


@pytest.fixture(autouse=True)
def no_umap_warmup(monkeypatch):
    """No background UMAP compile competing with the tests for the 2 cores."""
    monkeypatch.setattr(project, "start_umap_warmup", lambda: None)


def make_probe() -> dict:
    split = np.repeat(np.arange(P_SPLIT), CLASSES * PER_CLASS).astype(np.int8)
    label = np.tile(np.repeat(np.arange(CLASSES), PER_CLASS), P_SPLIT)
    n = len(split)
    return {"images": np.zeros((n, 8, 8, 1), np.uint8), "split": split, "label": label,
            "class_name": np.array([f"s{s}c{c}" for s, c in zip(split, label)]), "image_index": np.arange(n),
            "external_classes": np.array([f"e{c}" for c in range(EXT)])}


def make_snapshots(count: int = 6, seed: int = 0) -> list[dict]:
    """Concepts that drift slowly from noise towards class clusters, with a linear D."""
    rng = np.random.default_rng(seed)
    probe = make_probe()
    centres = rng.normal(size=(P_SPLIT * CLASSES, DIM)) * 3
    target = centres[probe["split"] * CLASSES + probe["label"]]
    noise = rng.normal(size=target.shape)
    W, b = rng.normal(size=(EXT, DIM)).astype(np.float32), np.zeros(EXT, np.float32)
    out = []
    for i, step in enumerate([0, 1, 2, 4, 8, 16, 25, 50, 75, 100][:count]):
        a = (i + 1) / count
        z = (a * target + (1 - a) * noise + 0.05 * rng.normal(size=target.shape)).astype(np.float32)
        logits = z @ W.T + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        out.append({"step": np.int64(step), "concepts": z, "disc_pred": p.argmax(1), "disc_conf": p.max(1),
                    "disc_trained": np.bool_(True), "disc.net.weight": W, "disc.net.bias": b})
    return out


def test_refresh_recomputes_only_on_a_new_snapshot():
    lm, probe, snaps = LiveMap(warm_up=False), make_probe(), make_snapshots()
    xy, regions, note = lm.refresh(snaps[:3], probe, run="r", method="pca")
    assert xy.shape == (len(probe["split"]), 2) and regions is None and note == ""
    assert lm.layouts == 1  # a new map lays out the latest snapshot only
    again, _, _ = lm.refresh(snaps[:3], probe, run="r", method="pca")
    assert lm.layouts == 1 and again is xy  # nothing new: the cached layout, no projector work
    lm.refresh(snaps[:5], probe, run="r", method="pca")
    assert lm.layouts == 3  # each new snapshot once, in order
    lm.refresh(snaps[:5], probe, run="other", method="pca")
    assert lm.layouts == 4  # one map per (run, method)


def small_steps(count: int = 8) -> list[dict]:
    """Late training: concepts that change a little between snapshots."""
    base = make_snapshots(1)[0]
    rng = np.random.default_rng(1)
    out, z = [], base["concepts"]
    for i in range(count):
        z = (z + 0.05 * rng.normal(size=z.shape)).astype(np.float32)
        out.append({**base, "step": np.int64(100 + 10 * i), "concepts": z})
    return out


def test_positions_are_stable_across_refreshes():
    lm, probe, snaps = LiveMap(warm_up=False), make_probe(), small_steps(8)
    shown = []
    for i in range(1, len(snaps) + 1):  # the run as a page sees it: one more snapshot per refresh
        shown.append(lm.refresh(snaps[:i], probe, run="r", method="pca")[0])
    proj = lm._tracks[("r", "pca")].projector
    assert proj.n_updates_ == len(snaps) - 1  # updates, never a refit
    moves = [frame_displacement(a, b) for a, b in zip(shown, shown[1:])]
    assert max(moves) < 0.1, moves  # glides: no flip or rotation between refreshes (a flip moves ~2 radii)


def test_pca_fallback_note_while_umap_is_cold(monkeypatch):
    monkeypatch.setattr(project, "umap_status", lambda: "cold")
    lm = LiveMap(warm_up=False)
    xy, _, note = lm.refresh(make_snapshots(3), make_probe(), run="r", method="umap")
    assert xy is not None and "PCA" in note
    assert lm.method_shown("r", "umap") == "pca"


def test_replay_frames_one_per_snapshot_on_the_live_map():
    probe, snaps = make_probe(), make_snapshots(7)
    live = LiveMap(warm_up=False)  # watched from the start: frames are the live layouts
    shown = [live.refresh(snaps[:i], probe, run="r", method="pca")[0] for i in range(1, len(snaps) + 1)]
    frames = live.frames(snaps, run="r", method="pca")
    assert [s for s, _ in frames] == [int(s["step"]) for s in snaps]
    for (_, xy), seen in zip(frames, shown):
        np.testing.assert_array_equal(xy, seen)

    late = LiveMap(warm_up=False)  # opened on a finished run: latest first, earlier ones backwards
    latest, _, _ = late.refresh(snaps, probe, run="r", method="pca")
    frames = late.frames(snaps, run="r", method="pca")
    assert len(frames) == len(snaps)
    np.testing.assert_allclose(frames[-1][1], latest)
    moves = [frame_displacement(a, b) for (_, a), (_, b) in zip(frames, frames[1:])]
    assert max(moves) < 0.6, moves
    assert late.frames(snaps, run="r", method="pca")[0][1] is frames[0][1]  # laid out once


def test_a_run_that_goes_back_in_time_starts_its_map_again():
    """Resumed from an earlier checkpoint, a run drops its later snapshots: the map starts again
    from what is there instead of failing on a step that is gone."""
    lm, probe, snaps = LiveMap(warm_up=False), make_probe(), make_snapshots(6)
    lm.refresh(snaps, probe, run="r", method="pca")
    xy, _, _ = lm.refresh(snaps[:3], probe, run="r", method="pca")
    assert xy.shape == (len(probe["split"]), 2)
    assert [s for s, _ in lm.frames(snaps[:3], run="r", method="pca")] == [int(s["step"]) for s in snaps[:3]]


def test_replay_of_a_finished_run_is_the_stable_layouts_sequence():
    """A map opened on a finished run lays out backwards from the latest snapshot: the same moving
    picture as project.stable_layouts (what bench projection measures), up to one rotation."""
    snaps = make_snapshots(6)
    frames = LiveMap(warm_up=False).frames(snaps, run="r", method="pca")
    batch = project.stable_layouts([s["concepts"] for s in snaps], "pca")
    for (_, live_xy), batch_xy in zip(frames, batch):
        np.testing.assert_allclose(project.procrustes_align(batch_xy, live_xy, scale=False), live_xy, atol=1e-3)


def test_regions_exact_on_the_live_pca_map_and_approximate_in_the_replay():
    lm, probe, snaps = LiveMap(warm_up=False, grid=12), make_probe(), make_snapshots(4)
    _, regions, _ = lm.refresh(snaps, probe, run="r", method="pca", regions=True)
    assert regions.exact and regions.pred.shape == (12, 12)
    xy, old, snap = lm.frame_at(snaps, probe, 1, run="r", method="pca", regions=True)
    assert int(snap["step"]) == 1 and xy.shape == (len(probe["split"]), 2)
    assert old is not None and not old.exact
    no_d = [{"step": s["step"], "concepts": s["concepts"]} for s in snaps]
    assert lm.refresh(no_d, probe, run="plain", method="pca", regions=True)[1] is None


def test_selected_rows_reads_customdata():
    sel = {"points": [{"customdata": [4, "a", "meta-train", 1]}, {"customdata": [2, "b"]},
                      {"customdata": [4, "a"]}, {"curve_number": 0, "z": 3}]}  # a heatmap cell: ignored
    assert selected_rows(sel) == [4, 2]
    assert selected_rows(None) == [] and selected_rows({"points": []}) == []


def test_val_summary_pairs_the_twin_at_the_same_step():
    mine = [{"kind": "val", "step": 100, "val_acc": 0.6, "val_ci95": 0.02},
            {"kind": "val", "step": 200, "val_acc": 0.7, "val_ci95": 0.02}]
    twin = [{"kind": "val", "step": 100, "val_acc": 0.55}, {"kind": "val", "step": 300, "val_acc": 0.9}]
    s = val_summary(mine, twin)  # the latest step both validated, as the paired headline compares
    assert s["step"] == s["twin_step"] == 100 and s["acc"] == 0.6 and s["delta"] == pytest.approx(0.05)
    s = val_summary(mine, [{"kind": "val", "step": 300, "val_acc": 0.9}])  # no common step: this run's latest alone
    assert s["step"] == 200 and s["acc"] == 0.7 and s["delta"] is None
    assert val_summary([{"kind": "train", "step": 1}]) is None


def test_new_run_dir_is_fresh_and_leaves_room_for_the_twin(tmp_path):
    from datetime import datetime

    now = datetime(2026, 1, 2, 3, 4, 5)
    first = new_run_dir(tmp_path, "demo", now)
    assert first.endswith("20260102-030405-demo")
    (tmp_path / "20260102-030405-demo-lam0").mkdir()  # its twin's folder is taken: pick another name
    second = new_run_dir(tmp_path, "demo", now)
    assert second != first and twin_dir_for(second) == second + "-lam0"


TINY = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=6, width=8, meta_batch=2, ext_batch=8,
            val_every=3, val_episodes=6, snapshot_every=3, checkpoint_every=6, probe_classes=3, probe_per_class=2)


def test_read_a_run_from_its_job_and_from_disk(tmp_path):
    registry = JobRegistry()
    out = str(tmp_path / "run")
    assert not awaits_first_snapshot(out, registry)  # no job: nothing to wait for
    job = registry.start(TrainingJob(TrainConfig(**TINY), out=out))
    assert is_active(out, registry) or job.done
    assert job.join(60) and job.state == "finished", job.error
    assert not is_active(out, registry) and not awaits_first_snapshot(out, registry)
    lm = LiveMap(warm_up=False)
    live = lm.read(out, registry)
    assert live.source == "job" and live.state == "finished" and live.device == "CPU"
    saved = lm.read(out, JobRegistry())  # the same run after a restart: from its folder
    assert saved.source == "disk" and saved.progress["step"] == 6 and saved.progress["fraction"] == 1.0
    assert [int(s["step"]) for s in saved.snapshots] == [int(s["step"]) for s in live.snapshots]
    np.testing.assert_array_equal(saved.probe["split"], live.probe["split"])
    assert len(saved.metrics) == len(live.metrics)
    xy, _, _ = lm.refresh(saved.snapshots, saved.probe, run=out, method="pca")
    assert xy.shape == (len(saved.probe["split"]), 2)
    assert lm.read(str(tmp_path / "missing"), registry).source == "none"


def test_the_view_awaits_a_first_snapshot_only_while_a_job_has_none():
    class Job:  # what awaits_first_snapshot reads of a TrainingJob
        def __init__(self, done, snapshots):
            self.done, self._snapshots = done, snapshots

        def snapshots(self):
            return self._snapshots

    class Registry:
        def __init__(self, job):
            self.job = job

        def get(self, run_dir):
            return self.job if run_dir == "runs/a" else None

    assert awaits_first_snapshot("runs/a", Registry(Job(False, [])))  # starting: poll quickly
    assert not awaits_first_snapshot("runs/a", Registry(Job(False, [{"step": 0}])))  # the map can be drawn
    assert not awaits_first_snapshot("runs/a", Registry(Job(True, [])))  # failed before any: nothing comes
    assert not awaits_first_snapshot(None, Registry(Job(False, [])))
