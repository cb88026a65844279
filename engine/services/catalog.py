"""Every saved run under runs_root(), summarised for the Runs and Adapt pages; and deleting a run.

A run directory that cannot be read (a damaged config.json, files it cannot open) is listed as
"unreadable" with the reason, never raised: one bad folder must not hide the others. Nothing
here imports streamlit.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import stat
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import runs_root
from engine.data.images import plural
from engine.errors import UserError
from engine.eval.evaluate import is_test_record
from engine.eval.twins import run_label
from engine.records import RunState, read_metric_records, train_records, val_records
from engine.run_lock import locked_message
from engine.runs import CHECKPOINT_NAME, RunDir, inside_runs_root
from engine.train.job import REGISTRY

STOP_TIMEOUT = 60.0  # seconds to wait for a running job to checkpoint and end before deleting its run


@dataclass
class RunSummary:
    path: str  # the run directory, as runs_root() / name
    name: str  # the folder's name
    state: RunState  # one of engine.records.CATALOG_STATES
    detail: str = ""  # the job's own state while it runs (running, paused, starting...), who trains it
    # elsewhere (ELSEWHERE), or why unreadable
    config: dict | None = None  # the filled-in TrainConfig (None when unreadable)
    title: str | None = None  # the name given to the run (--name, the Train or Runs page), if any
    learner: str | None = None
    lam: float | None = None
    dataset: str | None = None
    ways: int | None = None
    shots: int | None = None
    steps_done: int = 0
    steps_total: int | None = None  # with minutes, an upper bound until the run ends (then the steps done)
    minutes: float = 0.0  # the run's time budget (--minutes; 0: bounded by steps)
    val_acc: float | None = None  # last validation
    val_ci95: float | None = None
    test: dict | None = None  # latest "evaluate" record on the meta-test classes, if any
    curve: dict | None = None  # latest adaptation curve on the meta-test classes, if any
    checkpoint: str | None = None  # newest checkpoint file
    modified: float = 0.0
    errors: list[str] = field(default_factory=list)
    skipped_lines: int = 0  # damaged lines of metrics.jsonl and evaluations.jsonl left out of the numbers

    @property
    def readable(self) -> bool:
        return self.state != RunState.UNREADABLE and self.config is not None

    @property
    def adaptable(self) -> bool:
        """A model can be loaded: readable and with at least one checkpoint."""
        return self.readable and self.checkpoint is not None

    @property
    def method(self) -> str:
        if self.lam is None:
            return "?"
        return run_label(self.learner, self.lam)

    @property
    def shown_name(self) -> str:
        """The given name, else the folder's."""
        return self.title or self.name

    def label(self) -> str:
        """One line for selectboxes: name (and folder, when named), method, state."""
        if not self.readable:
            return f"{self.name} (unreadable)"
        named = f"{self.title} ({self.name})" if self.title else self.name
        return f"{named} · {self.method} · {self.state}"

    def row(self) -> dict:
        """One row of the runs table."""
        return {
            "run": self.shown_name,
            "state": str(self.state) if not self.detail or self.detail == self.state else f"{self.state} ({self.detail})",
            "learner": self.learner,
            "λ": self.lam,
            "dataset": self.dataset,
            "task": f"{self.ways}-way {self.shots}-shot" if self.ways else None,
            "steps": self.steps_text(),
            "validation accuracy": fmt_acc(self.val_acc, self.val_ci95),
            "test accuracy": (fmt_acc(self.test.get("accuracy"), self.test.get("ci95"))
                              + f" ({self.test.get('episodes')} ep.)") if self.test else None,
            "path": self.path,
            "notes": (plural(self.skipped_lines, "damaged line", "damaged lines") + " skipped")
            if self.skipped_lines else None,
        }


    def steps_text(self) -> str | None:
        """'514/6000'; a run bounded by time, until its last step: '514 (limit 0.6 min)', since
        its steps then are only an upper bound (10,000,000 from the command line)."""
        if not self.steps_total:
            return None
        if self.minutes and self.steps_done < self.steps_total:
            return f"{self.steps_done} (limit {round(self.minutes, 2):g} min)"
        return f"{self.steps_done}/{self.steps_total}"


