"""What a run records, typed once: its state, its metric records, its snapshots and probe.

  RunState        every state a run is shown in (a str-Enum: compares equal to its plain string,
                  and writes as one in JSON), with the groups the app asks about (ACTIVE, DONE...)
  TrainRecord     one training step, as the trainer writes it to metrics.jsonl (kind "train")
  ValRecord       one validation (kind "val")
  AdaptationRecord  the adaptation curve measured at a validation (kind "adaptation")
  read_metric_records   the one reader: raw lines or dicts in, only well-formed records out
  train_records / val_records / adaptation_records   the one filter per kind
  read_evaluation_records   the same for evaluations.jsonl (kind "evaluate" or "curve")
  Snapshot, Probe what Trainer.snapshot() and Trainer._probe() make (snapshots/*.npz on disk);
                  check_probe / check_snapshot: the arrays checked before anything uses them

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
    progress: float  # how far training was when the step began, 0..1 (of the steps, or of --minutes' budget)


class ValRecord(TypedDict, total=False):
    """One validation (Trainer.validate). kind and step are always there."""

    kind: Literal["val"]
    step: int  # the training step validated after
    val_acc: float  # mean accuracy over the validation episodes
    val_ci95: float  # its 95% confidence half-width
    episodes: int  # how many episodes
    seconds: float  # training time so far
    val_per_episode: list[float]  # each episode's accuracy, in the fixed episodes' order (runs since the
    # paired headline, engine.eval.headline; older records lack it)


class AdaptationRecord(TypedDict, total=False):
    """The adaptation curve at one validation (Trainer.adaptation), on fixed validation episodes:
    query accuracy after 0..S inner steps (gradient learners) or with 1..K' shots (metric learners).
    kind, step, axis, x and accuracy are always there."""

    kind: Literal["adaptation"]
    step: int  # the training step it was measured after (that of the validation beside it)
    axis: Literal["inner_steps", "shots"]
    x: list[int]  # the points of the curve: 0..S inner steps, or 1..K' shots
    accuracy: list[float]  # mean query accuracy in [0, 1] at each point
    ways: int  # N of its episodes (chance is 1/N)
    episodes: int  # how many episodes it averages


MetricRecord = Union[TrainRecord, ValRecord, AdaptationRecord]

KINDS = ("train", "val", "adaptation")
ADAPTATION_AXES = ("inner_steps", "shots")
_NUMBER = (int, float, np.integer, np.floating)
# fields with a known type: a record whose value is not of it (None allowed) is malformed
_NUMERIC = {"meta_loss", "meta_acc", "disc_loss", "disc_acc", "lr", "step_seconds", "images_per_s", "seconds",
            "val_acc", "val_ci95", "episodes"}


BIG = 2**53  # whole numbers beyond this (JSON allows any) are refused: floats could not hold them


def _number(v) -> bool:
    """An int or float (not bool); an int within +-BIG, so that float(v) never overflows."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, _NUMBER):
        return False
    return not isinstance(v, (int, np.integer)) or -BIG <= v <= BIG


def well_formed(record) -> bool:
    """A dict with kind "train", "val" or "adaptation", a finite whole-number step, and numbers (or
    None) in the known numeric fields; an adaptation record also needs _adaptation_ok."""
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        return False
    step = record.get("step")
    if not _number(step) or not math.isfinite(step) or step != int(step) or not 0 <= step <= BIG:
        return False
    if record["kind"] == "adaptation":
        return _adaptation_ok(record)
    for k, v in record.items():  # the common case (plain floats) first: this runs on every refresh
        if k in _NUMERIC and v is not None and type(v) is not float and not _number(v):
            return False
    return True


def _adaptation_ok(record: dict) -> bool:
    """axis "inner_steps" or "shots"; x a nonempty list of increasing whole numbers >= 0; accuracy
    a list as long, of finite numbers in [0, 1]; ways and episodes (when there) whole numbers >= 1."""
    x, acc = record.get("x"), record.get("accuracy")
    if record.get("axis") not in ADAPTATION_AXES or not isinstance(x, list) or not isinstance(acc, list):
        return False
    if not x or len(x) != len(acc) or not all(_whole(v) and v >= 0 for v in x):
        return False
    if any(b <= a for a, b in zip(x, x[1:])):
        return False
    if not all(_number(a) and math.isfinite(a) and 0 <= a <= 1 for a in acc):
        return False
    return all(k not in record or (_whole(record[k]) and record[k] >= 1) for k in ("ways", "episodes"))


