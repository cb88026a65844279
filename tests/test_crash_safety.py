"""Crash safety of runs (issue 6, "Runs and checkpoints"): a real training process killed with
SIGKILL resumes exactly; a full disk or an unwritable run folder is a clear error that stops the
job cleanly while the app keeps running; leftovers of a crash (a cut-off metrics line, half-written
temporary files) confuse neither resume nor the catalog.

Atomic writes, damaged-checkpoint fallback and pickle refusal are covered in test_runs.py and
test_trainer.py and are not repeated here."""
from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import engine.runs
from engine.cli import main as cli_main
from engine.config import TrainConfig, preset
from engine.runs import RunDir
from engine.services import catalog
from engine.train.job import TrainingJob
from engine.train.launch import resume_run, start_run
from engine.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = "glyphs:classes=60,drawings=8,seed=1"
TRAIN_ARGS = ["--preset", "smoke", "--dataset", TINY_DATA, "--width", "8", "--concept-dim", "16",
              "--meta-batch", "2", "--ext-batch", "8", "--val-episodes", "8", "--val-every", "5",
              "--snapshot-every", "5", "--checkpoint-every", "5", "--steps", "40"]


def tiny(**overrides) -> TrainConfig:
    base = dict(steps=12, val_every=5, val_episodes=8, snapshot_every=5, checkpoint_every=5, width=8,
                concept_dim=16, meta_batch=2, ext_batch=8, dataset=TINY_DATA)
    return preset("smoke").with_overrides(**{**base, **overrides})


def enospc(*_, **__):
    raise OSError(errno.ENOSPC, "No space left on device")


def assert_models_close(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0), f"{k} differs"


def checkpoint_steps(run_dir: Path) -> list[int]:
    return [int(p.stem[5:]) for p in RunDir(run_dir).checkpoints()]


def assert_consistent(run_dir: Path, final_steps: int | None = None) -> None:
    """Everything in the run directory reads back: config, metrics lines, checkpoints, snapshots."""
    run = RunDir(run_dir)
    TrainConfig.from_dict(run.config())
    json.loads((run_dir / "splits.json").read_text())
    for path in run.checkpoints():
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["step"] == int(path.stem[5:]) and state["format_version"] == engine.runs.FORMAT_VERSION
    run.load_probe()
    for s in run.snapshot_steps():
        assert int(run.load_snapshot(s)["step"]) == s
    if final_steps is not None:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]  # every line whole once the run is finished
        assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, final_steps + 1))
        assert not list(run_dir.rglob("*.tmp")), "temporary files left behind"


# ------------------------------------------------------------------------------ SIGKILL


