"""Live by time: snapshots by elapsed wall time as well as by step, without changing the training;
and a map that switches from PCA to UMAP without flipping."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import engine.train.trainer as trainer_module
from engine.config import TrainConfig, preset
from engine.errors import UserError
from engine.train.launch import resume_run, start_run
from engine.train.trainer import Control, Trainer
from engine.viz import project
from engine.viz.live import LiveMap
from engine.viz.project import ConceptProjector, frame_displacement, procrustes_transform

TINY = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=12, val_every=5, val_episodes=8, snapshot_every=100,
            checkpoint_every=5, width=8, concept_dim=16, meta_batch=2, ext_batch=8)


@pytest.fixture
def clock(monkeypatch):
    """A fake wall clock that each training step moves on by `clock.step_s` seconds."""
    fake = SimpleNamespace(now=1000.0, step_s=1.0)
    monkeypatch.setattr(trainer_module, "_clock", lambda: fake.now)
    real = Trainer.train_step

    def step(self, *a, **k):
        fake.now += fake.step_s
        return real(self, *a, **k)

    monkeypatch.setattr(Trainer, "train_step", step)
    return fake


def collect(trainer: Trainer, run=None, stop_after: int | None = None):
    events, control = [], Control()

    def on_event(kind, rec):
        events.append((kind, rec))
        if stop_after is not None and kind == "train" and rec["step"] == stop_after:
            control.stop = True

    trainer.run(run, control, on_event)
    return events


def snapshot_steps(events) -> list[int]:
    return [int(rec["step"]) for kind, rec in events if kind == "snapshot"]


def training_numbers(events) -> list[dict]:
    timing = {"step_seconds", "images_per_s", "seconds"}
    return [{k: v for k, v in rec.items() if k not in timing} for kind, rec in events if kind in ("train", "val")]


def test_snapshots_come_by_time_between_step_snapshots_and_change_no_training_number(clock):
    timed = collect(Trainer(preset("smoke").with_overrides(**TINY, snapshot_seconds=1.5)))
    # by step: 0, 1, 2, 4, 8 and the last (12); by time (1 s a step, 1.5 s apart): 6 and 10
    assert snapshot_steps(timed) == [0, 1, 2, 4, 6, 8, 10, 12]
    by_step = collect(Trainer(preset("smoke").with_overrides(**TINY, snapshot_seconds=0)))
    assert snapshot_steps(by_step) == [0, 1, 2, 4, 8, 12]
    assert training_numbers(timed) == training_numbers(by_step)


def test_slow_steps_get_a_snapshot_each(clock):
    clock.step_s = 2.0
    events = collect(Trainer(preset("smoke").with_overrides(**{**TINY, "steps": 6}, snapshot_seconds=1.5)))
    assert snapshot_steps(events) == [0, 1, 2, 3, 4, 5, 6]


def test_the_gap_grows_on_long_runs(clock, monkeypatch):
    monkeypatch.setattr(trainer_module, "TIMED_SNAPSHOTS", 4)  # gap: a quarter of the time trained so far
    events = collect(Trainer(preset("smoke").with_overrides(**{**TINY, "steps": 30}, snapshot_seconds=1.5)))
    # by step 0, 1, 2, 4, 8, 16, 30; by time at 6 (2 s after 4), then the gap is t/4: 11 (2.75 s),
    # 15 (3.75 s), 22 (5.5 s after 16); 1.5 s alone would give 6, 10, 12, 14, 18, 20...
    assert snapshot_steps(events) == [0, 1, 2, 4, 6, 8, 11, 15, 16, 22, 30]


def test_a_resumed_run_with_snapshots_by_time_trains_like_an_uninterrupted_one(clock, tmp_path):
    cfg = preset("smoke").with_overrides(**TINY, snapshot_seconds=1.5)
    straight, straight_run = start_run(cfg, str(tmp_path / "straight"))
    s_events = collect(straight, straight_run)
    first, run = start_run(cfg, str(tmp_path / "interrupted"))
    collect(first, run, stop_after=7)  # checkpoints at 5 and 7 (the stop)
    clock.step_s = 0.7  # another machine's speed: other snapshot steps
    resumed, run2 = resume_run(str(tmp_path / "interrupted"))
    r_events = collect(resumed, run2)
    assert snapshot_steps(r_events) != [s for s in snapshot_steps(s_events) if s > 7]
    straight_train = [r for r in straight_run.read_metrics() if r["kind"] == "train"]
    resumed_train = [r for r in run2.read_metrics() if r["kind"] == "train"]
    assert [r["step"] for r in resumed_train] == list(range(1, 13))
    for a, b in zip(resumed_train, straight_train):
        assert a["meta_loss"] == pytest.approx(b["meta_loss"], abs=1e-5)
        assert a["meta_acc"] == pytest.approx(b["meta_acc"], abs=1e-5)
    assert training_numbers(r_events)[-1]["val_acc"] == pytest.approx(training_numbers(s_events)[-1]["val_acc"],
                                                                       abs=1e-5)
    assert run2.snapshot_steps() == sorted(run2.snapshot_steps())


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_snapshot_seconds_must_be_a_finite_non_negative_number(value):
    with pytest.raises(UserError, match="snapshot"):
        preset("smoke").with_overrides(snapshot_seconds=value)
    with pytest.raises(UserError, match="snapshot_seconds"):
        TrainConfig.from_dict({"snapshot_seconds": "fast"})


# --- the switch from PCA to UMAP (slow: UMAP compiles on first use) ---------------------------
def clustered(n=150, d=32, k=30, frames=4, seed=0) -> list[np.ndarray]:
    """A probe-like set: k classes of n/k points whose clusters tighten frame by frame."""
    rng = np.random.default_rng(seed)
    centres, label, noise = rng.normal(size=(k, d)) * 2, np.arange(n) % k, rng.normal(size=(n, d))
    return [(centres[label] + noise * (1.0 - 0.15 * t)).astype(np.float32) for t in range(frames)]


def is_identity(affine) -> bool:
    R, s, t = affine
    return np.allclose(R, np.eye(2), atol=1e-6) and abs(s - 1) < 1e-6 and np.allclose(t, 0, atol=1e-5)


@pytest.fixture(scope="module")
def umap_ready():
    assert project.wait_for_umap(300), project.umap_error()


@pytest.mark.slow
def test_live_map_switch_from_pca_to_umap_keeps_the_picture_aligned(umap_ready, monkeypatch):
    frames = clustered()
    snaps = [{"step": np.int64(i), "concepts": f} for i, f in enumerate(frames)]
    probe = {"images": np.zeros((150, 8, 8, 1), np.uint8)}
    lm = LiveMap(warm_up=False)
    with monkeypatch.context() as m:
        m.setattr(project, "umap_status", lambda: "warming")
        pca, _, note = lm.refresh(snaps[:2], probe, run="r", method="umap")
    assert lm.method_shown("r", "umap") == "pca" and "PCA" in note
    umap, _, note = lm.refresh(snaps[:3], probe, run="r", method="umap")  # ready now: the next snapshot switches
    assert lm.method_shown("r", "umap") == "umap" and "switched" in note
    # aligned: no rotation, reflection, shift or scale brings the UMAP frame closer to the PCA one
    assert is_identity(procrustes_transform(umap, pca))
    fresh = ConceptProjector("umap").fit(frames[2]).embedding_
    assert frame_displacement(umap, pca) < min(0.9, frame_displacement(fresh, pca))


@pytest.mark.slow
def test_a_fresh_umap_fit_after_pca_is_turned_onto_the_pca_map(umap_ready, monkeypatch):
    X = clustered(frames=1)[0]
    with monkeypatch.context() as m:
        m.setattr(project, "umap_status", lambda: "warming")
        proj = ConceptProjector("umap").fit(X)
    pca = proj.embedding_.copy()
    umap = proj.fit(X).embedding_
    assert proj.method_ == "umap" and "switched" in proj.note_
    assert is_identity(procrustes_transform(umap, pca))
    unaligned = ConceptProjector("umap").fit(X).embedding_
    assert not is_identity(procrustes_transform(unaligned, pca))
    assert frame_displacement(umap, pca) < frame_displacement(unaligned, pca)
