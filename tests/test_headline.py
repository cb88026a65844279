"""DEML against its λ = 0 twin, side by side: the paired headline, the twin's map aligned onto the
run's, and Start demo starting both runs (once)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from engine import config
from engine.eval.headline import paired_difference, paired_headline
from engine.eval.twins import twin_dir_for
from engine.services.training import running_demo, start_demo, threads_per_job
from engine.train.job import JobRegistry
from engine.viz.live import LiveMap, aligned_to


def _val(step: int, accs, **extra) -> dict:
    return {"kind": "val", "step": step, "val_acc": float(np.mean(accs)), "val_per_episode": list(map(float, accs)),
            "episodes": len(accs), **extra}


def test_headline_is_paired_with_t_interval_and_sign():
    rng = np.random.default_rng(0)
    vanilla = rng.uniform(0.3, 0.7, 40)
    deml = np.clip(vanilla + 0.05 + rng.normal(0, 0.02, 40), 0, 1)
    h = paired_headline([_val(100, deml * 0.5), _val(200, deml)], [_val(100, vanilla), _val(200, vanilla)])
    d = deml - vanilla
    assert h.step == 200 and h.episodes == 40  # the latest step both validated
    assert h.points == pytest.approx(100 * d.mean())
    q = stats.t.ppf(0.975, 39)  # a t quantile, not 1.96
    assert h.half_width == pytest.approx(100 * q * d.std(ddof=1) / np.sqrt(40))
    assert not h.covers_zero
    assert h.text.startswith(f"DEML vs vanilla: +{h.points:.1f} ± {h.half_width:.1f} points")
    assert "(validation accuracy, 40 episodes, paired)" in h.text
    # the other way round: a negative sign, still a difference
    flipped = paired_headline([_val(200, vanilla)], [_val(200, deml)])
    assert flipped.points == pytest.approx(-h.points) and flipped.text.startswith("DEML vs vanilla: -")


def test_headline_pairing_beats_unpaired_noise():
    """Large episode-to-episode spread shared by both runs cancels in the paired difference."""
    base = np.linspace(0.1, 0.9, 30)
    h = paired_headline([_val(5, base + 0.02)], [_val(5, base)])
    assert h.points == pytest.approx(2.0) and h.half_width == pytest.approx(0.0, abs=1e-9)
    assert not h.covers_zero


def test_headline_says_no_difference_when_interval_covers_zero():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, 20)
    b = a[::-1].copy()  # same values, shuffled pairing: mean difference 0
    h = paired_headline([_val(10, a)], [_val(10, b)])
    assert h.covers_zero
    assert h.text.startswith("DEML vs vanilla: no difference yet (")
    assert "20 episodes, paired" in h.text


def test_headline_needs_common_step_and_per_episode_accuracies():
    assert paired_headline([], []) is None
    assert paired_headline([_val(10, [0.5, 0.6])], [_val(20, [0.5, 0.6])]) is None  # no common step
    old = {"kind": "val", "step": 10, "val_acc": 0.5, "episodes": 2}  # written before per-episode values
    assert paired_headline([old], [old]) is None
    assert paired_headline([_val(10, [0.5, 0.6, 0.7])], [_val(10, [0.5, 0.6])]) is None  # other episodes
    assert paired_headline([_val(10, [0.5, 2.0])], [_val(10, [0.5, 0.6])]) is None  # damaged values
    mean, half = paired_difference([0.5], [0.25])
    assert mean == 0.25 and np.isnan(half)


def test_aligned_to_undoes_rotation_reflection_scale_and_shift():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(30, 2))
    theta = 1.1
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) @ np.diag([1, -1])
    moved = 3.0 * ref @ R + np.array([5.0, -2.0])
    out = aligned_to(moved, ref)
    assert np.abs(moved - ref).max() > 1  # it was far off
    np.testing.assert_allclose(out, ref, atol=1e-4)
    np.testing.assert_array_equal(aligned_to(moved[:10], ref), moved[:10].astype(np.float32))  # other rows
    np.testing.assert_array_equal(aligned_to(moved, None), moved.astype(np.float32))


def test_twin_frame_is_aligned_to_the_run_map_at_the_same_step():
    rng = np.random.default_rng(3)
    probe = {"split": np.zeros(40, np.int8)}
    base = rng.normal(size=(40, 16)).astype(np.float32)
    snaps = [{"step": s, "concepts": base + 0.01 * s * rng.normal(size=base.shape).astype(np.float32)}
             for s in (0, 5, 10)]
    lm = LiveMap(warm_up=False)
    ref, _, _ = lm.refresh(snaps, probe, run="deml", method="pca")
    # the twin's concepts: the same geometry, turned and stretched (what another training run looks like)
    Q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    twin = [{"step": s["step"] + 1 if s["step"] else 0, "concepts": (2.0 * s["concepts"] @ Q).astype(np.float32)}
            for s in snaps]
    xy, reg, snap = lm.twin_frame(twin, probe, ref, step=10, run="deml-lam0", method="pca")
    assert snap["step"] == 6  # the latest of the twin's at or before step 10 (its snapshots came at 0, 6, 11)
    assert reg is None
    err = np.abs(xy - ref).mean() / np.abs(ref).mean()
    assert err < 0.2, err  # drawn in the run map's orientation
    unaligned, _, _ = lm.frame_at(twin, probe, 6, run="deml-lam0", method="pca")
    assert np.abs(unaligned - ref).mean() / np.abs(ref).mean() > err


TINY_DEMO = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=6, width=8, meta_batch=2, ext_batch=8,
                 val_every=3, val_episodes=6, snapshot_every=3, checkpoint_every=6)


def test_start_demo_starts_the_run_and_its_twin_once(tmp_path, monkeypatch):
    monkeypatch.setitem(config.PRESETS, "demo", TINY_DEMO)
    registry = JobRegistry()
    out = start_demo(tmp_path / "runs", registry=registry)
    deml, twin = registry.get(out), registry.get(twin_dir_for(out))
    try:
        assert deml is not None and twin is not None
        assert running_demo(registry) == out
        assert start_demo(tmp_path / "runs", registry=registry) == out  # again: the same pair, nothing new
        assert len(registry.active()) == 2
        cores = threads_per_job(1, JobRegistry())  # all of them, for one job alone
        assert deml.threads == twin.threads == max(1, cores // 2)  # the pair shares them
    finally:
        for j in (deml, twin):
            if j is not None:
                assert j.join(120)
    assert deml.state == twin.state == "finished", (deml.error, twin.error)
    assert deml.trainer.cfg.lam > 0 and twin.trainer.cfg.lam == 0
    assert deml.trainer.cfg.seed == twin.trainer.cfg.seed
    np.testing.assert_array_equal(deml.trainer.probe["images"], twin.trainer.probe["images"])  # same probe images
    h = paired_headline(deml.metrics(), twin.metrics())  # both validated on the same episodes
    assert h is not None and h.step == 6 and h.episodes == 6


def test_training_jobs_lower_the_gil_switch_interval_only():
    import sys

    from engine.train.job import SWITCH_INTERVAL_S, share_gil
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        share_gil()
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S, rel=0.01)
        sys.setswitchinterval(0.0002)  # set lower by someone else: kept
        share_gil()
        assert sys.getswitchinterval() == pytest.approx(0.0002, rel=0.01)
    finally:
        sys.setswitchinterval(before)