def read_metric_records(raw: Iterable[str | bytes | dict]) -> list[MetricRecord]:
    """The well-formed records among `raw` (JSON lines, or dicts already parsed), in order. A line
    that is not JSON (cut short by a crash), not an object, or not a well-formed record is skipped,
    never raised. A whole-number float step (2.0) becomes an int."""
    out: list[MetricRecord] = []
    for item in raw:
        if isinstance(item, (str, bytes)):
            try:
                item = json.loads(item)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
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


def adaptation_records(metrics: Iterable[dict]) -> list[AdaptationRecord]:
    """The well-formed kind "adaptation" records, in order."""
    return [m for m in metrics if isinstance(m, dict) and m.get("kind") == "adaptation" and well_formed(m)]


# ------------------------------------------------------------------------------------------------
# Evaluation records (evaluations.jsonl)
# ------------------------------------------------------------------------------------------------
class EvaluationRecord(TypedDict, total=False):
    """One result of `engine evaluate` (kind "evaluate") or `engine curve` (kind "curve"), as
    engine.eval.evaluate.run_evaluation appends it. kind is always there."""

    kind: Literal["evaluate", "curve"]
    dataset: str  # the evaluation data ("<spec> [meta-test]" for the run's own held-out classes)
    classes: str  # "test" or "all"
    learner: str
    episodes: int
    ways: int
    shots: int
    queries: int
    seed: int
    accuracy: float | list[float]  # "evaluate": the mean; "curve": one per point of `steps`
    ci95: float | None  # "evaluate": its 95% confidence half-width (NaN for one episode)
    axis: str  # "curve": "steps" or "shots"
    steps: list[int]  # "curve": the points of the curve (inner steps or shots)
    accuracy_ci95: list[float]  # "curve": one per point
    loss: list[float]
    loss_ci95: list[float]


EVALUATION_KINDS = ("evaluate", "curve")
_EVAL_TEXT = ("dataset", "classes", "learner", "axis")
_EVAL_INTS = ("episodes", "ways", "shots", "queries", "seed")
_CURVE_LISTS = ("accuracy", "accuracy_ci95", "loss", "loss_ci95")


def _whole(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and -BIG <= v <= BIG


def well_formed_evaluation(record) -> bool:
    """A dict with kind "evaluate" or "curve" whose known fields have their types: text, whole
    numbers, a finite accuracy (a number, or for a curve a list as long as `steps`, a list of
    whole numbers) and numbers (or None, NaN) for the confidence intervals and losses."""
    if not isinstance(record, dict) or record.get("kind") not in EVALUATION_KINDS:
        return False
    if any(k in record and not isinstance(record[k], str) for k in _EVAL_TEXT):
        return False
    if any(k in record and not _whole(record[k]) for k in _EVAL_INTS):
        return False
    ci, steps = record.get("ci95"), record.get("steps")
    if ci is not None and not _number(ci):
        return False
    if "steps" in record and (not isinstance(steps, list) or not all(_whole(s) for s in steps)):
        return False
    if record["kind"] == "evaluate":
        acc = record.get("accuracy")
        return _number(acc) and math.isfinite(acc)
    if not steps:
        return False
    if record.get("axis") not in ("steps", "shots"):
        return False
    for k in _CURVE_LISTS:
        values = record.get(k)
        if k == "accuracy" or values is not None:
            if not isinstance(values, list) or len(values) != len(steps):
                return False
            if not all(v is None or _number(v) for v in values):
                return False
    return all(v is not None and math.isfinite(v) for v in record["accuracy"])


def read_evaluation_records(raw: Iterable[str | bytes | dict]) -> tuple[list[EvaluationRecord], int]:
    """(the well-formed evaluation records among `raw` in order, how many non-blank items were
    skipped). Lines that are not JSON, not objects or not well-formed are skipped, never raised."""
    out: list[EvaluationRecord] = []
    skipped = 0
    for item in raw:
        if isinstance(item, (str, bytes)):
            if not item.strip():
                continue
            try:
                item = json.loads(item)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                skipped += 1
                continue
        if well_formed_evaluation(item):
            out.append(item)
        else:
            skipped += 1
    return out, skipped


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


def _int_array(a, shape=None) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype.kind in "iu" and (shape is None or a.shape == shape))


