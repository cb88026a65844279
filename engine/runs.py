"""A run directory on disk:

  config.json        TrainConfig as a dict (everything needed to rebuild the run)
  splits.json        which classes went where, and the disjointness checks
  metrics.jsonl      one JSON object per step (kind "train") or validation (kind "val", then its
                     adaptation curve, kind "adaptation")
  checkpoints/       step_NNNNNNN.pt, written atomically, loaded with weights_only=True
  snapshots/         probe.npz (which images), step_NNNNNNN.npz (concepts and D's view of them)
  evaluations.jsonl  results of `engine evaluate` / `engine curve`
  .lock              held (fcntl.flock, exclusive) by the one process that trains the run; it names
                     that process (pid, host, start time) for the message that refuses a second one
"""
from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from engine import run_lock
from engine.config import runs_root
from engine.errors import UserError
from engine.records import (
    EvaluationRecord,
    MetricRecord,
    Snapshot,
    check_probe,
    check_snapshot,
    read_evaluation_records,
    read_metric_records,
)
from engine.run_lock import LOCK_NAME, LockHolder

FORMAT_VERSION = 1
KEEP_CHECKPOINTS = 2  # the newest plus one to fall back on if the newest is damaged
MAX_RUN_PATH_CHARS = 1000  # a run path handed to the app (a link, a widget) longer than this is refused unread
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status); elsewhere set and
    put back at once, under a lock so that two threads of this module never race on it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask
SNAPSHOT_NAME = re.compile(r"step_(\d{7})\.npz")  # what save_snapshot writes; nothing else is a snapshot
CHECKPOINT_NAME = re.compile(r"step_[0-9]{7}\.pt")  # what save_checkpoint writes; nothing else is a checkpoint