def fmt_acc(acc, ci=None) -> str | None:
    """0.8123, 0.012 -> '81.2% ± 1.2'."""
    if acc is None or (isinstance(acc, float) and math.isnan(acc)):
        return None
    text = f"{acc:.1%}"
    if ci is not None and not (isinstance(ci, float) and math.isnan(ci)):
        text += f" ± {ci * 100:.1f}"
    return text


@dataclass
class MetricsDigest:
    """What the runs table shows of metrics.jsonl, and how far the file has been read."""

    inode: int = -1
    mtime_ns: int = -1
    size: int = -1
    offset: int = 0  # bytes read so far, up to the end of the last complete line
    steps_done: int = 0
    val_acc: float | None = None
    val_ci95: float | None = None
    skipped: int = 0  # damaged lines (not JSON, not a well-formed record)

    def add(self, lines: list[bytes]) -> None:
        lines = [line for line in lines if line.strip()]
        metrics = read_metric_records(lines)
        self.skipped += len(lines) - len(metrics)  # damaged lines, as RunDir.read_metrics counts them
        self.steps_done = max([self.steps_done] + [m["step"] for m in train_records(metrics)])
        if val := val_records(metrics):
            self.val_acc, self.val_ci95 = val[-1].get("val_acc"), val[-1].get("val_ci95")


DIGESTS_KEPT = 1024  # runs whose metrics digest is remembered (oldest used forgotten first)
_digests: OrderedDict[str, MetricsDigest] = OrderedDict()
_digests_lock = threading.Lock()


def metrics_digest(path: Path) -> MetricsDigest:
    """Steps trained and the last validation of a metrics.jsonl, read once: an unchanged file
    (same inode, size and mtime) is not read again, and a file that grew (appended to while a run
    trains) is read from where the last read stopped. A file replaced or shrunk (a resume drops
    later records by writing a new file) is read again from the start. A saved 200,000-step run
    took 10 s per render of the Runs page when the whole file was read every time."""
    key = os.path.realpath(path)
    try:
        st = os.stat(key)
    except OSError:
        return MetricsDigest()
    with _digests_lock:
        digest = _digests.get(key)
        if digest is not None:
            _digests.move_to_end(key)
    if digest is not None and (digest.inode, digest.mtime_ns, digest.size) == (st.st_ino, st.st_mtime_ns, st.st_size):
        return digest
    if digest is None or digest.inode != st.st_ino or st.st_size < digest.offset:
        digest = MetricsDigest()
    else:
        digest = dataclasses.replace(digest)  # readers of the cached one keep a consistent digest
    with open(key, "rb") as f:
        f.seek(digest.offset)
        data = f.read(max(0, st.st_size - digest.offset))
    end = data.rfind(b"\n") + 1  # a last line without its newline may still be being written
    digest.add(data[:end].split(b"\n"))
    digest.offset += end
    digest.inode, digest.mtime_ns, digest.size = st.st_ino, st.st_mtime_ns, st.st_size
    if end < len(data):
        digest.size = -1  # read the unfinished line again next time
    with _digests_lock:
        _digests[key] = digest
        _digests.move_to_end(key)
        while len(_digests) > DIGESTS_KEPT:
            _digests.popitem(last=False)
    if end < len(data):  # counted now as the whole-file reader counts it, but not kept
        digest = dataclasses.replace(digest)
        digest.add([data[end:]])
    return digest


