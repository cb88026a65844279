"""What a live view of a run keeps between refreshes (no UI here: ui/live.py draws it).

    live = LiveMap()                                   # one per browser session
    view = live.read("runs/20260101-demo")             # job or run directory -> metrics, snapshots, probe
    xy, regions, note = live.refresh(view.snapshots, view.probe, run=view.run_dir, method="umap",
                                     regions=True)     # the latest snapshot on a stable map
    frames = live.frames(view.snapshots, run=view.run_dir, method="umap")   # [(step, xy)] per snapshot

Cheap when nothing is new. `refresh` lays out only snapshots it has not seen: a call with the same
snapshots returns the cached layout (no projector work at all), so a page can call it every second.

Stable. One ConceptProjector per (run, method) carries the map from one snapshot to the next
(`update`: warm-started and Procrustes-aligned, so points glide instead of jumping). Every new
snapshot is laid out in training order, so the replay's frames are the very positions the live map
showed. A map opened on a run that already has snapshots (a finished run, another method) is fitted
on the latest snapshot first, so the live picture is right at once; the earlier frames are laid out
only when the replay asks for them, backwards from that first fit (the most trained frame gets the
best layout and earlier ones morph out of it: the sequence engine.viz.project.stable_layouts
computes in one go, which tests hold it to). The HTML report lays out its replay through frame_at
too, so the app and the report show the same moving picture.

UMAP warms up on a background thread; until it is ready the map is PCA and `note` says so, and the
first refresh after it is ready switches once (the projector starts UMAP from the PCA layout).

Snapshots and the probe are the run's own (engine.records.Snapshot and Probe document their fields).

Threads. Projections run under `threadpool_limits(1)`: on 2 shared cores an OpenMP or BLAS pool
fighting the trainer for cores made a 150-point t-SNE take 18 s instead of 0.3 s (measured), and a
one-thread refresh leaves the trainer its cores. A LiveMap guards its state with a lock, so the
two threads a Streamlit session can briefly have (a fragment rerun and a full rerun) cannot
interleave inside it; it is meant for one session, not to be shared across sessions.
"""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from threadpoolctl import ThreadpoolController

from engine.data.images import plural
from engine.errors import UserError
from engine.eval.twins import find_twin, twin_candidates
from engine.records import (
    MetricRecord,
    Probe,
    RunState,
    Snapshot,
    train_records,
)
from engine.runs import RunDir
from engine.services.training import run_jobs
from engine.train.job import REGISTRY, JobRegistry
from engine.viz import project
from engine.viz.project import ConceptProjector, procrustes_align, procrustes_transform
from engine.viz.regions import RegionGrid, regions_for
from engine.viz.run_view import DiskRun, RunView, config_lam, device_name

REGION_GRID = 50  # region cells per side: 2,500 cells read well behind 150-1,500 points
NOTE_S = 15.0  # how long a one-off note about the map (UMAP took over from PCA) stays up
TWIN_RECHECK_S = 5.0  # how often an unpaired run looks for its twin again (find_twin reads every config)


_CONTROLLER: ThreadpoolController | None = None