def atomic_write(path: Path, write) -> None:
    """Call write(file) on a temporary file beside `path`, then rename it into place. The file gets
    the mode a plain open() would give it (0o666 less the umask), not mkstemp's private 0o600, so
    runs are readable by whoever the umask lets read them (a team's app reading people's runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def read_lines(path: Path) -> list[str]:
    """The lines of a text file; none when it does not exist. Bytes that are not UTF-8 (a damaged
    file) become U+FFFD, so that the line they are in is skipped by the reader, not the file."""
    return path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []


NAME_FILE = "name.json"  # the run's name, given on the command line (--name) or in the app
NAME_MAX_CHARS = 80


def clean_run_name(name: str) -> str:
    """A run's name with spaces trimmed and runs of spaces made one; UserError for one longer than
    NAME_MAX_CHARS or holding control characters."""
    name = " ".join(str(name).split())
    if len(name) > NAME_MAX_CHARS:
        raise UserError(f"a run name has at most {NAME_MAX_CHARS} characters (this one has {len(name)})")
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in name):
        raise UserError("a run name cannot hold control characters")
    return name


class RunDir:
    """One run folder. Open it once per command or page and pass the object down: its config is
    parsed once (and again only when config.json changes on disk, e.g. a resume that adds steps)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._config: tuple[tuple[int, int, int], dict] | None = None  # ((inode, mtime_ns, size), config)
        self._lock_fd: int | None = None  # open while this object holds the run's lock
        self.skipped_metrics = 0  # damaged lines of metrics.jsonl the last read_metrics() skipped
        self.skipped_evaluations = 0  # the same for read_evaluations()

    # --- the trainer's lock (engine.run_lock) --------------------------------------------------
    @property
    def holds_lock(self) -> bool:
        return self._lock_fd is not None

    def acquire_lock(self) -> None:
        """Take the run's exclusive lock for this process (no-op if this object holds it already)."""
        if self._lock_fd is None:
            self._lock_fd = run_lock.take(self.path)

    def release_lock(self) -> None:
        """Let the run go (no-op when this object does not hold it)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            run_lock.let_go(fd)

    @contextmanager
    def lock(self):
        """Hold the run's lock for the block; released after it however it ends."""
        held = self.holds_lock
        self.acquire_lock()
        try:
            yield self
        finally:
            if not held:
                self.release_lock()

    def locked_by(self) -> LockHolder | None:
        """Who trains this run now, or None. Any process counts, this one too (its own job included)."""
        if self._lock_fd is not None:
            return LockHolder(os.getpid(), socket.gethostname())
        return run_lock.holder_of(self.path)

    def __del__(self):
        if getattr(self, "_lock_fd", None) is not None:
            self.release_lock()

    # --- creation and config ---------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, config: dict, lock: bool = False) -> RunDir:
        """A new run folder with its config.json. With `lock`, the returned RunDir holds the run's
        lock, taken before anything is written (release it with release_lock)."""
        run = cls(path)
        run._refuse_existing()
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot write the run directory {run.path}: {e.strerror or e}") from e
        if lock:
            run.acquire_lock()
        try:
            run._refuse_existing()  # made meanwhile by another process
            atomic_json(run.path / "config.json", {"format_version": FORMAT_VERSION, "config": config})
        except OSError as e:
            run.release_lock()
            raise UserError(f"cannot write the run directory {run.path}: {e.strerror or e}") from e
        except BaseException:
            run.release_lock()
            raise
        return run

    def _refuse_existing(self) -> None:
        if self.path.exists() and any(p.name != LOCK_NAME for p in self.path.iterdir()):
            raise UserError(f"{self.path} already exists and is not empty; choose another --out, "
                            f"or continue it with --resume {self.path}")

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        run = cls(path)
        if not (run.path / "config.json").is_file():
            raise UserError(f"{run.path} is not a run directory (no config.json); pass the folder "
                            "that `engine train` printed as run_dir")
        return run

    def config(self) -> dict:
        """The settings the run was made with (a copy: change them through update_config)."""
        path = self.path / "config.json"
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # atomic writes replace the inode
            if self._config is None or self._config[0] != stamp:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
                    version = data.get("format_version") if isinstance(data, dict) else None
                    raise UserError(f"{self.path} was written by format {version}, this version reads {FORMAT_VERSION}")
                if not isinstance(data.get("config"), dict):
                    raise UserError(f"{path} holds no settings object; the run cannot be rebuilt")
                self._config = (stamp, data["config"])
        except (OSError, ValueError, RecursionError) as e:  # ValueError: not JSON, not UTF-8
            raise UserError(f"{path} is unreadable ({type(e).__name__}: {e}); the run cannot be rebuilt") from e
        return dict(self._config[1])

    def train_config(self):
        """config() as a TrainConfig (defaults filled in for settings added after the run was made)."""
        from engine.config import TrainConfig  # here, so that reading runs needs no model code

        return TrainConfig.from_dict(self.config(), source=str(self.path / "config.json"))

    def update_config(self, config: dict) -> None:
        atomic_json(self.path / "config.json", {"format_version": FORMAT_VERSION, "config": config})

    def run_name(self) -> str | None:
        """The name given to the run (--name, or the app), or None: name.json, if readable."""
        try:
            value = json.loads((self.path / NAME_FILE).read_text(encoding="utf-8")).get("name")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) and value else None

    def set_run_name(self, name: str) -> str:
        """Give the run a name (clean_run_name's rules; "" removes it). Returns the name kept."""
        name = clean_run_name(name)
        atomic_json(self.path / NAME_FILE, {"name": name})
        return name

    def write_json(self, name: str, obj) -> None:
        atomic_json(self.path / name, obj)

    def read_json(self, name: str):
        p = self.path / name
        return json.loads(p.read_text()) if p.is_file() else None

    # --- metrics -----------------------------------------------------------------------------
    def append_metrics(self, records: list[MetricRecord]) -> None:
        if not records:
            return
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()

    def read_metrics(self) -> list[MetricRecord]:
        """The well-formed records of metrics.jsonl (engine.records.read_metric_records), in order;
        how many non-blank lines were skipped is left in `skipped_metrics`."""
        lines = [line for line in read_lines(self.path / "metrics.jsonl") if line.strip()]
        records = read_metric_records(lines)
        self.skipped_metrics = len(lines) - len(records)
        return records

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only records up to `last_step` (on resume, what came after the checkpoint is redone)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        atomic_write(self.path / "metrics.jsonl", lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Checkpoint files (exactly as save_checkpoint names them, regular files, no links), oldest first."""
        return sorted(p for p in (self.path / "checkpoints").glob("step_*.pt")
                      if CHECKPOINT_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink())

    def save_checkpoint(self, state: dict, step: int) -> Path:
        path = self.path / "checkpoints" / f"step_{step:07d}.pt"
        atomic_write(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))
        for old in self.checkpoints()[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self) -> tuple[dict, list[str]]:
        """The newest checkpoint that loads, and a warning for each damaged one skipped."""
        warnings = []
        for path in reversed(self.checkpoints()):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # truncated, corrupted or carrying code: never trusted
                warnings.append(f"{path.name} is unreadable ({type(e).__name__}); falling back to an older one")
                continue
            version = state.get("format_version") if isinstance(state, dict) else None
            if version != FORMAT_VERSION:
                warnings.append(f"{path.name} has format {version!r:.40}, expected {FORMAT_VERSION}")
                continue
            if problem := _checkpoint_problem(state):
                warnings.append(f"{path.name} is damaged ({problem}); falling back to an older one")
                continue
            return state, warnings
        raise UserError(f"{self.path} has no readable checkpoint"
                        + (f" ({'; '.join(warnings)})" if warnings else "; train it first"))

    # --- snapshots ---------------------------------------------------------------------------
    def save_probe(self, arrays: dict[str, np.ndarray]) -> None:
        atomic_write(self.path / "snapshots" / "probe.npz", lambda f: np.savez(f, **arrays))

    def save_snapshot(self, step: int, arrays: dict[str, np.ndarray]) -> None:
        atomic_write(self.path / "snapshots" / f"step_{step:07d}.npz", lambda f: np.savez(f, **arrays))

    def snapshot_steps(self) -> list[int]:
        """The steps of the snapshot files, named exactly as save_snapshot names them."""
        folder = self.path / "snapshots"
        try:
            names = os.listdir(folder)
        except OSError:  # no snapshots yet (or not a folder)
            return []
        return sorted(int(m.group(1)) for n in names if (m := SNAPSHOT_NAME.fullmatch(n)))

    def _load_npz(self, path: Path, what: str) -> dict[str, np.ndarray]:
        """The arrays of an .npz (never unpickled); UserError when it cannot be read."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if not isinstance(z, np.lib.npyio.NpzFile):
                    raise ValueError("not an .npz archive")
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
            raise UserError(f"{what} {path} is unreadable ({reason[:200]})") from e

    def load_snapshot(self, step: int, rows: int | None = None) -> Snapshot:
        """The snapshot taken at `step`, its arrays checked (engine.records.check_snapshot; `rows`:
        the probe's size, when known); UserError when it is missing, unreadable or malformed."""
        path = self.path / "snapshots" / f"step_{step:07d}.npz"
        arrays = self._load_npz(path, "the snapshot")
        problem = check_snapshot(arrays, rows)
        if problem:
            raise UserError(f"the snapshot {path} is damaged: {problem}")
        return arrays

    def load_snapshots(self, steps: list[int] | None = None, rows: int | None = None) -> tuple[list[Snapshot], list[str]]:
        """(the snapshots at `steps` (default: all) that load and check, in order; one line per one
        skipped). A damaged snapshot costs its frame, never the run's view."""
        good, skipped = [], []
        for s in self.snapshot_steps() if steps is None else steps:
            try:
                snap = self.load_snapshot(s, rows)
            except UserError as e:
                skipped.append(str(e))
                continue
            if int(snap["step"].reshape(())) != s:
                skipped.append(f"the snapshot step_{s:07d}.npz says it is step {int(snap['step'].reshape(()))}")
                continue
            good.append(snap)
        return good, skipped

    def load_probe(self) -> dict[str, np.ndarray]:
        """The probe (snapshots/probe.npz), its arrays checked (engine.records.check_probe);
        UserError when it is missing, unreadable (object arrays are never unpickled) or malformed."""
        path = self.path / "snapshots" / "probe.npz"
        arrays = self._load_npz(path, "the probe")
        problem = check_probe(arrays)
        if problem:
            raise UserError(f"the probe {path} is damaged: {problem}")
        return arrays

    def drop_snapshots_after(self, step: int) -> None:
        for s in self.snapshot_steps():
            if s > step:
                (self.path / "snapshots" / f"step_{s:07d}.npz").unlink(missing_ok=True)

    # --- evaluations -------------------------------------------------------------------------
    def append_evaluation(self, result: dict) -> None:
        p = self.path / "evaluations.jsonl"
        cut = False
        if p.is_file() and p.stat().st_size > 0:
            with open(p, "rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        with open(p, "a", encoding="utf-8") as f:
            f.write(("\n" if cut else "") + json.dumps(result) + "\n")  # never glued to a cut-off line

    def read_evaluations(self) -> list[EvaluationRecord]:
        """The well-formed records of evaluations.jsonl (engine.records.read_evaluation_records), in
        order; how many non-blank lines were skipped is left in `skipped_evaluations`."""
        records, self.skipped_evaluations = read_evaluation_records(read_lines(self.path / "evaluations.jsonl"))
        return records


def _checkpoint_problem(state: dict) -> str | None:
    """Why a loaded checkpoint cannot be what Trainer.state() saved (None: it can): model weights
    and a step always; the other fields of Trainer.state() of their types where present (a caller
    that needs one missing says so)."""
    model = state.get("model")
    if not isinstance(model, dict) or not model or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        return "no model weights"
    step = state.get("step")
    if type(step) is not int or step < 0:
        return "its step is not a whole number"
    if "optimizer" in state and not isinstance(state["optimizer"], dict):
        return "its optimizer state is not a record"
    if "seconds" in state and (type(state["seconds"]) not in (int, float) or not 0 <= state["seconds"] < float("inf")):
        return "its training time is not a number"
    if "external_classes" in state and (type(state["external_classes"]) is not int or state["external_classes"] < 0):
        return "its number of external classes is not a whole number"
    if state.get("last_val") is not None and not isinstance(state["last_val"], dict):
        return "its last validation is not a record"
    return None


def as_run(run: RunDir | str | os.PathLike) -> RunDir:
    """A RunDir passed down as it is; a path opened (UserError when it is no run directory)."""
    return run if isinstance(run, RunDir) else RunDir.open(run)


def inside_runs_root(run_dir, root: str | os.PathLike | None = None) -> Path:
    """The run directory's real path (symbolic links resolved) if it lies strictly inside the runs
    root (default runs_root()); else UserError. The one rule for every run path the app takes from a
    visitor (the URL's ?run=, a widget) and for the services that act on a run. Refused: anything
    not a path string, an empty one, one holding a NUL byte, one over MAX_RUN_PATH_CHARS characters,
    one that cannot be resolved, the root itself and everything outside it."""
    try:
        text = os.fspath(run_dir)
    except TypeError:
        text = None
    root_real = Path(os.path.realpath(root if root is not None else runs_root()))
    if not isinstance(text, str) or not text or "\0" in text or len(text) > MAX_RUN_PATH_CHARS:
        shown = "this path" if not isinstance(text, str) or not text else repr(text[:80] + ("…" if len(text) > 80 else ""))
        raise UserError(f"{shown} is not a run under {root_real}; only runs inside the runs folder are used here")
    try:
        real = Path(os.path.realpath(text))
    except (OSError, ValueError):
        real = None
    if real is None or real == root_real or root_real not in real.parents:
        raise UserError(f"{text} is not a run under {root_real}; only runs inside the runs folder are used here")
    return real
