"""A TrainingJob's training in a process of its own (TrainingJob(..., process=True), what the app uses).

Why a process: a training thread inside the Streamlit server shares the GIL with every page that
refreshes; a watched demo trained at 0.43x its unwatched speed (BENCHMARKS.md, "Watched in a real
browser"). In its own process the trainer only shares the cores.

The child runs `train_child`: it starts (or resumes) the run exactly as a thread job does, and
sends every record over a pipe as (kind, record), plus three of its own: "started" (what the views
read of the trainer: RunningTrainer), "history" (a resumed run's records and snapshots) and
"ended" / "failed". Pause and stop are a SharedControl both processes see. Children come from a
forkserver that has imported torch and the trainer already (warm_up), so a job starts in
milliseconds rather than the seconds a fresh interpreter needs to import torch.
"""
from __future__ import annotations

import multiprocessing as mp
import threading
import traceback
from dataclasses import dataclass
from multiprocessing import spawn
from typing import Any

import torch

from engine.config import TrainConfig
from engine.errors import UserError
from engine.train.job import end_state, kept_snapshot_steps
from engine.train.launch import resume_run, start_run
from engine.train.malloc import keep_freed_memory
from engine.train.trainer import Trainer


@dataclass
class RunningTrainer:
    """What the views read of a trainer that runs in another process (job.trainer in process mode):
    the fields of Trainer they use, kept current from the records the child sends."""

    cfg: TrainConfig
    probe: dict | None
    device: torch.device
    step: int
    seconds: float

    @classmethod
    def of(cls, trainer: Trainer) -> RunningTrainer:
        return cls(trainer.cfg, trainer.probe, trainer.device, trainer.step, trainer.seconds)


class SharedControl:
    """Control (engine.train.trainer) in shared memory: the app sets it, the child's loop reads it."""

    def __init__(self, ctx):
        self._flags = ctx.RawArray("b", 2)  # paused, stop

    @property
    def paused(self) -> bool:
        return bool(self._flags[0])

    @paused.setter
    def paused(self, value: bool) -> None:
        self._flags[0] = int(value)

    @property
    def stop(self) -> bool:
        return bool(self._flags[1])

    @stop.setter
    def stop(self, value: bool) -> None:
        self._flags[1] = int(value)


_ctx = None
# what the forkserver imports before its first child: this module (torch, the trainer) and torch._dynamo,
# which the trainer's first torch.optim.Adam() imports (1-2 s). Not imported here at module level: the
# app's server imports this module too, and needs none of torch._dynamo.
PRELOAD = [__name__, "torch._dynamo"]


def context():
    """forkserver where the platform has it (Linux; its server imports this module, hence torch and
    the trainer, once), else spawn."""
    global _ctx
    if _ctx is None:
        if "forkserver" in mp.get_all_start_methods():
            _ctx = mp.get_context("forkserver")
            _ctx.set_forkserver_preload(PRELOAD)
        else:
            _ctx = mp.get_context("spawn")
    return _ctx


_start_lock = threading.Lock()


def start_child(process) -> None:
    """process.start(), minus the parent's __main__. multiprocessing prepares a child by running the
    parent's main module again (as __mp_main__); in the app that is the page script Streamlit runs as
    __main__, so every training process would run app.py first. train_child is imported from this
    module, so the child needs no main module: its preparation data leave it out (patched only for
    this start, under a lock)."""
    with _start_lock:
        original = spawn.get_preparation_data

        def without_main(name):
            data = original(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        spawn.get_preparation_data = without_main
        try:
            process.start()
        finally:
            spawn.get_preparation_data = original


def warm_up(timeout: float = 120.0) -> bool:
    """Start the forkserver and wait until it can fork (it imports PRELOAD first: seconds), so the
    first job does not wait for it. Waits by starting a child that does nothing: the forkserver takes
    its first request only once its imports are done. True when a child came from it (False where
    the platform has no forkserver: each job is a fresh interpreter)."""
    ctx = context()
    if ctx.get_start_method() != "forkserver":
        return False
    child = ctx.Process(target=_nothing, name="forkserver-warm-up", daemon=True)
    start_child(child)
    child.join(timeout)
    return child.exitcode == 0


def _nothing() -> None:
    """warm_up's child."""


def train_child(setup: dict[str, Any], conn, control: SharedControl) -> None:
    """The child's whole life: setup holds cfg, out, plan, name, resume_from and threads as the job got them."""
    def send(kind: str, record: dict) -> None:
        conn.send((kind, record))

    run = None
    keep_freed_memory()  # this process only trains (engine.train.malloc)
    try:
        if setup["threads"]:
            torch.set_num_threads(setup["threads"])
        if setup["resume_from"]:
            trainer, run = resume_run(setup["resume_from"])
            kept = run.load_snapshots(kept_snapshot_steps(run.snapshot_steps()))[0]  # damaged ones left out
            send("history", {"records": run.read_metrics(), "snapshots": kept})
        else:
            trainer, run = start_run(setup["cfg"], setup["out"], plan=setup["plan"], name=setup["name"])
        send("started", {"trainer": RunningTrainer.of(trainer)})
        summary = trainer.run(run, control, send)
        send("ended", {"summary": summary, "state": end_state(control, trainer)})
    except UserError as e:
        _last_word(send, {"error": str(e)})
    except Exception as e:  # noqa: BLE001 - a bug or a full disk: the app says so and keeps running
        _last_word(send, {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    finally:
        if run is not None:
            run.release_lock()
        conn.close()


def _last_word(send, failure: dict) -> None:
    try:
        send("failed", failure)
    except OSError:  # the app is gone (its end of the pipe closed): nobody to tell
        pass
