"""TrainingJob: a run in a background thread, paused, resumed, stopped and continued later."""
from __future__ import annotations

import time

import pytest

from engine.config import TrainConfig, preset
from engine.errors import UserError
from engine.runs import RunDir
from engine.train.job import JobRegistry, TrainingJob

TINY_DATA = "glyphs:classes=60,drawings=8,seed=1"


def tiny(**overrides):
    base = dict(steps=12, val_every=4, val_episodes=8, snapshot_every=4, checkpoint_every=4, width=8,
                concept_dim=16, meta_batch=2, ext_batch=8, dataset=TINY_DATA)
    return preset("smoke").with_overrides(**{**base, **overrides})


def wait_for(condition, timeout=30.0):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def pause_at(job: TrainingJob, steps: set[int]):
    """Make the job pause itself right after the given steps: the same flag pause() sets, but at
    a known step, so the test does not race the training thread."""
    original = job._on_event

    def on_event(kind, record):
        original(kind, record)
        if kind == "train" and record["step"] in steps:
            job.pause()

    job._on_event = on_event


def test_pause_resume_stop_then_continue_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    job = TrainingJob(tiny(), str(out))
    assert job.state == "starting" and not job.done
    pause_at(job, {3, 6})
    job.start()

    wait_for(lambda: job.state == "paused" and job.trainer.step == 3)
    time.sleep(0.3)
    assert job.trainer.step == 3  # paused: no step taken
    assert job.progress()["state"] == "paused" and job.progress()["step"] == 3

    job.resume()
    wait_for(lambda: job.state == "paused" and job.trainer.step == 6)  # it advanced, then paused again
    job.stop()  # stopping a paused job: it checkpoints where it is
    assert job.join(30)
    assert job.state == "stopped" and job.done and job.error is None
    assert job.summary["steps"] == 6
    run = RunDir.open(out)
    assert run.checkpoints()[-1].name == "step_0000006.pt"
    assert run.load_checkpoint()[0]["step"] == 6
    first_metrics = job.metrics()
    assert [r["step"] for r in first_metrics if r["kind"] == "train"] == list(range(1, 7))

    later = TrainingJob(resume_from=str(out)).start()
    assert later.join(60)
    assert later.state == "finished", later.error
    assert later.summary["steps"] == 12
    history = later.metrics()
    assert [r["step"] for r in history if r["kind"] == "train"] == list(range(1, 13))
    assert history[: len(first_metrics)] == first_metrics  # the earlier part, as recorded then
    assert [r["step"] for r in history if r["kind"] == "val"] == [4, 6, 8, 12]  # 6: the stop's validation
    snap_steps = [int(s["step"]) for s in later.snapshots()]
    assert snap_steps == [0, 1, 2, 4, 8, 12]
    assert [r["step"] for r in run.read_metrics() if r["kind"] == "train"] == list(range(1, 13))
    assert later.progress()["fraction"] == 1.0


def test_metrics_and_snapshots_since(tmp_path):
    job = TrainingJob(tiny(steps=5), str(tmp_path / "run")).start()
    assert job.join(60) and job.state == "finished", job.error
    everything = job.metrics()
    assert len(everything) == 5 + 2 + 2  # train 1..5, val and its adaptation curve at 4 and 5
    assert [(r["kind"], r["step"]) for r in everything[4:]] == [("val", 4), ("adaptation", 4), ("train", 5),
                                                                ("val", 5), ("adaptation", 5)]
    assert job.metrics(3) == everything[3:]
    assert job.metrics(len(everything)) == []
    snaps = job.snapshots()
    assert [int(s["step"]) for s in snaps] == [0, 1, 2, 4, 5]
    assert [int(s["step"]) for s in job.snapshots(2)] == [2, 4, 5]
    everything.append({"kind": "mine"})  # a copy: the caller cannot change the job's records
    assert len(job.metrics()) == 9


@pytest.mark.parametrize("change, message", [
    (dict(dataset="/no/such/dataset"), "does not exist"),
    (dict(learner="nonesuch"), "unknown learner"),
    (dict(lam=1.0, external="none"), "external"),
])
def test_a_job_with_a_bad_config_fails_cleanly(tmp_path, change, message):
    job = TrainingJob(tiny(**change), str(tmp_path / "run"))
    job.start()  # never raises in the caller
    assert job.join(30)
    assert job.state == "failed" and job.done
    assert message in job.error
    assert "Traceback" not in job.error and "\n" not in job.error
    assert job.progress()["error"] == job.error
    assert job.metrics() == [] and job.summary is None


def test_resuming_a_folder_that_is_not_a_run_fails_cleanly(tmp_path):
    job = TrainingJob(resume_from=str(tmp_path)).start()
    assert job.join(30)
    assert job.state == "failed" and "not a run directory" in job.error


def test_a_job_needs_exactly_one_way_to_start(tmp_path):
    with pytest.raises(ValueError):
        TrainingJob()
    with pytest.raises(ValueError):
        TrainingJob(tiny(), str(tmp_path / "a"), resume_from=str(tmp_path / "b"))
    with pytest.raises(ValueError):
        TrainingJob(tiny())  # a new run without a folder to write it to


def test_the_registry_refuses_a_second_job_in_the_same_folder_however_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    registry = JobRegistry()
    first = TrainingJob(tiny(steps=4), "runs/a")
    pause_at(first, {1})
    registry.start(first)
    wait_for(lambda: first.state == "paused")
    for spelling in ("runs/a", "runs/a/", "./runs/a", str(tmp_path / "runs" / "a"), tmp_path / "runs" / "a"):
        with pytest.raises(UserError, match="already running"):
            registry.start(TrainingJob(resume_from=spelling))
        assert registry.get(spelling) is first
    assert registry.active() == [first]
    assert registry.get("runs/b") is None and registry.get(None) is None

    first.resume()
    assert first.join(30) and first.state == "finished", first.error
    assert registry.active() == []
    again = registry.start(TrainingJob(resume_from="runs/a/"))  # a finished job's folder may be reused
    assert again.join(30) and again.state == "finished", again.error
    assert registry.get("runs/a") is again


def test_time_left_follows_the_recent_pace_not_the_slow_start(tmp_path):
    job = TrainingJob(TrainConfig(steps=1000), out=str(tmp_path / "run"))
    assert job._eta(0.0, 0, 1000) is None
    assert job._eta(60.0, 10, 1000) == pytest.approx(60 / 10 * 990)  # too little history: the pace since the start
    for t in range(61, 200):  # then 10 steps a second
        eta = job._eta(float(t), 10 + (t - 60) * 10, 1000)
    step = 10 + (199 - 60) * 10
    assert eta == pytest.approx((1000 - step) / 10, rel=0.01)  # not the average since the start (~7 s a step)
    assert job._eta(5.0, 20, 1000) == pytest.approx(5.0 / 20 * 980)  # went back in time (a resume): starts again
