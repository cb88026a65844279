"""What a run records, typed once: its state, its metric records, its snapshots and probe.

  RunState        every state a run is shown in (a str-Enum: compares equal to its plain string,
                  and writes as one in JSON), with the groups the app asks about (ACTIVE, DONE...)
  TrainRecord     one training step, as the trainer writes it to metrics.jsonl (kind "train")
  ValRecord       one validation (kind "val")
  read_metric_records   the one reader: raw lines or dicts in, only well-formed records out
  train_records / val_records   the one filter per kind
  Snapshot, Probe what Trainer.snapshot() and Trainer._probe() make (snapshots/*.npz on disk)

The run-directory format is unchanged: records stay plain dicts (TypedDicts are dicts) and are
written exactly as before. Nothing here imports torch or streamlit.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from enum import Enum
from typing import Literal, TypedDict, Union

import numpy as np


class RunState(str, Enum):
    """A run's state. A TrainingJob goes STARTING -> RUNNING (PAUSED / STOPPING while asked to)
    -> FINISHED, STOPPED or FAILED; the catalog and the live view add the states of runs without
    a job in this process (ELSEWHERE: trained by another process, which holds the run's lock)."""

    STARTING = "starting"  # a job is reading its data and building the model
    RUNNING = "running"  # a job trains (the catalog: any job of this process not done yet)
    PAUSED = "paused"  # a running job asked to pause; it waits between steps
    STOPPING = "stopping"  # a running job asked to stop; it checkpoints after the current step
    FINISHED = "finished"  # trained all its steps (and, on disk, has a checkpoint)
    STOPPED = "stopped"  # ended before its last step; continuable from its checkpoint
    FAILED = "failed"  # a job ended on an error (TrainingJob.error says which)
    SAVED = "saved"  # the live view: a run read from its directory, no job in this process
    ELSEWHERE = "training (another process)"  # no job here, but another process holds the run's lock
    UNREADABLE = "unreadable"  # the catalog: a run directory that could not be read
    NONE = "none"  # the live view: no run (none chosen, or the folder is not a run)

    # the plain string in f-strings and str(), as before the enum (Python 3.11+ would print the name)
    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def active(self) -> bool:
        """A job is (about to be) training: see ACTIVE."""
        return self in ACTIVE

    @property
    def done(self) -> bool:
        """A job has ended: see DONE."""
        return self in DONE


JOB_STATES = (RunState.STARTING, RunState.RUNNING, RunState.PAUSED, RunState.STOPPING,
              RunState.FINISHED, RunState.STOPPED, RunState.FAILED)  # what TrainingJob.state can be
ACTIVE = frozenset({RunState.STARTING, RunState.RUNNING, RunState.PAUSED, RunState.STOPPING})  # training
DONE = frozenset({RunState.FINISHED, RunState.STOPPED, RunState.FAILED})  # a job that has ended
CATALOG_STATES = (RunState.RUNNING, RunState.ELSEWHERE, RunState.FINISHED, RunState.STOPPED,
                  RunState.UNREADABLE)  # RunSummary.state
PAUSABLE = frozenset({RunState.STARTING, RunState.RUNNING})  # a Pause request applies
CONTINUABLE = frozenset({RunState.STOPPED, RunState.SAVED})  # may continue from a checkpoint if unfinished


# ------------------------------------------------------------------------------------------------
# Metric records (metrics.jsonl)
# ------------------------------------------------------------------------------------------------
class TrainRecord(TypedDict, total=False):
    """One training step (Trainer.train_step). kind and step are always there; the disc_* values
    are None without an external set."""

    kind: Literal["train"]
    step: int  # the step just taken, from 1
    meta_loss: float | None  # the query loss over the meta-batch
    meta_acc: float | None  # the query accuracy over the meta-batch
    disc_loss: float | None  # the concept discriminator's loss on the external batch
    disc_acc: float | None  # its accuracy there
    lr: float  # the learning rate of the step
    step_seconds: float  # how long the step took
    images_per_s: float  # images through the generator per second (all processes)
    seconds: float  # training time so far


class ValRecord(TypedDict, total=False):
    """One validation (Trainer.validate). kind and step are always there."""

    kind: Literal["val"]
    step: int  # the training step validated after
    val_acc: float  # mean accuracy over the validation episodes
    val_ci95: float  # its 95% confidence half-width
    episodes: int  # how many episodes
    seconds: float  # training time so far


MetricRecord = Union[TrainRecord, ValRecord]

KINDS = ("train", "val")
_NUMBER = (int, float, np.integer, np.floating)
# fields with a known type: a record whose value is not of it (None allowed) is malformed
_NUMERIC = {"meta_loss", "meta_acc", "disc_loss", "disc_acc", "lr", "step_seconds", "images_per_s", "seconds",
            "val_acc", "val_ci95", "episodes"}


def _number(v) -> bool:
    return isinstance(v, _NUMBER) and not isinstance(v, (bool, np.bool_))


def well_formed(record) -> bool:
    """A dict with kind "train" or "val", a finite whole-number step, and numbers (or None) in the
    known numeric fields."""
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        return False
    step = record.get("step")
    if type(step) is not int and (not _number(step) or not math.isfinite(step) or step != int(step)):
        return False
    for k, v in record.items():  # the common case (plain floats) first: this runs on every refresh
        if k in _NUMERIC and v is not None and type(v) is not float and not _number(v):
            return False
    return True


def read_metric_records(raw: Iterable[str | bytes | dict]) -> list[MetricRecord]:
    """The well-formed records among `raw` (JSON lines, or dicts already parsed), in order. A line
    that is not JSON (cut short by a crash), not an object, or not a well-formed record is skipped,
    never raised. A whole-number float step (2.0) becomes an int."""
    out: list[MetricRecord] = []
    for item in raw:
        if isinstance(item, (str, bytes)):
            try:
                item = json.loads(item)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
        if not well_formed(item):
            continue
        if not isinstance(item["step"], int):
            item = {**item, "step": int(item["step"])}
        out.append(item)
    return out


def train_records(metrics: Iterable[dict]) -> list[TrainRecord]:
    """The well-formed kind "train" records, in order."""
    return [m for m in metrics if isinstance(m, dict) and m.get("kind") == "train" and well_formed(m)]


def val_records(metrics: Iterable[dict]) -> list[ValRecord]:
    """The well-formed kind "val" records, in order."""
    return [m for m in metrics if isinstance(m, dict) and m.get("kind") == "val" and well_formed(m)]


# ------------------------------------------------------------------------------------------------
# Snapshots and the probe (snapshots/step_*.npz, snapshots/probe.npz)
# ------------------------------------------------------------------------------------------------
class Probe(TypedDict):
    """A fixed set of images whose concepts every snapshot records (Trainer._probe), P rows."""

    images: np.ndarray  # uint8 (P, H, W, C)
    split: np.ndarray  # int8 (P,): 0 meta-train, 1 meta-test, 2 external
    label: np.ndarray  # int64 (P,): class id within its split
    class_name: np.ndarray  # str (P,)
    image_index: np.ndarray  # int64 (P,): index within its split's ImageSet
    external_classes: np.ndarray  # str (E,): the discriminator's classes, indexed by disc_pred (empty without D)


class _SnapshotBase(TypedDict):
    step: np.int64  # the training step it was taken at
    concepts: np.ndarray  # float32 (P, D): the probe images' concepts


class Snapshot(_SnapshotBase, total=False):
    """The probe's concepts and the discriminator's view of them at one step (Trainer.snapshot).
    The disc_* keys are there only when the run has an external set (a discriminator D); with it
    come D's weights, one array per state_dict entry under "disc.<name>" ("disc.net.weight",
    "disc.net.bias" for a linear D; "disc.net.0.*", "disc.net.2.*" for the MLP), which a TypedDict
    cannot name: engine.viz.regions draws D's regions from them."""

    disc_pred: np.ndarray  # int (P,): D's predicted external class per probe image
    disc_conf: np.ndarray  # float (P,): D's probability for it
    disc_trained: np.bool_  # False for lambda = 0: D is then untrained and its view means nothing