def summarize(path: str | os.PathLike) -> RunSummary:
    """One run's summary; any failure to read it makes it "unreadable", with the reason in `detail`."""
    path = Path(path)
    job = REGISTRY.get(str(path))
    active = job is not None and not job.done
    s = RunSummary(path=str(path), name=path.name, state=RunState.RUNNING if active else RunState.UNREADABLE,
                   detail=job.state if active else "")
    holder = None if active else RunDir(path).locked_by()  # another process trains it (or our job ending)
    if holder is not None:
        s.state, s.detail = RunState.ELSEWHERE, f"by {holder}"
    try:
        s.modified = path.stat().st_mtime
        if not (path / "config.json").is_file():
            if active:  # the job is still reading its data; the folder fills in a moment
                p = job.progress()
                s.steps_done, s.steps_total = p["step"], p["steps"]
                return s
            if holder is not None:  # its trainer is about to write it
                return s
            raise UserError("no config.json (not a run directory, or one whose creation failed)")
        run = RunDir(path)
        cfg = run.train_config()
        s.title = run.run_name()
        s.config = cfg.to_dict()
        s.learner, s.lam, s.dataset, s.ways, s.shots = cfg.learner, cfg.lam, cfg.dataset, cfg.ways, cfg.shots
        s.steps_total, s.minutes = cfg.steps, cfg.minutes
        s.modified = max(s.modified, (path / "config.json").stat().st_mtime)
        digest = metrics_digest(path / "metrics.jsonl")
        s.steps_done, s.val_acc, s.val_ci95 = digest.steps_done, digest.val_acc, digest.val_ci95
        checkpoints = run.checkpoints()
        s.checkpoint = str(checkpoints[-1]) if checkpoints else None
        evaluations = run.read_evaluations()
        s.skipped_lines = digest.skipped + run.skipped_evaluations
        s.test = next((r for r in reversed(evaluations) if is_test_record(r, "evaluate", cfg)), None)
        s.curve = next((r for r in reversed(evaluations) if is_test_record(r, "curve", cfg)), None)
        if active:
            p = job.progress()
            s.steps_done = max(s.steps_done, p["step"])
            s.steps_total = p["steps"] or s.steps_total
        elif holder is None:
            s.state = RunState.FINISHED if s.steps_done >= cfg.steps and s.checkpoint else RunState.STOPPED
            if job is not None and job.state == RunState.FAILED:
                s.detail = RunState.FAILED
                s.errors.append(job.error or "the job failed")
    except Exception as e:  # noqa: BLE001 - a damaged folder is listed, never raised
        reason = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        s.config = None
        s.learner = s.lam = s.dataset = s.ways = s.shots = None
        if not active and holder is None:  # one being trained elsewhere stays so (and undeletable)
            s.state = RunState.UNREADABLE
        s.detail = reason
        s.errors.append(reason)
    return s


def list_runs(root: str | os.PathLike | None = None) -> list[RunSummary]:
    """Every run under `root` (default runs_root()), newest first, plus jobs registered under it
    whose folder does not exist yet. Hidden folders and plain files are skipped, and so are links
    that resolve outside the root (inside_runs_root): what is listed here may be acted on."""
    root = Path(root) if root is not None else runs_root()
    out: dict[str, RunSummary] = {}
    if root.is_dir():
        try:
            entries = list(root.iterdir())
        except OSError:
            entries = []
        for p in entries:
            try:
                if p.name.startswith(".") or not p.is_dir():
                    continue
                inside_runs_root(p, root)
            except (OSError, UserError):
                continue
            out[os.path.realpath(p)] = summarize(p)
    real_root = os.path.realpath(root)
    for job in REGISTRY.active():
        key = os.path.realpath(job.run_dir)
        if key not in out and os.path.dirname(key) == real_root:
            out[key] = summarize(Path(root) / os.path.basename(key))
    return sorted(out.values(), key=lambda s: (-s.modified, s.name))


def find(runs: list[RunSummary], run_dir: str | None) -> int | None:
    """Position of `run_dir` (however spelled) in `runs`, or None."""
    if not run_dir:
        return None
    key = os.path.realpath(run_dir)
    return next((i for i, s in enumerate(runs) if os.path.realpath(s.path) == key), None)


