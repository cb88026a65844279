"""Starting, pausing, resuming and stopping training from the app: a run and the lambda = 0 twin
started beside it move together. Jobs live in the process-wide registry (engine.train.job); each
trains in a process of its own (engine.train.worker), so pages refreshing in the server never hold
the GIL against training."""
from __future__ import annotations

import os
import re
import threading
from datetime import datetime
from pathlib import Path

from engine.errors import UserError
from engine.eval.twins import twin_dir_for
from engine.models.deml import resolve_device
from engine.records import RunState, train_records
from engine.run_lock import locked_message
from engine.runs import RunDir, clean_run_name, inside_runs_root
from engine.train.budget import check_step_memory
from engine.train.job import REGISTRY, JobRegistry, TrainingJob

_prepared: threading.Thread | None = None
_prepared_lock = threading.Lock()


def prepare_server() -> threading.Thread:
    """Make Start demo and the first maps fast, on a daemon thread; returns at once (app.py calls it
    when a server's first page opens; idempotent). In this order, so that each part has the cores to
    itself rather than all three racing for 2: the forkserver that training processes come from
    (engine.train.worker.warm_up: it imports torch and the trainer once, then a job starts in
    milliseconds), the demo preset's data into the disk cache (engine.data.sources.diskcache, where a
    training process reads it in a fraction of a second), then UMAP's warm-up (engine.viz.project:
    maps show PCA until it is ready). Started all at once, on a fresh server the first job waited
    ~8 s for the forkserver (Start demo -> map 9-13 s, BENCHMARKS.md)."""
    global _prepared
    with _prepared_lock:
        if _prepared is None:
            _prepared = threading.Thread(target=_prepare_server, name="server-warm-up", daemon=True)
            _prepared.start()
        return _prepared


def _prepare_server() -> None:
    from engine.config import preset
    from engine.data.imageset import Preprocess
    from engine.data.sources import load_imageset
    from engine.train import worker
    from engine.viz.project import start_umap_warmup

    try:
        worker.warm_up()
    except Exception:  # noqa: BLE001 - only a head start: the first job starts the forkserver itself
        pass
    try:
        cfg = preset("demo")
        data = load_imageset(cfg.dataset, cfg.preprocess())
        if cfg.external not in ("auto", "none"):  # the demo's own external set, prepared as the trainer will
            load_imageset(cfg.external, Preprocess(data.image_size, data.channels, cfg.polarity))
    except Exception:  # noqa: BLE001 - the click's own load reports what is wrong, in the page's words
        pass
    finally:
        start_umap_warmup()


def new_run_dir(root: str | Path, name: str, now: datetime | None = None) -> str:
    """A fresh run folder name under `root`: STAMP-name, with -2, -3... when taken (also when its
    twin folder is taken, so a twin can always start beside it)."""
    stamp = f"{(now or datetime.now()):%Y%m%d-%H%M%S}"
    base = Path(root) / f"{stamp}-{name}"
    candidate, i = base, 1
    while candidate.exists() or Path(twin_dir_for(str(candidate))).exists() or REGISTRY.get(str(candidate)):
        i += 1
        candidate = Path(f"{base}-{i}")
    return str(candidate)


DEMO = "demo"  # the name new_run_dir gives the demo's run folders: STAMP-demo, STAMP-demo-2, ...
_DEMO_NAME = re.compile(r"\d{8}-\d{6}-" + DEMO + r"(-\d+)?")


def is_demo_dir(run_dir: str) -> bool:
    """Is this the folder of a demo run (new_run_dir(root, DEMO)); its twin's folder is not."""
    return bool(_DEMO_NAME.fullmatch(Path(str(run_dir).rstrip("/\\")).name))


def running_demo(registry: JobRegistry = REGISTRY) -> str | None:
    """The run folder of the demo this server trains now (running or paused; the newest if several),
    or None: Start demo goes to it instead of starting a second one."""
    demos = [j.run_dir for j in registry.active() if j.run_dir and is_demo_dir(j.run_dir)]
    return demos[-1] if demos else None


def start_runs(cfg, out: str, twin: bool = False, registry: JobRegistry = REGISTRY,
               words: dict[str, str] | None = None, plan=None, name: str | None = None) -> list[TrainingJob]:
    """Start a TrainingJob for `cfg` in `out`, and with `twin` a second one with lam = 0 and every
    other setting identical in twin_dir_for(out). Each trains in a process of its own; they share the
    machine's cores. Raises UserError, before anything starts, for a twin of a run that already
    has lam = 0, when the server runs as many jobs as it may (engine.train.job.max_jobs), or when
    a step of the runs cannot fit in the memory available (engine.train.budget; `words` names the
    settings in that message, as the page calls them). `plan` (engine.data.plan) is saved in each
    run's splits.json, `name` in name.json (the twin's: "NAME (λ = 0)")."""
    if twin and cfg.lam == 0:
        raise UserError("this run already has λ = 0 (the vanilla meta-learner): its twin would be the same run; "
                        "set λ > 0 to compare DEML with its λ = 0 twin")
    name = clean_run_name(name) if name else None
    registry.check_room(1 + twin)
    device = resolve_device(cfg.device)
    check_step_memory(cfg, device, runs=1 + twin, words=words)
    threads = threads_per_job(1 + twin, registry) if device.type == "cpu" else None
    jobs = [registry.start(TrainingJob(cfg, out=out, threads=threads, plan=plan, name=name, process=True))]
    if twin:
        jobs.append(registry.start(TrainingJob(cfg.with_overrides(lam=0.0), out=twin_dir_for(out), threads=threads,
                                               plan=plan, name=f"{name} (λ = 0)" if name else None, process=True)))
    return jobs


