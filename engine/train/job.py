"""A training run in a background thread, controlled from other threads.

The app (or a test) starts a job, then polls it: `progress()`, `metrics(since)` and
`snapshots(since)` copy what the trainer has produced under a short lock, so a consumer never
blocks training and training never waits for a consumer. The job itself never touches any UI.
"""
from __future__ import annotations

import os
import threading
import time
import traceback

from engine.config import TrainConfig
from engine.errors import UserError
from engine.records import DONE, KINDS, MetricRecord, RunState, Snapshot
from engine.train.trainer import Control, Trainer, resume_run, start_run


class TrainingJob:
    def __init__(self, cfg: TrainConfig | None = None, out: str | None = None, resume_from: str | None = None):
        if (cfg is None) == (resume_from is None):
            raise ValueError("give either cfg (with out) for a new run, or resume_from")
        if cfg is not None and not out:
            raise ValueError("a new run needs out, the run directory to write")
        self._cfg, self._out, self._resume_from = cfg, out, resume_from
        self._control = Control()
        self._lock = threading.Lock()
        self._metrics: list[MetricRecord] = []
        self._snapshots: list[Snapshot] = []
        self.warnings: list[str] = []
        self.trainer: Trainer | None = None
        self.run_dir: str | None = resume_from or out
        self.summary: dict | None = None
        self.error: str | None = None
        self._state = RunState.STARTING
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._main, name=f"train:{self.run_dir}", daemon=True)

    # --- control (any thread) ----------------------------------------------------------------
    def start(self) -> TrainingJob:
        self._thread.start()
        return self

    def pause(self) -> None:
        self._control.paused = True

    def resume(self) -> None:
        self._control.paused = False

    def stop(self) -> None:
        """Ask the loop to stop after the current step; it checkpoints so the run can continue later."""
        self._control.stop = True
        self._control.paused = False

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- reading (any thread) ----------------------------------------------------------------
    @property
    def state(self) -> RunState:
        if self._state == RunState.RUNNING:
            if self._control.stop:
                return RunState.STOPPING
            if self._control.paused:
                return RunState.PAUSED
        return self._state

    @property
    def done(self) -> bool:
        return self._state in DONE

    def metrics(self, since: int = 0) -> list[MetricRecord]:
        """Records (kind "train" or "val") from position `since` on."""
        with self._lock:
            return self._metrics[since:]

    def snapshots(self, since: int = 0) -> list[Snapshot]:
        with self._lock:
            return self._snapshots[since:]

    def progress(self) -> dict:
        t = self.trainer
        step = t.step if t else 0
        total = t.cfg.steps if t else (self._cfg.steps if self._cfg else 0)
        seconds = t.seconds if t else 0.0
        eta = seconds / step * (total - step) if step else None
        return {"state": self.state, "step": step, "steps": total, "seconds": seconds, "eta_seconds": eta,
                "fraction": step / total if total else 0.0, "error": self.error}

    # --- the thread --------------------------------------------------------------------------
    def _on_event(self, kind: str, record: dict) -> None:
        with self._lock:
            if kind in KINDS:
                self._metrics.append(record)
            elif kind == "snapshot":
                self._snapshots.append(record)
            elif kind == "warning":
                self.warnings.append(record["message"])

    def _main(self) -> None:
        try:
            if self._resume_from:
                self.trainer, run = resume_run(self._resume_from)
                with self._lock:  # what the run already recorded, so views show the whole history
                    self._metrics = run.read_metrics()
                    self._snapshots = run.load_snapshots()[0]  # damaged ones left out
            else:
                self.trainer, run = start_run(self._cfg, self._out)
            self._state = RunState.RUNNING
            self.summary = self.trainer.run(run, self._control, self._on_event)
            self._state = RunState.STOPPED if self._control.stop and self.trainer.step < self.trainer.cfg.steps \
                else RunState.FINISHED
        except UserError as e:
            self.error, self._state = str(e), RunState.FAILED
        except Exception as e:  # a bug or a full disk: the app must keep running and say so
            self.error, self._state = f"{type(e).__name__}: {e}", RunState.FAILED
            self.traceback = traceback.format_exc()


class JobRegistry:
    """Process-wide jobs by run directory: a browser refresh or another page finds its job again."""

    def __init__(self):
        self._jobs: dict[str, TrainingJob] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(run_dir) -> str:
        """One key per folder however it is spelled: runs/a, runs/a/, ./runs/a, a Path, absolute."""
        return os.path.realpath(os.fspath(run_dir))

    def start(self, job: TrainingJob) -> TrainingJob:
        key = self._key(job.run_dir)
        with self._lock:
            current = self._jobs.get(key)
            if current is not None and not current.done:
                raise UserError(f"a job is already running in {job.run_dir}")
            self._jobs[key] = job
        return job.start()

    def get(self, run_dir: str | None) -> TrainingJob | None:
        with self._lock:
            return self._jobs.get(self._key(run_dir)) if run_dir else None

    def active(self) -> list[TrainingJob]:
        with self._lock:
            return [j for j in self._jobs.values() if not j.done]


REGISTRY = JobRegistry()  # the process's jobs: shared by every browser session and page
