"""Serving several browser sessions from one process: concurrent jobs do not disturb each other,
stopping/deleting one leaves the others alone, and the served defaults stay safe."""
from __future__ import annotations

import os
import threading
import time
import tomllib
from pathlib import Path

import pytest
import torch

import engine.models.deml
from engine.config import preset
from engine.errors import UserError
from engine.services import catalog
from engine.services.uploads import LIMITS, MiB, save_zip
from engine.train.job import REGISTRY, TrainingJob

REPO = Path(__file__).resolve().parent.parent
TINY = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=8, width=8, concept_dim=16, meta_batch=2,
            ext_batch=8, val_every=4, val_episodes=8, snapshot_every=4, checkpoint_every=8)
SEEDS = (1, 2)


def tiny(seed: int, **overrides):
    return preset("smoke").with_overrides(**{**TINY, "seed": seed, **overrides})


def wait_for(condition, timeout=30.0, job=None):
    end = time.monotonic() + timeout
    while not condition():
        if job is not None and job.state == "failed":
            raise AssertionError(job.error)
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def params(job: TrainingJob) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in job.trainer.model.state_dict().items()}


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"parameters differ from the run trained alone: {different[:5]}"


def pause_after(job: TrainingJob, step: int) -> None:
    """The job pauses itself right after `step` (the flag pause() sets, at a known step)."""
    original = job._on_event

    def on_event(kind, record):
        original(kind, record)
        if kind == "train" and record["step"] == step:
            job.pause()

    job._on_event = on_event


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> dict[int, dict]:
    """Final parameters of the tiny run for each seed, trained alone, one after the other."""
    out = {}
    for seed in SEEDS:
        job = TrainingJob(tiny(seed), str(tmp_path_factory.mktemp("alone") / f"seed{seed}")).start()
        assert job.join(60) and job.state == "finished", job.error
        out[seed] = params(job)
    assert any(not torch.equal(out[1][k], out[2][k]) for k in out[1])  # the seeds do give other runs
    return out


@pytest.fixture
def interleaved_init(monkeypatch):
    """Make two trainers build their models at the same moment: each waits (up to 2 s) for the
    other right after seeding, so any shared random state is drawn from by both at once."""
    barrier = threading.Barrier(2, timeout=2.0)
    real = engine.models.deml.DEMLModel

    def model(*args, **kwargs):
        try:
            barrier.wait()
        except threading.BrokenBarrierError:  # the other one is not there (e.g. builds are serialised)
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.models.deml, "DEMLModel", model)


def test_two_jobs_at_once_train_exactly_as_each_would_alone(tmp_path, alone, interleaved_init):
    jobs = {seed: REGISTRY.start(TrainingJob(tiny(seed), str(tmp_path / f"seed{seed}"))) for seed in SEEDS}
    try:
        for seed, job in jobs.items():
            assert job.join(60), f"seed {seed} did not finish"
            assert job.state == "finished" and job.error is None, job.error
            assert job.summary["steps"] == TINY["steps"]
            assert_same_params(params(job), alone[seed])
    finally:
        for job in jobs.values():
            job.stop()
            job.join(30)


def test_pausing_and_stopping_one_job_leaves_the_other_alone(tmp_path, alone):
    a = TrainingJob(tiny(1), str(tmp_path / "a"))
    pause_after(a, 2)
    REGISTRY.start(a)
    b = None
    try:
        wait_for(lambda: a.state == "paused" and a.trainer.step == 2, job=a)
        b = REGISTRY.start(TrainingJob(tiny(2), str(tmp_path / "b")))
        assert b.join(60) and b.state == "finished", b.error
        assert a.state == "paused" and a.trainer.step == 2  # b's whole run went by; a never moved
        assert_same_params(params(b), alone[2])

        a.stop()  # stopping the paused one: it checkpoints where it is and ends
        assert a.join(30) and a.state == "stopped" and a.summary["steps"] == 2
        assert b.state == "finished"  # and b, already done, is untouched by it

        # the other way round: a second job keeps training while the first is stopped
        c = REGISTRY.start(TrainingJob(tiny(1, steps=100_000, checkpoint_every=100_000), str(tmp_path / "c")))
        d = REGISTRY.start(TrainingJob(tiny(2, steps=100_000, checkpoint_every=100_000), str(tmp_path / "d")))
        try:
            wait_for(lambda: c.trainer is not None and c.trainer.step > 0, job=c)
            wait_for(lambda: d.trainer is not None and d.trainer.step > 0, job=d)
            c.stop()
            assert c.join(30) and c.state == "stopped"
            step = d.trainer.step
            wait_for(lambda: d.trainer.step > step + 1, job=d)
            assert d.state == "running" and not d.done
        finally:
            for job in (c, d):
                job.stop()
                job.join(30)
    finally:
        for job in (a, b):
            if job is not None:
                job.stop()
                job.join(30)


