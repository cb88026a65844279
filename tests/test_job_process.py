"""TrainingJob(process=True), what the app uses: the trainer in a process of its own (engine.train.worker),
with the same records, numbers and controls as a job in a thread, and a clear failure when the process dies."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from engine.train.job import TrainingJob
from engine.train.worker import RunningTrainer
from tests.test_job import tiny, wait_for


def run_to_end(job: TrainingJob) -> TrainingJob:
    job.start()
    assert job.join(120)
    return job


def test_a_process_job_records_what_a_thread_job_does_to_the_last_digit(tmp_path):
    cfg = tiny(steps=8)
    here = run_to_end(TrainingJob(cfg, str(tmp_path / "thread"), threads=1))
    child = run_to_end(TrainingJob(cfg, str(tmp_path / "process"), threads=1, process=True))
    assert child.state == "finished" and child.error is None and isinstance(child.trainer, RunningTrainer)
    assert child.progress()["step"] == 8 and child.trainer.cfg.lam == cfg.lam and child.trainer.probe is not None
    strip = lambda records: [{k: v for k, v in r.items() if "seconds" not in k and k != "images_per_s"}  # noqa: E731
                             for r in records]
    assert strip(child.metrics()) == strip(here.metrics())
    assert [int(s["step"]) for s in child.snapshots()] == [int(s["step"]) for s in here.snapshots()]
    np.testing.assert_array_equal(child.snapshots()[-1]["concepts"], here.snapshots()[-1]["concepts"])
    assert child.summary["val_accuracy"] == here.summary["val_accuracy"]


def test_pause_stop_and_resume_in_a_new_process_keep_the_history(tmp_path):
    out = str(tmp_path / "run")
    job = TrainingJob(tiny(steps=400, checkpoint_every=50), out, threads=1, process=True).start()
    wait_for(lambda: job.trainer is not None and job.trainer.step >= 3, timeout=60)
    job.pause()
    wait_for(lambda: job.state == "paused")
    at = job.progress()["step"]
    wait_for(lambda: len(job.metrics()) >= 1)
    time.sleep(0.5)  # the child had at most one step under way when the flag was set
    held = job.progress()["step"]
    time.sleep(0.5)
    assert job.progress()["step"] == held >= at  # paused: no step taken
    job.stop()
    assert job.join(60) and job.state == "stopped" and job.summary["steps"] == held

    again = run_to_end(TrainingJob(resume_from=out, threads=1, process=True))
    assert again.state == "finished" and again.progress()["step"] == 400
    steps = [r["step"] for r in again.metrics() if r["kind"] == "train"]
    assert steps[0] == 1 and steps[-1] == 400  # the history before the stop came back from the child


@pytest.mark.parametrize("change, message", [
    (dict(dataset="/no/such/dataset"), "does not exist"),
    (dict(learner="nonesuch"), "unknown learner"),
])
def test_a_bad_config_fails_in_the_childs_words(tmp_path, change, message):
    job = run_to_end(TrainingJob(tiny(**change), str(tmp_path / "run"), process=True))
    assert job.state == "failed" and message in job.error and "\n" not in job.error
    assert job.metrics() == [] and job.summary is None


def test_a_training_process_that_dies_fails_the_job_and_says_so(tmp_path):
    job = TrainingJob(tiny(steps=100_000), str(tmp_path / "run"), threads=1, process=True).start()
    wait_for(lambda: job.trainer is not None and job.trainer.step >= 1, timeout=60)
    os.kill(job._child.pid, signal.SIGKILL)
    assert job.join(30)
    assert job.state == "failed" and "ended unexpectedly" in job.error and "-9" in job.error


def test_the_training_process_does_not_run_the_parents_main_script(tmp_path, monkeypatch):
    """Streamlit runs each page as a module named __main__: a child prepared the usual way would run app.py
    again before training (it did: the demo's processes sat at step 0 running the page)."""
    import sys
    import types

    marker = tmp_path / "main-ran"
    script = tmp_path / "page.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    page = types.ModuleType("__main__")
    page.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", page)
    job = run_to_end(TrainingJob(tiny(steps=2), str(tmp_path / "run"), threads=1, process=True))
    assert job.state == "finished" and not marker.exists()


def test_warm_up_returns_once_the_forkserver_has_forked_a_child():
    import sys

    from engine.train import worker

    assert worker.warm_up() is (sys.platform == "linux")  # forkserver on Linux: a child came from it
    assert "torch._dynamo" in worker.PRELOAD  # imported by the forkserver, not by the app's server
