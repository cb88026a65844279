"""One trainer per run folder, across processes (issue 14, findings 1, 7 and 8): the run's lock
refuses a second trainer (command line, the app's Resume, Delete) and dies with its holder; delete
renames aside first; checkpoint downloads never follow a symlink; run files follow the umask."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RUN

from engine.config import preset
from engine.errors import UserError
from engine.records import RunState
from engine.run_lock import LOCK_NAME
from engine.runs import RunDir, atomic_write
from engine.services import catalog, training
from engine.train.job import JobRegistry, TrainingJob
from engine.train.launch import resume_run, start_run
from engine.viz.live import LiveMap

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
HOLD = ("import sys; from engine.runs import RunDir; r = RunDir(sys.argv[1]); r.acquire_lock(); "
        "print('locked', flush=True); sys.stdin.read()")


def holder_process(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the run's lock (through RunDir, as a trainer does) and keeps it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    assert line.strip() == "locked", proc.stderr.read()
    return proc


def unfinished(run_dir: Path, steps: int = 12) -> None:
    """Make a finished run continuable (more steps than it has trained)."""
    run = RunDir(run_dir)
    run.update_config({**run.config(), "steps": steps})


# ------------------------------------------------------------------------------------------------
# the lock across processes
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_trainer_on_a_locked_run_exits_2_naming_the_holder(twin_runs, tmp_path):
    run_dir = twin_runs / "deml"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != LOCK_NAME}
    with RunDir(run_dir).lock():
        done = subprocess.run([sys.executable, "-m", "engine", "train", "--resume", str(run_dir), "--steps", "12"],
                              cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr
        assert str(run_dir) in lines[0] and f"process {os.getpid()} on {socket.gethostname()}" in lines[0]
        assert done.stdout == ""
        # nothing was touched: not config.json (--steps), not the metrics (truncated on resume)
        assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != LOCK_NAME} == before

        # a new run into a (still empty) folder another trainer has just locked is refused the same way
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        with RunDir(fresh).lock():
            args = ["--preset", "smoke", "--steps", "2", "--width", "8", "--concept-dim", "16", "--meta-batch", "2",
                    "--ext-batch", "8", "--val-episodes", "4", "--dataset", TINY_RUN["dataset"], "--out", str(fresh)]
            done = subprocess.run([sys.executable, "-m", "engine", "train", *args], cwd=REPO, env=ENV,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 2, done.stderr
            assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
            assert f"process {os.getpid()}" in done.stderr
            assert [p.name for p in fresh.iterdir()] == [LOCK_NAME]  # no config.json written


@pytest.mark.slow
def test_the_lock_dies_with_its_holder_and_the_run_resumes(twin_runs):
    run_dir = twin_runs / "deml"
    unfinished(run_dir, steps=8)
    proc = holder_process(run_dir)
    try:
        holder = RunDir(run_dir).locked_by()
        assert holder is not None and holder.pid == proc.pid and holder.host == socket.gethostname()
        assert f"process {proc.pid}" in str(holder)
        with pytest.raises(UserError, match=f"process {proc.pid}"):
            resume_run(str(run_dir))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close(), proc.stderr.close(), proc.stdin.close()
    assert RunDir(run_dir).locked_by() is None  # no manual cleanup: the OS let it go
    trainer, run = resume_run(str(run_dir))
    assert run.holds_lock and RunDir(run_dir).locked_by().pid == os.getpid()
    summary = trainer.run(run)
    assert summary["steps"] == 8 and not run.holds_lock and RunDir(run_dir).locked_by() is None


def test_a_run_is_locked_exactly_while_it_trains(tmp_path):
    events = []
    cfg = preset("smoke").with_overrides(**{**TINY_RUN, "steps": 2, "checkpoint_every": 2})
    trainer, run = start_run(cfg, str(tmp_path / "run"))
    assert run.holds_lock and RunDir(run.path).locked_by().pid == os.getpid()
    trainer.run(run, on_event=lambda kind, rec: events.append(RunDir(run.path).locked_by()))
    assert events and all(h is not None and h.pid == os.getpid() for h in events)
    assert RunDir(run.path).locked_by() is None
    assert (run.path / LOCK_NAME).read_text() == ""  # no stale holder left behind


def test_a_job_on_a_locked_run_fails_with_the_holder(twin_runs):
    unfinished(twin_runs / "deml")
    with RunDir(twin_runs / "deml").lock():
        job = JobRegistry().start(TrainingJob(resume_from=str(twin_runs / "deml")))
        assert job.join(60)
    assert job.state == RunState.FAILED and f"process {os.getpid()}" in job.error
    assert RunDir(twin_runs / "deml").config()["steps"] == 12 and len(RunDir(twin_runs / "deml").checkpoints()) == 1


# ------------------------------------------------------------------------------------------------
# the app: shown as trained elsewhere, Resume and Delete refused
# ------------------------------------------------------------------------------------------------
def test_the_app_shows_a_locked_run_as_trained_elsewhere_and_refuses_resume_and_delete(twin_runs):
    run_dir = twin_runs / "deml"
    unfinished(run_dir)
    assert LiveMap(warm_up=False).read(str(run_dir)).resumable  # without the lock: continuable
    with RunDir(run_dir).lock():
        summary = catalog.summarize(run_dir)
        assert summary.state == RunState.ELSEWHERE == "training (another process)"
        assert f"process {os.getpid()}" in summary.detail and summary.readable
        assert summary.row()["state"].startswith("training (another process)")
        view = LiveMap(warm_up=False).read(str(run_dir))
        assert view.state == RunState.ELSEWHERE and not view.resumable and f"process {os.getpid()}" in view.holder
        twin_view = LiveMap(warm_up=False).read(str(twin_runs / "deml-lam0"))
        assert twin_view.twin_state == RunState.ELSEWHERE and not twin_view.resumable

        registry = JobRegistry()
        with pytest.raises(UserError, match=f"Resume refused: .*process {os.getpid()}"):
            training.resume_runs(str(run_dir), registry)
        assert registry.active() == []
        with pytest.raises(UserError, match="cannot be deleted"):
            catalog.delete_run(run_dir)
        assert (run_dir / "config.json").is_file()
    assert catalog.summarize(run_dir).state == RunState.STOPPED
    unfinished(twin_runs / "deml-lam0")
    with RunDir(twin_runs / "deml-lam0").lock():  # Resume moves a run and its twin together: both free
        with pytest.raises(UserError, match=f"deml-lam0 is being trained by process {os.getpid()}"):
            training.resume_runs(str(run_dir), registry)
        assert registry.active() == []


# ------------------------------------------------------------------------------------------------
# delete: aside first, then removed; failures said, never raised as crashes
# ------------------------------------------------------------------------------------------------
def test_delete_renames_the_run_aside_then_removes_it(twin_runs, monkeypatch):
    run_dir = twin_runs / "deml"
    seen = []
    real_rmtree = shutil.rmtree

    def rmtree(path, **kw):
        path = Path(path)
        seen.append((path, run_dir.exists(), (path / "config.json").is_file(),
                     [r.name for r in catalog.list_runs()]))
        real_rmtree(path, **kw)

    monkeypatch.setattr(catalog.shutil, "rmtree", rmtree)
    assert catalog.delete_run(run_dir)["deleted"] == os.path.realpath(run_dir)
    [(aside, original_there, aside_whole, listed)] = seen
    assert aside.parent == twin_runs and aside.name.startswith(".deml.deleting-")
    assert not original_there and aside_whole and listed == ["deml-lam0"]
    assert sorted(p.name for p in twin_runs.iterdir()) == ["deml-lam0"]


def test_a_failed_delete_is_a_user_error_and_the_leftover_is_not_listed(twin_runs, monkeypatch):
    def rmtree(path, onerror=None, onexc=None):
        err = PermissionError(13, "Permission denied")
        (onexc(os.unlink, str(Path(path) / "metrics.jsonl"), err) if onexc else
         onerror(os.unlink, str(Path(path) / "metrics.jsonl"), (PermissionError, err, None)))

    monkeypatch.setattr(catalog.shutil, "rmtree", rmtree)
    with pytest.raises(UserError, match=r"no longer listed.*Permission denied.*by hand"):
        catalog.delete_run(twin_runs / "deml")
    leftovers = [p.name for p in twin_runs.iterdir() if p.name.startswith(".deml.deleting-")]
    assert len(leftovers) == 1
    assert [r.name for r in catalog.list_runs()] == ["deml-lam0"]

    def rename(*_):
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(catalog.os, "rename", rename)
    with pytest.raises(UserError, match="could not delete .*busy; nothing was removed"):
        catalog.delete_run(twin_runs / "deml-lam0")
    assert (twin_runs / "deml-lam0" / "config.json").is_file() and RunDir(twin_runs / "deml-lam0").locked_by() is None


# ------------------------------------------------------------------------------------------------
# checkpoint downloads
# ------------------------------------------------------------------------------------------------
def test_a_checkpoint_symlink_is_never_served(twin_runs, tmp_path):
    run_dir = twin_runs / "deml"
    folder = run_dir / "checkpoints"
    secret = tmp_path / "secret.txt"
    secret.write_text("not for visitors")
    (folder / "step_9999999.pt").symlink_to(secret)  # newest by name and by time
    (folder / "step_9999998.pt").mkdir()  # a folder so named
    (folder / "step_99.pt").write_text("odd name")
    (folder / "step_0000007.pt.bak").write_text("odd name")
    newest = catalog.newest_checkpoint(run_dir)
    assert newest == folder / "step_0000006.pt"
    assert catalog.read_checkpoint(newest) == newest.read_bytes()
    for name in ("step_9999999.pt", "step_9999998.pt", "step_99.pt"):
        with pytest.raises(UserError):
            catalog.read_checkpoint(folder / name)

    # swapped for a symlink after it was listed: the read refuses it
    os.replace(folder / "step_9999999.pt", newest)
    with pytest.raises(UserError):
        catalog.read_checkpoint(newest)

    # the checkpoints folder itself a symlink to a folder of (real) checkpoints elsewhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "step_0000001.pt").write_text("someone else's")
    shutil.rmtree(folder)
    folder.symlink_to(elsewhere)
    assert catalog.newest_checkpoint(run_dir) is None
    with pytest.raises(UserError):
        catalog.read_checkpoint(folder / "step_0000001.pt")


def test_a_checkpoint_replaced_since_the_page_showed_it_downloads_the_newer_one(twin_runs):
    run_dir = twin_runs / "deml"
    folder = run_dir / "checkpoints"
    offered = catalog.newest_checkpoint(run_dir)
    assert catalog.read_offered_checkpoint(run_dir, offered) == (offered.read_bytes(), None)
    newer = folder / "step_0000009.pt"
    newer.write_bytes(b"a newer checkpoint")
    offered.unlink()  # the trainer keeps the newest two: the one offered is gone
    data, note = catalog.read_offered_checkpoint(run_dir, offered)
    assert data == b"a newer checkpoint" and offered.name in note and "step_0000009.pt" in note
    for p in folder.iterdir():  # none left: the page says so (a UserError), never a silent empty file
        p.unlink()
    with pytest.raises(UserError, match="cannot read"):
        catalog.read_offered_checkpoint(run_dir, offered)


# ------------------------------------------------------------------------------------------------
# file modes
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def umask():
    """Set the process's umask for the test; the old one is put back after it."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write(tmp_path / "plain.bin", lambda f: f.write(b"x"))
    run = RunDir.create(tmp_path / "run", {"steps": 1})
    run.write_json("splits.json", {"a": 1})
    run.update_config({"steps": 2})
    run.save_checkpoint({"step": 1}, 1)
    run.save_snapshot(1, {"concepts": np.zeros((2, 2), np.float32)})
    run.save_probe({"images": np.zeros((1, 2, 2, 1), np.uint8)})
    run.append_metrics([{"kind": "train", "step": 1}])
    run.truncate_metrics(1)
    run.append_evaluation({"kind": "evaluate"})
    with run.lock():
        pass
    files = [tmp_path / "plain.bin"] + [p for p in run.path.rglob("*") if p.is_file()]
    assert {p.relative_to(tmp_path).as_posix() for p in files} >= {
        "plain.bin", "run/config.json", "run/splits.json", "run/checkpoints/step_0000001.pt",
        "run/snapshots/step_0000001.npz", "run/snapshots/probe.npz", "run/metrics.jsonl",
        "run/evaluations.jsonl", f"run/{LOCK_NAME}"}
    assert {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
        {p.relative_to(tmp_path).as_posix(): oct(mode) for p in files}
    assert json.loads((run.path / "config.json").read_text())["config"] == {"steps": 2}


def test_the_live_view_polls_a_run_another_process_trains(twin_runs):
    registry = JobRegistry()
    assert not training.is_active(str(twin_runs / "deml"), registry)
    with RunDir(twin_runs / "deml").lock():
        assert training.is_active(str(twin_runs / "deml"), registry)
    assert not training.is_active(str(twin_runs / "deml"), registry)
    assert RunDir("runs/\0bad").locked_by() is None  # a path no file can have is nobody's


def test_a_lock_file_planted_as_a_symlink_is_never_followed(twin_runs, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (twin_runs / "deml" / LOCK_NAME).unlink(missing_ok=True)  # left (empty) by its training
    (twin_runs / "deml" / LOCK_NAME).symlink_to(victim)
    with pytest.raises(UserError, match="cannot open the lock file"):
        resume_run(str(twin_runs / "deml"))
    assert victim.read_text() == "keep me"
    assert RunDir(twin_runs / "deml").locked_by() is None