def test_the_registry_refuses_a_second_job_in_the_same_run_dir_however_spelled(tmp_path):
    (tmp_path / "runs").mkdir()
    os.symlink(tmp_path / "runs", tmp_path / "alias")
    long = dict(steps=100_000, checkpoint_every=100_000)
    first = REGISTRY.start(TrainingJob(tiny(1, **long), str(tmp_path / "runs" / "x")))
    other = None
    try:
        for spelling in (str(tmp_path / "runs" / "x"), str(tmp_path / "runs" / "x") + "/",
                         str(tmp_path / "runs" / "y" / ".." / "x"), str(tmp_path / "alias" / "x")):
            with pytest.raises(UserError, match="already running"):
                REGISTRY.start(TrainingJob(tiny(2, **long), spelling))
        assert REGISTRY.get(str(tmp_path / "alias" / "x")) is first
        other = REGISTRY.start(TrainingJob(tiny(2, **long), str(tmp_path / "runs" / "z")))  # another folder: fine
        wait_for(lambda: first.trainer is not None and first.trainer.step > 0, job=first)
        assert not first.done and not other.done
    finally:
        for job in (first, other):
            if job is not None:
                job.stop()
                job.join(30)


def test_deleting_a_running_run_stops_it_first_while_another_keeps_training(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("CONCEPTSCAPE_RUNS", str(root))
    long = dict(steps=100_000, checkpoint_every=100_000)
    doomed = REGISTRY.start(TrainingJob(tiny(1, **long), str(root / "doomed")))
    kept = REGISTRY.start(TrainingJob(tiny(2, **long), str(root / "kept")))
    try:
        for job in (doomed, kept):
            wait_for(lambda: job.trainer is not None and job.trainer.step > 0 and Path(job.run_dir).exists(),
                     job=job)
        result = catalog.delete_run(root / "." / "doomed")  # spelled differently from the job's run_dir
        assert result["stopped_job"] and doomed.done and doomed.state == "stopped"
        assert not (root / "doomed").exists()
        assert {r.name for r in catalog.list_runs()} == {"kept"}
        step = kept.trainer.step
        wait_for(lambda: kept.trainer.step > step + 1, job=kept)  # the other run trains on
        assert kept.state == "running" and (root / "kept" / "config.json").is_file()
    finally:
        for job in (doomed, kept):
            job.stop()
            job.join(30)


def test_served_defaults_are_local_with_xsrf_protection_and_an_upload_limit():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["address"] == "127.0.0.1"
    assert server["enableXsrfProtection"] is True
    assert isinstance(server["maxUploadSize"], int) and 0 < server["maxUploadSize"] <= 1000  # MiB (Streamlit counts megabytes of 2**20 bytes)
    # the engine's own limit on one upload is no looser than what the server lets through
    assert LIMITS.max_upload_bytes <= server["maxUploadSize"] * MiB
    assert config.get("browser", {}).get("gatherUsageStats") is False


def test_a_visitor_never_sees_tracebacks_or_server_paths():
    """client.showErrorDetails "none": the browser gets a generic message only; the error, its type
    and its traceback (with the server's paths) go to the server log."""
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config.get("client", {}).get("showErrorDetails") == "none"


def test_the_default_upload_limit_is_enforced(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_UPLOADS", str(tmp_path / "uploads"))
    assert (LIMITS.max_upload_bytes, LIMITS.max_unpacked_bytes, LIMITS.max_file_bytes) == (100 * MiB, 500 * MiB, 20 * MiB)
    with pytest.raises(UserError, match=r"the limit is .* per upload"):
        save_zip("big.zip", bytes(LIMITS.max_upload_bytes + 1))
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").rglob("*"))