def threads_per_job(starting: int, registry: JobRegistry = REGISTRY) -> int:
    """torch threads for each of `starting` new CPU jobs: the cores this process may use, shared with
    the jobs training now (a run and its twin on 2 cores: one each, not two each fighting for them)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    busy = sum(1 for j in registry.active())
    return max(1, cores // max(1, busy + starting))


_demo_lock = threading.Lock()


def start_demo(root: str | Path, another: bool = False, registry: JobRegistry = REGISTRY) -> str:
    """Start demo: the demo preset AND its lambda = 0 twin (same seed, same probe and validation
    episodes), so the live view shows DEML and vanilla side by side. While a demo trains this returns
    that demo's folder instead of starting a second pair (a double click starts one pair); `another`
    starts a second pair on purpose. UserError as start_runs."""
    from engine.config import preset

    with _demo_lock:
        if not another and (running := running_demo(registry)) is not None:
            return running
        out = new_run_dir(root, DEMO)
        start_runs(preset(DEMO), out, twin=True, registry=registry)
        return out


def run_jobs(run_dir: str | None, registry: JobRegistry = REGISTRY) -> tuple[TrainingJob | None, TrainingJob | None]:
    """The run's job and its twin's job in the registry (None where there is none)."""
    if not run_dir:
        return None, None
    return registry.get(run_dir), registry.get(twin_dir_for(run_dir))


def is_active(run_dir: str | None, registry: JobRegistry = REGISTRY) -> bool:
    """Is the run, or the twin the app started beside it, still training (or paused), here or in
    another process (which holds the run's lock)? A live view polls exactly while this is true; a
    view and its page must decide it the same way."""
    jobs = run_jobs(run_dir, registry)
    if any(j is not None and not j.done for j in jobs):
        return True
    return bool(run_dir) and jobs[0] is None and RunDir(run_dir).locked_by() is not None


def awaits_first_snapshot(run_dir: str | None, registry: JobRegistry = REGISTRY) -> bool:
    """Is the run's job here starting or training with no snapshot yet (its map not drawable)?"""
    job, _ = run_jobs(run_dir, registry)
    return job is not None and not job.done and not job.snapshots()


def confined(run_dir: str, root=None) -> list[str]:
    """The run and its twin's folder, each checked to lie strictly inside the runs root (UserError
    otherwise): the app acts only on runs there, however a path reached it."""
    twin = twin_dir_for(run_dir)
    inside_runs_root(run_dir, root)
    inside_runs_root(twin, root)  # a twin folder that is a link to elsewhere is refused too
    return [run_dir, twin]


def pause_runs(run_dir: str, registry: JobRegistry = REGISTRY, root=None) -> None:
    confined(run_dir, root)
    for job in run_jobs(run_dir, registry):
        if job is not None and not job.done:
            job.pause()


def stop_runs(run_dir: str, registry: JobRegistry = REGISTRY, root=None) -> None:
    """Stop after the current step; each run checkpoints, so Resume continues it later."""
    confined(run_dir, root)
    for job in run_jobs(run_dir, registry):
        if job is not None and not job.done:
            job.stop()


def _continuable(run_dir: str) -> bool:
    try:
        run = RunDir.open(run_dir)
        steps = int(run.config().get("steps", 0))
    except UserError:
        return False
    if not run.checkpoints():
        return False
    trained = max((int(m["step"]) for m in train_records(run.read_metrics())), default=0)
    return trained < steps


def resume_runs(run_dir: str, registry: JobRegistry = REGISTRY, root=None) -> list[TrainingJob]:
    """Un-pause a paused run (and its twin); a stopped one, or a saved one left unfinished,
    continues from its last checkpoint in a new job. Returns the jobs that now train. Only runs
    strictly inside the runs root (`root`, default runs_root()); anything else is a UserError, and
    a run (or twin) that another process trains is refused (UserError naming it) before anything starts."""
    pairs = list(zip(confined(run_dir, root), run_jobs(run_dir, registry)))
    for d, job in pairs:
        if job is None or job.done:
            holder = RunDir(d).locked_by()
            if holder is not None:
                raise UserError(f"Resume refused: {locked_message(d, holder)}")
    out, later = [], []
    for d, job in pairs:
        if job is not None and not job.done:
            job.resume()
            out.append(job)
        elif (job is None or job.state == RunState.STOPPED) and _continuable(d):
            later.append(d)
    if later:
        registry.check_room(len(later))  # a run and its twin start together or not at all
    threads = threads_per_job(len(later), registry) if later else None
    return out + [registry.start(TrainingJob(resume_from=d, threads=threads, process=True)) for d in later]