def _controller() -> ThreadpoolController:
    """The thread pools loaded now (BLAS, OpenMP), inspected once: limiting through a kept
    controller costs microseconds, threadpool_limits() inspects every library each time (~3 ms)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def _step(snapshot: Snapshot) -> int:
    return int(snapshot["step"])


def aligned_to(xy: np.ndarray, ref_xy: np.ndarray | None) -> np.ndarray:
    """`xy` rotated or reflected, scaled uniformly and moved onto `ref_xy` (orthogonal Procrustes over
    the rows both share: the same probe images): two runs' maps drawn side by side in one orientation.
    Unchanged when there is no reference or the rows differ (other probe images)."""
    if ref_xy is None or np.shape(xy) != np.shape(ref_xy) or len(xy) < 3:
        return np.asarray(xy, dtype=np.float32)
    return procrustes_align(xy, ref_xy, scale=True)


def selected_rows(selection) -> list[int]:
    """Probe rows of the points in a plotly selection (st.plotly_chart's event.selection, or a dict
    with "points"): customdata[0] of each concept-map point; points of other traces (the region
    heatmap) are ignored. Order kept, duplicates dropped."""
    points = (selection or {}).get("points", []) if hasattr(selection, "get") else []
    rows: list[int] = []
    for p in points:
        cd = p.get("customdata") if hasattr(p, "get") else None
        if isinstance(cd, (list, tuple)) and cd:
            cd = cd[0]
        if isinstance(cd, (int, float, np.integer, np.floating)) and not isinstance(cd, bool) and float(cd) >= 0:
            r = int(cd)
            if r not in rows:
                rows.append(r)
    return rows


# ------------------------------------------------------------------------------------------------
# The map
# ------------------------------------------------------------------------------------------------
class _Track:
    """One projector's map of one run: a frame (P, 2) per laid-out snapshot, in one coordinate
    system; regions per step where they were computed."""

    def __init__(self, method: str, seed: int):
        self.method, self.seed = method, seed
        self.reset()

    def reset(self) -> None:
        """An empty map (a new one, or a run that went back in time)."""
        self.projector = ConceptProjector(self.method, seed=self.seed)
        self.frames: dict[int, np.ndarray] = {}
        self.frame_method: dict[int, str] = {}
        self.regions: dict[tuple[int, int], RegionGrid | None] = {}  # (step, grid) -> regions
        self.last_step: int | None = None  # the step of the projector's current layout
        self.first_step: int | None = None  # the first step fitted; earlier frames go backwards from it
        self.back: ConceptProjector | None = None  # a second projector walking back in time from first_step
        self.back_affine = (np.eye(2), 1.0, np.zeros(2))  # back's coordinates -> this map's
        self.back_step: int | None = None  # the step of `back`'s current layout
        self.version = getattr(self, "version", 0) + 1  # grows with every frame laid out (a view redraws on it)
        self.note = ""
        self.note_at = 0.0  # when the note was made (a note about a switch is shown for NOTE_S only)


class LiveMap:
    """A session's maps of the runs it views: one ConceptProjector per (run, method). See the module
    docstring. `layouts` counts projector fits and updates (tests and benchmarks read it)."""

    def __init__(self, seed: int = 0, grid: int = REGION_GRID, warm_up: bool = True, threads: int | None = 1):
        self.seed, self.grid, self.warm_up, self.threads = seed, grid, warm_up, threads
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._disk: dict[str, DiskRun] = {}
        self._twins: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.RLock()
        self.layouts = 0

    # --- reading a run ------------------------------------------------------------------------
    def read(self, run_dir: str | None, registry: JobRegistry = REGISTRY) -> RunView:
        """The run as the view shows it now: from its job while one is registered (training, or
        finished in this process), else from its run directory; "none" when it is neither."""
        if not run_dir:
            return RunView(None, "none", RunState.NONE)
        job, _ = run_jobs(run_dir, registry)
        with self._lock:
            if job is not None:
                view = RunView(run_dir, "job", job.state, progress=job.progress(), device=device_name(job),
                               error=job.error, warnings=list(job.warnings), metrics=job.metrics(),
                               snapshots=job.snapshots(), probe=job.trainer.probe if job.trainer else None)
                if view.probe is None and job.trainer is None:
                    view.snapshots = []  # nothing to place them with yet
                view.lam = job.trainer.cfg.lam if job.trainer is not None else config_lam(RunDir(run_dir))
            else:
                disk = self._disk.setdefault(run_dir, DiskRun(run_dir))
                if not disk.exists():
                    return RunView(run_dir, "none", RunState.NONE, error=f"{run_dir} is not a run directory (no config.json)")
                holder = disk.run.locked_by()  # trained by another process (the command line, another server)
                view = RunView(run_dir, "disk", RunState.SAVED if holder is None else RunState.ELSEWHERE,
                               metrics=disk.run.read_metrics(), snapshots=disk.snapshots(), probe=disk.probe())
                view.progress = self._disk_progress(disk, view.metrics)
                if holder is not None:
                    view.progress["state"], view.holder = RunState.ELSEWHERE, str(holder)
                view.warnings = list(disk.problems.values())
                if disk.run.skipped_metrics:
                    view.warnings.append(f"{plural(disk.run.skipped_metrics, 'damaged line', 'damaged lines')} "
                                         "of metrics.jsonl skipped")
                view.lam = config_lam(disk.run)  # parsed once, again only if config.json changes
            self._read_twin(view, registry)
            return view

    @staticmethod
    def _disk_progress(disk: DiskRun, metrics: list[MetricRecord]) -> dict:
        try:
            cfg = disk.run.train_config()
            steps, minutes = cfg.steps, cfg.minutes
        except UserError:
            steps, minutes = 0, 0.0
        train = train_records(metrics)
        step = max((int(m["step"]) for m in train), default=0)
        seconds = max((float(m["seconds"]) for m in metrics if m.get("seconds") is not None), default=0.0)
        # a run bounded by --minutes records its progress (its steps are only an upper bound)
        recorded = float(train[-1].get("progress") or 0.0) if train else 0.0
        fraction = max(recorded, min(1.0, step / steps) if steps else 0.0)
        return {"state": RunState.SAVED, "step": step, "steps": steps, "seconds": seconds, "eta_seconds": None,
                "fraction": fraction, "error": None, "minutes": minutes}

    def twin_of(self, run_dir: str, registry: JobRegistry = REGISTRY) -> str | None:
        """The run's lambda = 0 twin (or, for a twin, its DEML run): the folder the app starts it
        in, else engine.eval.twins.find_twin (re-asked at most every TWIN_RECHECK_S while unpaired)."""
        cached, when = self._twins.get(run_dir, (None, -1e9))
        if cached is not None:
            return cached
        if time.monotonic() - when < TWIN_RECHECK_S:
            return None
        found = next((c for c in twin_candidates(run_dir)
                      if registry.get(c) is not None or (Path(c) / "config.json").is_file()), None)
        if found is None and (Path(run_dir) / "config.json").is_file():
            try:
                found = find_twin(run_dir)
            except (UserError, OSError):
                found = None
        self._twins[run_dir] = (found, time.monotonic())
        return found

    def _read_twin(self, view: RunView, registry: JobRegistry) -> None:
        twin = self.twin_of(view.run_dir, registry)
        if twin is None:
            return
        view.twin_dir = twin
        job = registry.get(twin)
        if job is not None:
            view.twin_state, view.twin_metrics, view.twin_progress = job.state, job.metrics(), job.progress()
            view.twin_probe = job.trainer.probe if job.trainer is not None else None
            view.twin_snapshots = job.snapshots() if view.twin_probe is not None else []
        else:
            disk = self._disk.setdefault(twin, DiskRun(twin))
            run = disk.run
            view.twin_state = RunState.SAVED if run.locked_by() is None else RunState.ELSEWHERE
            view.twin_metrics = run.read_metrics()
            view.twin_probe, view.twin_snapshots = disk.probe(), disk.snapshots()

    # --- the live map -------------------------------------------------------------------------
    def _track(self, run: str, method: str) -> _Track:
        key = (run, method)
        if key not in self._tracks:
            self._tracks[key] = _Track(method, self.seed)
        return self._tracks[key]

    def _limits(self):
        return _controller().limit(limits=self.threads) if self.threads else contextlib.nullcontext()

    def _advance(self, track: _Track, snapshots: list[Snapshot]) -> None:
        """Lay out the snapshots the track has not seen, in order (none: nothing happens)."""
        if self.warm_up and track.projector.method == "umap":
            project.start_umap_warmup()  # idempotent; the map is PCA until it is ready
        if not snapshots:
            return
        latest = snapshots[-1]
        if track.last_step is not None and not any(_step(s) == track.last_step for s in snapshots):
            # the run went back (resumed from an earlier checkpoint, later snapshots dropped): start again
            track.reset()
        if track.last_step is None:  # a new map: the latest snapshot first (earlier ones: see frames())
            track.projector.fit(latest["concepts"])
            self.layouts += 1
            self._keep(track, _step(latest))
            track.first_step = track.back_step = _step(latest)
            return
        new = [s for s in snapshots if _step(s) > track.last_step]
        if not new and self._switch_due(track):
            new = [s for s in snapshots if _step(s) == track.last_step][-1:]  # relayout once as UMAP
        for snap in new:
            track.projector.update(snap["concepts"])
            self.layouts += 1
            self._keep(track, _step(snap))

    def _start_back(self, track: _Track, snapshots: list[Snapshot]) -> None:
        """A second projector for the frames before the map's first fit: fitted on that same
        snapshot (the same layout when nothing changed in between) and mapped onto the frame the
        map shows for it by a Procrustes transform, so both walks share one coordinate system."""
        first = next(s for s in snapshots if _step(s) == track.first_step)
        track.back = ConceptProjector(track.projector.method, seed=self.seed).fit(first["concepts"])
        self.layouts += 1
        track.back_affine = procrustes_transform(track.back.embedding_, track.frames[track.first_step],
                                                 scale=track.back.method_ != "pca")

    @staticmethod
    def _switch_due(track: _Track) -> bool:
        """UMAP was asked for, PCA is shown because it was warming up, and it is ready now."""
        p = track.projector
        return p.method == "umap" and getattr(p, "method_", None) == "pca" and project.umap_status() == "ready"

    @staticmethod
    def _keep(track: _Track, step: int) -> None:
        p = track.projector
        track.frames[step] = p.embedding_
        track.frame_method[step] = p.method_
        track.regions = {k: v for k, v in track.regions.items() if k[0] != step}  # relaid: old regions are off
        track.last_step = step
        track.version += 1
        track.note, track.note_at = p.note_, time.monotonic()

    def refresh(self, snapshots: list[Snapshot], probe: Probe | None, run: str = "", method: str = "umap",
                regions: bool = False, grid: int | None = None) -> tuple[np.ndarray | None, RegionGrid | None, str]:
        """(xy (P, 2) of the latest snapshot, D's regions on this map or None, a note for the UI:
        "" or why the map is not what was asked, e.g. PCA while UMAP warms up). Lays out only
        snapshots it has not seen; with nothing new it returns the cached layout."""
        grid = grid or self.grid
        snapshots = sorted(snapshots or [], key=_step)
        if not snapshots or probe is None:
            return None, None, "no snapshot yet: the first one comes with the first training step"
        with self._lock, self._limits():
            track = self._track(run, method)
            self._advance(track, snapshots)
            step = track.last_step
            latest = next(s for s in reversed(snapshots) if _step(s) == step)
            reg = self._regions(track, latest, probe, step, grid, exact=True) if regions else None
            return track.frames[step], reg, self._note(track)

    @staticmethod
    def _note(track: _Track) -> str:
        """A fallback (PCA while UMAP warms up) is said as long as it lasts; anything else (UMAP took
        over) for NOTE_S after it happened."""
        p = track.projector
        if p.method_ != p.method or time.monotonic() - track.note_at < NOTE_S:
            return track.note
        return ""

    def _regions(self, track: _Track, snap: Snapshot, probe: Probe, step: int, grid: int, exact: bool):
        key = (step, grid)
        if key not in track.regions:
            if exact and step == track.last_step:
                proj = track.projector  # exact on PCA: the projector's current plane
            else:  # a replay frame: the projector has moved on, nearest-probe regions on its positions
                proj = SimpleNamespace(method_=f"replay-{track.frame_method.get(step)}", embedding_=track.frames[step])
            track.regions[key] = regions_for(proj, snap, probe, grid=grid)
        return track.regions[key]

    # --- the replay ---------------------------------------------------------------------------
    def frames(self, snapshots: list[Snapshot], run: str = "", method: str = "umap", down_to: int | None = None
               ) -> list[tuple[int, np.ndarray]]:
        """[(step, xy)] for every snapshot (down to step `down_to` when given), all on this map's
        stable projector: the live frames as they were shown, earlier ones laid out backwards."""
        snapshots = sorted(snapshots or [], key=_step)
        if not snapshots:
            return []
        with self._lock, self._limits():
            track = self._track(run, method)
            self._advance(track, snapshots)
            lo = _step(snapshots[0]) if down_to is None else down_to
            for snap in reversed(snapshots):  # backwards from the first fit, as far down as asked
                s = _step(snap)
                if s >= track.back_step or s in track.frames:
                    continue
                if s < lo:
                    break
                if track.back is None:
                    self._start_back(track, snapshots)
                track.back.update(snap["concepts"])
                self.layouts += 1
                R, scale, t = track.back_affine
                track.frames[s] = (scale * track.back.embedding_.astype(np.float64) @ R + t).astype(np.float32)
                track.frame_method[s] = track.back.method_
                track.back_step = s
                track.version += 1
            return [(_step(s), track.frames[_step(s)]) for s in snapshots
                    if _step(s) >= lo and _step(s) in track.frames]

    def frame_at(self, snapshots: list[Snapshot], probe: Probe, step: int, run: str = "", method: str = "umap",
                 regions: bool = False, grid: int | None = None) -> tuple[np.ndarray | None, RegionGrid | None, Snapshot | None]:
        """(xy, regions, snapshot) of the snapshot at `step` on the stable map (a replay position)."""
        grid = grid or self.grid
        snapshots = sorted(snapshots or [], key=_step)
        snap = next((s for s in snapshots if _step(s) == int(step)), None)
        if snap is None or probe is None:
            return None, None, None
        frames = dict(self.frames(snapshots, run, method, down_to=int(step)))
        if int(step) not in frames:
            return None, None, snap
        with self._lock, self._limits():
            track = self._track(run, method)
            reg = self._regions(track, snap, probe, int(step), grid, exact=int(step) == track.last_step) \
                if regions else None
        return frames[int(step)], reg, snap

    def twin_frame(self, twin_snapshots: list[Snapshot], probe: Probe | None, ref_xy: np.ndarray | None, step: int,
                   run: str = "", method: str = "umap", regions: bool = False, grid: int | None = None
                   ) -> tuple[np.ndarray | None, RegionGrid | None, Snapshot | None]:
        """The twin's map beside the run's, synced: its snapshot at `step` (the latest at or before it:
        snapshots by time fall on different steps in the two runs), laid out by the same method on its
        own stable projector (`run`: the twin's folder), then turned onto the run's frame `ref_xy` by an
        orthogonal Procrustes transform on the shared probe images (aligned_to), so a class sits
        where it sits on the run's map. Regions: the discriminator's, nearest-probe on those positions."""
        twin_snapshots = sorted(twin_snapshots or [], key=_step)
        upto = [s for s in twin_snapshots if _step(s) <= int(step)] or twin_snapshots[:1]
        if not upto or probe is None:
            return None, None, None
        snap = upto[-1]
        if _step(snap) == _step(twin_snapshots[-1]):
            xy, _, _ = self.refresh(twin_snapshots, probe, run=run, method=method)
        else:
            xy, _, _ = self.frame_at(twin_snapshots, probe, _step(snap), run=run, method=method)
        if xy is None:
            return None, None, snap
        xy = aligned_to(xy, ref_xy)
        reg = None
        if regions:
            with self._lock, self._limits():
                reg = regions_for(SimpleNamespace(method_=f"replay-{self.method_shown(run, method)}", embedding_=xy),
                                  snap, probe, grid=grid or self.grid)
        return xy, reg, snap

    def layout_version(self, run: str, method: str) -> int:
        """A number that changes whenever the (run, method) map lays out a frame (0 before any)."""
        track = self._tracks.get((run, method))
        return track.version if track else 0

    def method_shown(self, run: str, method: str) -> str | None:
        """What the (run, method) map actually uses now ("pca" while UMAP warms up), None before a layout."""
        track = self._tracks.get((run, method))
        return getattr(track.projector, "method_", None) if track else None

    def forget(self, run: str) -> None:
        """Drop every map and cached read of `run` (e.g. after it was deleted)."""
        with self._lock:
            for key in [k for k in self._tracks if k[0] == run]:
                del self._tracks[key]
            self._disk.pop(run, None)
            self._twins.pop(run, None)