def _finite_float_array(a, ndim: int) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.ndim == ndim and bool(np.isfinite(a).all()))


def check_probe(arrays: dict) -> str | None:
    """Why `arrays` (snapshots/probe.npz) is not a Probe (None: it is one): P >= 1 uint8 images
    (P, H, W, 1 or 3), and per image a split code 0/1/2, a label, a class name and an index."""
    images = arrays.get("images")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[-1] not in (1, 3) or not len(images):
        return "its images are not a (P, H, W, 1 or 3) uint8 array"
    rows = (len(images),)
    for k in ("split", "label", "image_index"):
        if not _int_array(arrays.get(k), rows):
            return f"{k!r} is not {rows[0]} whole numbers"
    if not set(np.unique(arrays["split"]).tolist()) <= {0, 1, 2} or (arrays["label"] < 0).any():
        return "its split codes or labels are out of range"
    names, ext = arrays.get("class_name"), arrays.get("external_classes")
    if not isinstance(names, np.ndarray) or names.dtype.kind != "U" or names.shape != rows:
        return f"'class_name' is not {rows[0]} names"
    if not isinstance(ext, np.ndarray) or ext.dtype.kind != "U" or ext.ndim != 1:
        return "'external_classes' is not a list of names"
    return None


def check_snapshot(arrays: dict, rows: int | None = None) -> str | None:
    """Why `arrays` (snapshots/step_NNNNNNN.npz) is not a Snapshot of a probe of `rows` images
    (None: it is one): a whole-number step, finite float concepts (P, D), and when D's view is
    there, P predictions and confidences and weights of matching shapes."""
    step = arrays.get("step")
    if not isinstance(step, np.ndarray) or step.dtype.kind not in "iu" or step.size != 1 \
            or not 0 <= int(step.reshape(())) <= BIG:
        return "its step is not a whole number"
    z = arrays.get("concepts")
    if not _finite_float_array(z, 2) or not z.shape[0] or not z.shape[1]:
        return "its concepts are not a 2-D array of finite numbers"
    if rows is not None and len(z) != rows:
        return f"it has concepts for {len(z)} images, the probe has {rows}"
    p = len(z)
    if "disc_pred" in arrays or "disc_conf" in arrays:
        pred, conf = arrays.get("disc_pred"), arrays.get("disc_conf")
        if not _int_array(pred, (p,)) or (pred < 0).any() or not _finite_float_array(conf, 1) or conf.shape != (p,):
            return "the discriminator's predictions do not match its concepts"
    if "disc_trained" in arrays:
        flag = arrays["disc_trained"]
        if not isinstance(flag, np.ndarray) or flag.dtype.kind not in "bui" or flag.size != 1:
            return "its disc_trained is not one yes/no value"
    disc = {k: v for k, v in arrays.items() if k.startswith("disc.")}
    if disc:
        if not all(_finite_float_array(v, v.ndim) for v in disc.values() if isinstance(v, np.ndarray)) \
                or not all(isinstance(v, np.ndarray) for v in disc.values()):
            return "the discriminator's weights are not finite numbers"
        d = z.shape[1]
        if "disc.net.weight" in disc:
            w, b = disc["disc.net.weight"], disc.get("disc.net.bias")
            ok = w.ndim == 2 and w.shape[1] == d and b is not None and b.shape == (w.shape[0],)
        else:
            w0, b0 = disc.get("disc.net.0.weight"), disc.get("disc.net.0.bias")
            w2, b2 = disc.get("disc.net.2.weight"), disc.get("disc.net.2.bias")
            ok = all(v is not None for v in (w0, b0, w2, b2)) and w0.ndim == 2 and w0.shape[1] == d \
                and b0.shape == (w0.shape[0],) and w2.ndim == 2 and w2.shape[1] == w0.shape[0] \
                and b2.shape == (w2.shape[0],)
        if not ok:
            return "the discriminator's weights do not fit its concepts"
    return None