def _train(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "engine", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill(proc: subprocess.Popen) -> tuple[bool, str]:
    """SIGKILL it; (False, stderr) if it had already ended (then it must have ended well)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == -signal.SIGKILL:
        return True, err
    assert proc.returncode == 0, err
    return False, err


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, newer_than: int = -1, timeout=60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if any(s > newer_than for s in checkpoint_steps(run_dir)):
            return
        time.sleep(0.001)


def _resumed_at(err: str) -> int | None:
    m = re.search(r"resuming .* at step (\d+) of", err)
    return int(m.group(1)) if m else None


@pytest.mark.slow
def test_sigkill_at_any_moment_resumes_exactly(tmp_path):
    run_dir = tmp_path / "run"
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    # when to kill each process: as soon as its first (new) checkpoint is on disk, a moment after
    # a new checkpoint (mid-training or mid-write), and after a random delay from its start
    # (importing, loading data, resuming, training or writing)
    moments = ["first checkpoint", "just after a checkpoint", "random delay", "random delay"]
    proc = _train(*TRAIN_ARGS, "--out", str(run_dir))
    kills = []
    for moment in moments:
        before = max(checkpoint_steps(run_dir), default=-1)
        if moment == "first checkpoint":
            _wait_for_checkpoint(proc, run_dir, before)
        elif moment == "just after a checkpoint":
            _wait_for_checkpoint(proc, run_dir, before)
            time.sleep(rng.uniform(0.0, 0.05))
        else:
            time.sleep(rng.uniform(0.0, 4.0))
        killed, err = _kill(proc)
        where = f"(seed {seed}, kills {kills}, then {moment})"
        if not killed:
            break
        if before >= 0 and _resumed_at(err) is not None:
            assert _resumed_at(err) == before, f"{where}: resumed at {_resumed_at(err)}, newest was {before}"
        newest = max(checkpoint_steps(run_dir), default=None)
        assert newest is not None, f"{where}: no checkpoint after the kill"
        kills.append((moment, newest))
        assert_consistent(run_dir)
        recorded = [r["step"] for r in RunDir(run_dir).read_metrics() if r.get("kind") == "train"]
        assert recorded == list(range(1, len(recorded) + 1)), f"{where}: {recorded}"
        proc = _train("--resume", str(run_dir))
    else:
        newest = max(checkpoint_steps(run_dir))
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        # lost at most the steps since the newest checkpoint present when it was killed
        assert _resumed_at(err) == newest, f"resumed at {_resumed_at(err)}, newest was {newest}"
        assert json.loads(out.strip().splitlines()[-1])["steps"] == 40
    assert kills, "the run ended before it could be killed"
    assert_consistent(run_dir, final_steps=40)
    assert checkpoint_steps(run_dir)[-1] == 40

    # the same run without interruptions, from the same config.json
    cfg = TrainConfig.from_dict(RunDir(run_dir).config())
    straight = Trainer(cfg)
    straight.run()
    final = torch.load(RunDir(run_dir).checkpoints()[-1], map_location="cpu", weights_only=True)
    assert_models_close(straight.model.state_dict(), final["model"])


def test_sigkill_before_the_first_checkpoint_can_still_be_resumed(tmp_path):
    """Killed after the run directory exists but before any checkpoint: resume starts it over."""
    run_dir = tmp_path / "run"
    proc = _train(*TRAIN_ARGS[:-1], "100000", "--checkpoint-every", "100000", "--out", str(run_dir))
    end = time.monotonic() + 60
    while time.monotonic() < end and proc.poll() is None and not (run_dir / "snapshots" / "probe.npz").exists():
        time.sleep(0.002)
    assert _kill(proc)[0]
    assert not checkpoint_steps(run_dir) and (run_dir / "config.json").is_file()
    RunDir(run_dir).update_config({**RunDir(run_dir).config(), "steps": 12, "checkpoint_every": 5})
    trainer, run = resume_run(str(run_dir))
    assert trainer.step == 0
    assert run.read_metrics() == [] and run.snapshot_steps() in ([], [0])
    trainer.run(run)
    assert_consistent(run_dir, final_steps=12)
    straight = Trainer(TrainConfig.from_dict(run.config()))
    straight.run()
    assert_models_close(straight.model.state_dict(), trainer.model.state_dict())


# ------------------------------------------------------------------------------ disk full, unwritable


def _writes_despite_chmod(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


def test_unwritable_run_folder_is_one_clear_cli_error(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if _writes_despite_chmod(locked):  # root: chmod does not stop it, so the disk "fills up"
            real_os = os

            class FullDisk:
                def __getattr__(self, name):
                    return getattr(real_os, name)

                replace = staticmethod(enospc)

            monkeypatch.setattr(engine.runs, "os", FullDisk())
            problem = "No space left on device"
        else:
            problem = "Permission denied"
        code = cli_main(["train", *TRAIN_ARGS[:-1], "6", "--out", str(locked / "run")])
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert problem in errors[0] and str(locked / "run") in errors[0], errors[0]
    assert "Traceback" not in err
    assert not list(locked.rglob("*.tmp"))


def disk_full_at_second_checkpoint(monkeypatch):
    """The run's 2nd checkpoint write fails with ENOSPC; the others are written as usual.
    Returns (the steps save_checkpoint was called with, the real save_checkpoint)."""
    calls = []
    real = RunDir.save_checkpoint

    def save(self, state, step):
        calls.append(step)
        if len(calls) == 2:
            enospc()
        return real(self, state, step)

    monkeypatch.setattr(RunDir, "save_checkpoint", save)
    return calls, real


def test_disk_full_mid_run_is_one_clear_cli_error(tmp_path, monkeypatch, capsys):
    disk_full_at_second_checkpoint(monkeypatch)
    code = cli_main(["train", *TRAIN_ARGS[:-1], "12", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], err
    assert "Traceback" not in err
    assert checkpoint_steps(tmp_path / "run") == [5]


def test_disk_full_mid_job_fails_it_cleanly_and_resume_works(tmp_path, monkeypatch):
    cfg = tiny(steps=20)
    calls, real = disk_full_at_second_checkpoint(monkeypatch)
    run_dir = tmp_path / "run"
    job = TrainingJob(cfg, out=str(run_dir)).start()
    assert job.join(timeout=120), "the job thread did not exit"
    assert job.state == "failed" and job.done
    assert "No space left on device" in job.error
    assert "Traceback" not in job.error and "\n" not in job.error
    assert job.progress()["error"] == job.error
    assert calls == [5, 10]
    # the previous checkpoint is intact and loads; nothing half-written is left
    assert checkpoint_steps(run_dir) == [5]
    state, warnings = RunDir(run_dir).load_checkpoint()
    assert state["step"] == 5 and warnings == []
    assert not list(run_dir.rglob("*.tmp"))
    # the catalog lists it as resumable; the "app" (this thread) goes on and resumes it later
    [summary] = catalog.list_runs(tmp_path)
    assert summary.checkpoint.endswith("step_0000005.pt") and summary.state == "stopped"
    monkeypatch.setattr(RunDir, "save_checkpoint", real)  # space freed
    again = TrainingJob(resume_from=str(run_dir)).start()
    assert again.join(timeout=120)
    assert again.state == "finished", again.error
    assert again.trainer.step == 20
    assert_consistent(run_dir, final_steps=20)
    straight = Trainer(cfg)
    straight.run()
    assert_models_close(straight.model.state_dict(), again.trainer.model.state_dict())


# ------------------------------------------------------------------------------ crash leftovers


def test_cut_off_metrics_and_temporary_files_confuse_neither_resume_nor_catalog(tmp_path):
    cfg = tiny(steps=12)
    root = tmp_path / "runs"
    run_dir = root / "run"
    trainer, run = start_run(cfg, run_dir)

    class Crash(Exception):
        pass

    def crash_after_checkpoint(kind, rec):
        if kind == "checkpoint" and rec["step"] == 10:
            raise Crash

    with pytest.raises(Crash):
        trainer.run(run, None, crash_after_checkpoint)
    assert checkpoint_steps(run_dir) == [5, 10]
    # what a SIGKILL mid-write leaves: a step recorded after the checkpoint, a cut-off line, and
    # half-written temporary files of a checkpoint, a snapshot and the metrics rewrite
    good = (run_dir / "checkpoints" / "step_0000010.pt").read_bytes()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 11, "meta_loss": 1.0}) + "\n")
        f.write('{"kind": "train", "step": 12, "meta_lo')
    (run_dir / "checkpoints" / ".step_0000010.pt.xyz.tmp").write_bytes(good[: len(good) // 2])
    (run_dir / "checkpoints" / ".step_0000015.pt.abc.tmp").write_bytes(good[: len(good) // 3])
    (run_dir / "snapshots" / ".step_0000015.npz.xyz.tmp").write_bytes(b"PK\x03\x04")
    (run_dir / ".metrics.jsonl.xyz.tmp").write_text('{"kind": "tr')
    (root / ".other.xyz.tmp").write_text("")

    [summary] = catalog.list_runs(root)
    assert summary.name == "run" and summary.readable and not summary.errors, summary.errors
    assert summary.state == "stopped" and summary.checkpoint.endswith("step_0000010.pt")
    assert summary.steps_done == 11
    assert catalog.newest_checkpoint(run_dir).name == "step_0000010.pt"

    resumed, run = resume_run(str(run_dir))
    assert resumed.step == 10 and not resumed.warnings
    assert [r["step"] for r in run.read_metrics() if r["kind"] == "train"] == list(range(1, 11))
    resumed.run(run)
    for tmp in ["checkpoints/.step_0000010.pt.xyz.tmp", "checkpoints/.step_0000015.pt.abc.tmp",
                "snapshots/.step_0000015.npz.xyz.tmp", ".metrics.jsonl.xyz.tmp"]:
        (run_dir / tmp).unlink()  # stale leftovers are ignored, not necessarily removed
    assert_consistent(run_dir, final_steps=12)
    assert 15 not in run.snapshot_steps()
    [summary] = catalog.list_runs(root)
    assert summary.state == "finished" and summary.steps_done == 12 and not summary.errors
    straight = Trainer(cfg)
    straight.run()
    assert_models_close(straight.model.state_dict(), resumed.model.state_dict())
    assert np.isfinite([r["meta_loss"] for r in run.read_metrics() if r["kind"] == "train"]).all()
