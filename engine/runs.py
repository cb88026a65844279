"""A run directory on disk:

  config.json        TrainConfig as a dict (everything needed to rebuild the run)
  splits.json        which classes went where, and the disjointness checks
  metrics.jsonl      one JSON object per step (kind "train") or validation (kind "val")
  checkpoints/       step_NNNNNNN.pt, written atomically, loaded with weights_only=True
  snapshots/         probe.npz (which images), step_NNNNNNN.npz (concepts and D's view of them)
  evaluations.jsonl  results of `engine evaluate` / `engine curve`
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from engine.config import runs_root
from engine.errors import UserError
from engine.records import MetricRecord, read_metric_records

FORMAT_VERSION = 1
KEEP_CHECKPOINTS = 2  # the newest plus one to fall back on if the newest is damaged
MAX_RUN_PATH_CHARS = 1000  # a run path handed to the app (a link, a widget) longer than this is refused unread


def atomic_write(path: Path, write) -> None:
    """Call write(file) on a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def read_lines(path: Path) -> list[str]:
    """The lines of a text file; none when it does not exist."""
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a line cut short by a crash is skipped."""
    out = []
    for line in read_lines(path):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class RunDir:
    """One run folder. Open it once per command or page and pass the object down: its config is
    parsed once (and again only when config.json changes on disk, e.g. a resume that adds steps)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._config: tuple[tuple[int, int, int], dict] | None = None  # ((inode, mtime_ns, size), config)

    # --- creation and config ---------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, config: dict) -> RunDir:
        run = cls(path)
        if run.path.exists() and any(run.path.iterdir()):
            raise UserError(f"{run.path} already exists and is not empty; choose another --out, "
                            f"or continue it with --resume {run.path}")
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            atomic_json(run.path / "config.json", {"format_version": FORMAT_VERSION, "config": config})
        except OSError as e:
            raise UserError(f"cannot write the run directory {run.path}: {e.strerror or e}") from e
        return run

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
                data = json.loads(path.read_text())
                if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
                    version = data.get("format_version") if isinstance(data, dict) else None
                    raise UserError(f"{self.path} was written by format {version}, this version reads {FORMAT_VERSION}")
                if not isinstance(data.get("config"), dict):
                    raise UserError(f"{path} holds no settings object; the run cannot be rebuilt")
                self._config = (stamp, data["config"])
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path} is unreadable ({e}); the run cannot be rebuilt") from e
        return dict(self._config[1])

    def train_config(self):
        """config() as a TrainConfig (defaults filled in for settings added after the run was made)."""
        from engine.config import TrainConfig  # here, so that reading runs needs no model code

        return TrainConfig.from_dict(self.config())

    def update_config(self, config: dict) -> None:
        atomic_json(self.path / "config.json", {"format_version": FORMAT_VERSION, "config": config})

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
        """The well-formed records of metrics.jsonl (engine.records.read_metric_records), in order."""
        return read_metric_records(read_lines(self.path / "metrics.jsonl"))

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only records up to `last_step` (on resume, what came after the checkpoint is redone)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        atomic_write(self.path / "metrics.jsonl", lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        return sorted((self.path / "checkpoints").glob("step_*.pt"))

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
                warnings.append(f"{path.name} has format {version}, expected {FORMAT_VERSION}")
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
        return sorted(int(p.stem[5:]) for p in (self.path / "snapshots").glob("step_*.npz"))

    def load_snapshot(self, step: int) -> dict[str, np.ndarray]:
        with np.load(self.path / "snapshots" / f"step_{step:07d}.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def load_probe(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "snapshots" / "probe.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

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

    def read_evaluations(self) -> list[dict]:
        return read_jsonl(self.path / "evaluations.jsonl")


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
