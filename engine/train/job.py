"""A training run in a background thread (or, with process=True, in a process of its own that a
background thread listens to: engine.train.worker), controlled from other threads.

The app (or a test) starts a job, then polls it: `progress()`, `metrics(since)` and
`snapshots(since)` copy what the trainer has produced under a short lock, so a consumer never
blocks training and training never waits for a consumer. The job itself never touches any UI.

Memory stays bounded however long a run is: a job keeps at most MAX_SNAPSHOTS snapshots,
MAX_TRAIN_RECORDS train records, MAX_VAL_RECORDS validation records and MAX_ADAPTATION_RECORDS
adaptation curves, evenly spaced over the run (each time a list is full, every other one is
dropped and the spacing doubles), and always the newest; the run directory on disk keeps everything. The registry keeps at most
max_finished() finished jobs (the oldest finished are released; a view then reads the run from
its folder) and refuses a new job while max_jobs() are training.
"""
from __future__ import annotations

import heapq
import os
import sys
import threading
import time
import traceback
from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

import torch

from engine.config import TrainConfig
from engine.errors import UserError
from engine.records import DONE, KINDS, MetricRecord, RunState, Snapshot
from engine.train.launch import resume_run, start_run
from engine.train.trainer import Control, Trainer

if TYPE_CHECKING:
    from engine.train.worker import RunningTrainer

MAX_SNAPSHOTS = 200  # ~2.5 MB each at the demo's probe: a 1,000,000-step run kept 4 GB of them
MAX_TRAIN_RECORDS = 5_000  # one per step; charts need a few thousand points at most
MAX_VAL_RECORDS = 2_000
MAX_ADAPTATION_RECORDS = 200  # one adaptation curve per validation
DEFAULT_MAX_JOBS = 4  # jobs training at once per server ($CONCEPTSCAPE_MAX_JOBS)
DEFAULT_MAX_FINISHED = 8  # finished jobs kept in memory ($CONCEPTSCAPE_MAX_FINISHED_JOBS)

T = TypeVar("T")


class Thinned(Generic[T]):
    """At most `cap` items (cap >= 2) of an append-only stream, evenly spaced over it (every
    `stride`-th item, the stride doubling each time the list is full), plus always the newest.
    Each item carries its position in the stream (`seq`), so several streams merge in order."""

    def __init__(self, cap: int):
        self.cap, self.stride, self.count = max(2, cap), 1, 0
        self._kept: list[tuple[int, T]] = []
        self._newest: tuple[int, T] | None = None

    def add(self, item: T, seq: int | None = None) -> None:
        i = self.count
        self.count += 1
        entry = (i if seq is None else seq, item)
        if i % self.stride == 0:
            self._kept.append((i, entry))
            if len(self._kept) > self.cap:
                self.stride *= 2
                self._kept = [e for e in self._kept if e[0] % self.stride == 0]
        self._newest = (i, entry)

    def entries(self) -> list[tuple[int, T]]:
        """(seq, item) pairs, oldest first."""
        out = [e for _, e in self._kept]
        if self._newest is not None and (not self._kept or self._kept[-1][0] != self._newest[0]):
            out.append(self._newest[1])
        return out

    def items(self) -> list[T]:
        return [item for _, item in self.entries()]

    def __len__(self) -> int:
        return len(self._kept) + (self._newest is not None and (not self._kept or self._kept[-1][0] != self._newest[0]))


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value >= 1 else default


def kept_snapshot_steps(steps: list[int]) -> list[int]:
    """The steps of a run's saved snapshots a resumed job keeps (thinned as a job keeps them)."""
    kept: Thinned[int] = Thinned(MAX_SNAPSHOTS)
    for step in steps:
        kept.add(step)
    return kept.items()


def end_state(control, trainer: Trainer) -> RunState:
    """How a training loop that returned ended: stopped before its last step on request, else finished."""
    return RunState.STOPPED if control.stop and trainer.step < trainer.cfg.steps else RunState.FINISHED


OS_THREAD_NAME = b"cs-train"  # what top and bench live --browser see of a training thread