def delete_run(run_dir: str | os.PathLike, root: str | os.PathLike | None = None,
               timeout: float = STOP_TIMEOUT) -> dict:
    """Remove a run directory under runs_root(). A job still training in it is stopped and joined
    first (it checkpoints on stop, so nothing writes into the folder while it is removed). A run
    another process trains is refused. The folder is taken (its lock held), renamed aside to a
    hidden sibling (never listed as a run), then removed: the run is gone from the list at once,
    and a removal cut short leaves only a hidden folder. Every failure is a UserError."""
    real = inside_runs_root(run_dir, root)
    stopped = False
    job = REGISTRY.get(str(run_dir))
    if job is not None and not job.done:
        job.stop()
        if not job.join(timeout):
            raise UserError(f"the training job in {run_dir} did not stop within {timeout:.0f} s; "
                            "try again in a moment")
        stopped = True
    elif job is not None:
        job.join(timeout)  # done, but its thread may still be returning
    if not real.exists():
        raise UserError(f"{run_dir} does not exist (already deleted?)")
    if not real.is_dir():
        raise UserError(f"{run_dir} is not a folder")
    run = RunDir(real)
    holder = run.locked_by()
    if holder is not None:
        raise UserError(f"{locked_message(run_dir, holder)}; a run being trained cannot be deleted")
    aside = real.parent / f".{real.name}.deleting-{time.time_ns()}"
    try:
        with run.lock():  # no trainer can start in it meanwhile (a lost race is refused here)
            os.rename(real, aside)
    except OSError as e:
        raise UserError(f"could not delete {run_dir}: {e.strerror or e}; nothing was removed") from e
    errors: list[str] = []

    def failed(fn, p, exc) -> None:  # goes on with the rest; exc: an exception (onexc) or exc_info (onerror)
        exc = exc[1] if isinstance(exc, tuple) else exc
        errors.append(f"{p}: {exc.strerror or exc}" if isinstance(exc, OSError) else f"{p}: {exc}")

    shutil.rmtree(aside, **({"onexc": failed} if sys.version_info >= (3, 12) else {"onerror": failed}))
    if errors:
        raise UserError(f"{run_dir} is no longer listed, but some of its files could not be removed "
                        f"({errors[0]}{f' and {len(errors) - 1} more' if len(errors) > 1 else ''}); "
                        f"remove the folder {aside} by hand")
    return {"deleted": str(real), "stopped_job": stopped}


def newest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The run's newest checkpoint (what a download hands out), or None: only regular files named
    as RunDir.save_checkpoint names them (step_NNNNNNN.pt) right inside its checkpoints/ folder;
    a symlink (to the file or the folder) or anything else there is ignored."""
    folder = Path(run_dir) / "checkpoints"
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        found = []
        for name in os.listdir(dir_fd):
            if not CHECKPOINT_NAME.fullmatch(name):
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((st.st_mtime, name))
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    return folder / max(found)[1] if found else None


def read_checkpoint(path: str | os.PathLike) -> bytes:
    """The bytes of a checkpoint newest_checkpoint() named, read without following any symlink
    (the checkpoints/ folder or the file may have been swapped for one since): UserError when it
    is no longer a regular checkpoint file."""
    path = Path(path)
    if not CHECKPOINT_NAME.fullmatch(path.name) or path.parent.name != "checkpoints":
        raise UserError(f"{path.name} is not a checkpoint of a run")
    nofollow = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dir_fd = os.open(path.parent, nofollow | os.O_DIRECTORY)
        try:
            fd = os.open(path.name, nofollow, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UserError(f"{path.name} is not a regular file; it is not served")
            return f.read()
    except OSError as e:
        raise UserError(f"cannot read {path.name} ({e.strerror or e}); it may have been replaced "
                        "meanwhile, reload the page") from e


def read_offered_checkpoint(run_dir: str | os.PathLike, path: str | os.PathLike) -> tuple[bytes, str | None]:
    """(bytes, note): the checkpoint a page offered for download, or, when the trainer replaced it
    since (it keeps the newest two), the run's newest one, with a note that says so; UserError when
    the run has none left to read (a download then holds nothing, and the page says why)."""
    try:
        return read_checkpoint(path), None
    except UserError:
        newer = newest_checkpoint(run_dir)
        if newer is None or newer.name == Path(path).name:
            raise
        return read_checkpoint(newer), (f"{Path(path).name} was replaced by a newer checkpoint while the page "
                                        f"showed it; the download holds {newer.name}")


def rename_run(path: str, name: str, root=None) -> str:
    """Give the run at `path` (strictly inside the runs root) a name; "" removes it. The name kept."""
    inside_runs_root(path, root)
    return RunDir(path).set_run_name(name)