def name_os_thread(name: bytes) -> None:
    """Name the calling thread for the OS (Linux; Python 3.11 names only its own threading objects),
    so per-thread CPU time can be told apart (engine/bench/watched.py). Elsewhere, nothing."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(15, name[:15], 0, 0, 0)  # 15: PR_SET_NAME
    except (OSError, AttributeError):
        pass


def max_jobs() -> int:
    """How many jobs may train at once in this server: $CONCEPTSCAPE_MAX_JOBS, else 4."""
    return _env_int("CONCEPTSCAPE_MAX_JOBS", DEFAULT_MAX_JOBS)


def max_finished() -> int:
    """How many finished jobs stay in memory: $CONCEPTSCAPE_MAX_FINISHED_JOBS, else 8."""
    return _env_int("CONCEPTSCAPE_MAX_FINISHED_JOBS", DEFAULT_MAX_FINISHED)


SWITCH_INTERVAL_S = 0.001  # the GIL hand-over interval while jobs train in this process (Python's default: 5 ms)


def share_gil() -> None:
    """Let a training thread get the GIL back quickly from the threads beside it (a page refreshing
    its figures in the same server). The trainer lets the GIL go in every torch op; a thread running
    Python meanwhile keeps it up to the switch interval, so with the default 5 ms each small op could
    wait that long. Measured on 2 shared cores (paired windows, a small conv net stepping beside a busy
    Python thread): 0.52 of its alone speed at 5 ms, 0.67 at 1 ms. Process-wide; only ever lowered."""
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))


PACE_WINDOW_S = 30.0  # the time-left estimate follows the last half minute of training
PACE_MIN_S = 3.0  # ... once it spans this much; before that, the pace since the start


class TrainingJob:
    def __init__(self, cfg: TrainConfig | None = None, out: str | None = None, resume_from: str | None = None,
                 threads: int | None = None, plan=None, name: str | None = None, process: bool = False):
        if (cfg is None) == (resume_from is None):
            raise ValueError("give either cfg (with out) for a new run, or resume_from")
        if cfg is not None and not out:
            raise ValueError("a new run needs out, the run directory to write")
        self._cfg, self._out, self._resume_from = cfg, out, resume_from
        self.threads = threads  # torch's intra-op threads for this job's thread (None: torch's default)
        self._plan, self._name = plan, name  # the data's plan (splits.json) and the run's name (name.json)
        self.process = process  # train in a child process (engine.train.worker) instead of this process's thread
        if process:
            from engine.train import worker
            self._control = worker.SharedControl(worker.context())
        else:
            self._control = Control()
        self._pace: deque[tuple[float, int]] = deque()  # (training seconds, step) seen by progress(), for the ETA
        self._lock = threading.Lock()
        self._seq = 0  # position of the next train/val record, so the two kinds merge in order
        self._train: Thinned[MetricRecord] = Thinned(MAX_TRAIN_RECORDS)
        self._val: Thinned[MetricRecord] = Thinned(MAX_VAL_RECORDS)
        self._adaptation: Thinned[MetricRecord] = Thinned(MAX_ADAPTATION_RECORDS)
        self._snapshots: Thinned[Snapshot] = Thinned(MAX_SNAPSHOTS)
        self.finished_at: float | None = None  # time.monotonic() when the job ended
        self.warnings: list[str] = []
        self.trainer: Trainer | RunningTrainer | None = None  # RunningTrainer in process mode
        self.run_dir: str | None = resume_from or out
        self.summary: dict | None = None
        self.error: str | None = None
        self._state = RunState.STARTING
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._listen if process else self._main, name=f"train:{self.run_dir}",
                                        daemon=True)
        self._child = None  # process mode: the training process, once started

    # --- control (any thread) ----------------------------------------------------------------
    def start(self) -> TrainingJob:
        share_gil()
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
        """The records kept (kind "train", "val" or "adaptation", in order; see the module doc) from
        position `since` of that list on."""
        with self._lock:
            merged = heapq.merge(self._train.entries(), self._val.entries(), self._adaptation.entries(),
                                 key=lambda e: e[0])
            return [record for _, record in merged][since:]

    def snapshots(self, since: int = 0) -> list[Snapshot]:
        """The snapshots kept (module doc), oldest first, from position `since` of that list on."""
        with self._lock:
            return self._snapshots.items()[since:]

    def _eta(self, seconds: float, step: int, total: int) -> float | None:
        """Seconds left at the pace of the last PACE_WINDOW_S of training (the first steps are slow:
        warm-up, early snapshots; and the pace changes when other jobs start or stop beside this one),
        else at the pace since the start."""
        with self._lock:
            pace = self._pace
            if not pace or step < pace[-1][1]:  # first call, or a resume from an earlier checkpoint
                pace.clear()
            pace.append((seconds, step))
            while len(pace) > 2 and seconds - pace[1][0] >= PACE_WINDOW_S:
                pace.popleft()
            s0, k0 = pace[0]
        if step > k0 and seconds - s0 >= PACE_MIN_S:
            return (seconds - s0) / (step - k0) * (total - step)
        return seconds / step * (total - step) if step else None

    def progress(self) -> dict:
        t = self.trainer
        step = t.step if t else 0
        total = t.cfg.steps if t else (self._cfg.steps if self._cfg else 0)
        seconds = t.seconds if t else 0.0
        eta = self._eta(seconds, step, total)
        return {"state": self.state, "step": step, "steps": total, "seconds": seconds, "eta_seconds": eta,
                "fraction": step / total if total else 0.0, "error": self.error}

    # --- the thread --------------------------------------------------------------------------
    def _on_event(self, kind: str, record: dict) -> None:
        with self._lock:
            self._keep(kind, record)

    def _keep(self, kind: str, record: dict) -> None:
        if kind in KINDS:
            {"train": self._train, "val": self._val, "adaptation": self._adaptation}[kind].add(record, self._seq)
            self._seq += 1
        elif kind == "snapshot":
            self._snapshots.add(record)
        elif kind == "warning" and len(self.warnings) < 100:
            self.warnings.append(record["message"])

    def _history(self, records: list[MetricRecord], snapshots: list[Snapshot]) -> None:
        """What a resumed run already recorded (thinned), so views show the whole history."""
        kept: Thinned[Snapshot] = Thinned(MAX_SNAPSHOTS)
        for snap in snapshots:
            kept.add(snap)
        with self._lock:
            for record in records:
                self._keep(record["kind"], record)
            self._snapshots = kept

    def _main(self) -> None:
        run = None
        name_os_thread(OS_THREAD_NAME)
        if self.threads:  # per calling thread: jobs sharing the cores do not oversubscribe them
            torch.set_num_threads(self.threads)
        try:
            try:
                if self._resume_from:
                    self.trainer, run = resume_run(self._resume_from)
                    self._history(run.read_metrics(), run.load_snapshots(kept_snapshot_steps(run.snapshot_steps()))[0])
                else:
                    self.trainer, run = start_run(self._cfg, self._out, plan=self._plan, name=self._name)
                self._state = RunState.RUNNING
                self.summary = self.trainer.run(run, self._control, self._on_event)
            finally:  # Trainer.run lets the run's lock go; this covers a failure before it (and
                if run is not None:  # comes before the job is seen as done)
                    run.release_lock()
            self._state = end_state(self._control, self.trainer)
        except UserError as e:
            self.error, self._state = str(e), RunState.FAILED
        except Exception as e:  # a bug or a full disk: the app must keep running and say so
            self.error, self._state = f"{type(e).__name__}: {e}", RunState.FAILED
            self.traceback = traceback.format_exc()
        finally:
            self.finished_at = time.monotonic()

    # --- process mode: the thread listens to the child ----------------------------------------------
    def _listen(self) -> None:
        """Start the child (engine.train.worker.train_child) and turn what it sends into this job's
        records and state until it exits; a child that dies without a word fails the job, saying so."""
        from engine.train import worker

        ctx = worker.context()
        child = None
        try:
            receiving, sending = ctx.Pipe(duplex=False)
            setup = dict(cfg=self._cfg, out=self._out, plan=self._plan, name=self._name,
                         resume_from=self._resume_from, threads=self.threads)
            child = self._child = ctx.Process(target=worker.train_child, args=(setup, sending, self._control),
                                              name=f"train:{self.run_dir}", daemon=True)
            worker.start_child(child)
            sending.close()  # the child holds the only sending end now: its exit is our EOF
            while True:
                try:
                    kind, record = receiving.recv()
                except EOFError:
                    break
                self._from_child(kind, record)
        except Exception as e:  # noqa: BLE001 - e.g. no process could start: the app says so
            self.error, self._state = f"the training process could not start: {type(e).__name__}: {e}", RunState.FAILED
        finally:
            if child is not None and child.pid is not None:
                child.join()
                if not self.done:
                    self.error = f"the training process ended unexpectedly (exit code {child.exitcode})"
                    self._state = RunState.FAILED
            self.finished_at = time.monotonic()

    def _from_child(self, kind: str, record: dict) -> None:
        if kind == "started":
            self.trainer = record["trainer"]
            self._state = RunState.RUNNING
        elif kind == "history":
            self._history(record["records"], record["snapshots"])
        elif kind == "ended":
            self.summary, self._state = record["summary"], record["state"]
        elif kind == "failed":
            self.error, self.traceback = record["error"], record.get("traceback")
            self._state = RunState.FAILED
        else:
            if kind == "train" and self.trainer is not None:
                self.trainer.step, self.trainer.seconds = int(record["step"]), float(record["seconds"])
            self._on_event(kind, record)


class JobRegistry:
    """Process-wide jobs by run directory: a browser refresh or another page finds its job again.
    At most max_jobs() train at once; at most max_finished() finished ones are kept (module doc)."""

    def __init__(self):
        self._jobs: dict[str, TrainingJob] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(run_dir) -> str:
        """One key per folder however it is spelled: runs/a, runs/a/, ./runs/a, a Path, absolute."""
        return os.path.realpath(os.fspath(run_dir))

    def _release_finished(self) -> None:
        """Forget the oldest finished jobs beyond max_finished() (under the lock)."""
        finished = sorted((j.finished_at or 0.0, k) for k, j in self._jobs.items() if j.done)
        for _, key in finished[: max(0, len(finished) - max_finished())]:
            del self._jobs[key]

    def _check_room(self, jobs: int) -> None:
        running = sum(not j.done for j in self._jobs.values())
        if running + jobs > max_jobs():
            what = "a new job" if jobs == 1 else f"{jobs} new jobs"
            raise UserError(f"{running} training job{'s' * (running != 1)} already running on this server, the most "
                            f"it runs at once is {max_jobs()} (CONCEPTSCAPE_MAX_JOBS); {what} cannot start now: "
                            "wait for one to finish, or stop one")

    def check_room(self, jobs: int = 1) -> None:
        """Raise UserError unless `jobs` more jobs may start now (e.g. a run and its twin)."""
        with self._lock:
            self._check_room(jobs)

    def start(self, job: TrainingJob) -> TrainingJob:
        key = self._key(job.run_dir)
        with self._lock:
            current = self._jobs.get(key)
            if current is not None and not current.done:
                raise UserError(f"a job is already running in {job.run_dir}")
            self._check_room(1)
            self._jobs[key] = job
            self._release_finished()
        return job.start()

    def get(self, run_dir: str | None) -> TrainingJob | None:
        with self._lock:
            self._release_finished()
            return self._jobs.get(self._key(run_dir)) if run_dir else None

    def active(self) -> list[TrainingJob]:
        with self._lock:
            return [j for j in self._jobs.values() if not j.done]

    def __len__(self) -> int:
        """Jobs held: those training and the finished ones kept."""
        with self._lock:
            self._release_finished()
            return len(self._jobs)


REGISTRY = JobRegistry()  # the process's jobs: shared by every browser session and page
