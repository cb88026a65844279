"""Benchmark of the live view (python -m engine bench live): what one refresh costs, and how much a
page refreshing once a second slows the training it shows.

1. Refresh time, after the UMAP warm-up, at the preset's probe size: `LiveMap.refresh` with a new
   snapshot (projector update + decision regions) and without one (the cached layout), plus the
   figures the page builds each refresh (concept map, training curves) and their JSON
   serialisation (what st.plotly_chart sends). Real snapshots of a short run of the preset.
2. Slowdown: one TrainingJob of the preset trains for the whole measurement while a refresher
   thread in the same process (as in the Streamlit server) is switched off and on in alternating
   windows; steps/s with the refresher over steps/s without it, paired by adjacent windows (the
   machine is shared and noisy, so only ratios within one run are compared). Repeated for each
   trainer thread count asked (torch.set_num_threads inside the job's thread; None = torch's
   default). The refresher does what a page does each second: read the job, refresh the map
   (regions on), build both figures and serialise them. Rates are given per second of training-step
   time (trainer.seconds: what the trainer's own work costs) and per second of wall time.
3. With --browser instead: a real watched demo (engine.bench.watched): the app served, Start demo
   pressed in Chromium, steps/s with the live view open against closed, as a paired ratio.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time

import plotly.io
import torch

from engine.bench import SMOKE_DATA_SET, SMOKE_MODEL, add_rounds, check_rounds
from engine.bench.machine import machine
from engine.config import preset
from engine.train.job import JobRegistry, TrainingJob
from engine.train.trainer import Trainer
from engine.viz.charts import concept_map, training_curves
from engine.viz.live import LiveMap
from engine.viz.project import wait_for_umap

# a tiny model on tiny data, three snapshots, one round of two half-second windows, one thread count
SMOKE = dict(overrides=dict(**SMOKE_DATA_SET, **SMOKE_MODEL), snapshots=3, repeats=1, rounds=1, window_s=0.5,
             threads=(1,))


def _ms(values: list[float]) -> float:
    return round(1e3 * statistics.median(values), 2)


def page_refresh(lm: LiveMap, view, method: str = "umap", regions: bool = True) -> None:
    """One refresh as the live view does it, less Streamlit itself."""
    xy, reg, note = lm.refresh(view.snapshots, view.probe, run=view.run_dir, method=method, regions=regions)
    if xy is not None:
        plotly.io.to_json(concept_map(xy, view.probe, view.snapshots[-1], regions=reg, method_note=note or None),
                          validate=False)
    if view.metrics:
        plotly.io.to_json(training_curves(view.metrics, view.twin_metrics), validate=False)


def refresh_times(cfg, snapshots: int = 10, steps_between: int = 2, repeats: int = 5, log=sys.stderr) -> dict:
    """Part 1: milliseconds per refresh, by method, with and without a new snapshot."""
    trainer = Trainer(cfg)
    snaps, metrics = [trainer.snapshot()], []
    for _ in range(snapshots - 1):
        for _ in range(steps_between):
            metrics.append(trainer.train_step())
        snaps.append(trainer.snapshot())
    metrics += [{"kind": "val", "step": trainer.step, "val_acc": 0.5, "val_ci95": 0.02}]
    probe = trainer.probe
    t0 = time.perf_counter()
    ready = wait_for_umap(120)
    warm = time.perf_counter() - t0
    print(f"UMAP warm-up {'ready' if ready else 'NOT ready'} after {warm:.1f} s more", file=log, flush=True)
    out = {"probe_points": len(probe["split"]), "umap_ready": ready, "methods": {}}
    for method in ("umap", "pca", "tsne"):
        lm = LiveMap(warm_up=False)
        lm.refresh(snaps[:1], probe, run="bench", method=method, regions=True)  # the map's first fit
        new, cached, fig_map, fig_curves, ser = [], [], [], [], []
        for i in range(2, len(snaps) + 1):
            t0 = time.perf_counter()
            xy, reg, note = lm.refresh(snaps[:i], probe, run="bench", method=method, regions=True)
            new.append(time.perf_counter() - t0)
            for _ in range(repeats):
                t0 = time.perf_counter()
                lm.refresh(snaps[:i], probe, run="bench", method=method, regions=True)
                cached.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fm = concept_map(xy, probe, snaps[i - 1], regions=reg, method_note=note or None)
            fig_map.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fc = training_curves(metrics[: i * steps_between])
            fig_curves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            plotly.io.to_json(fm, validate=False)
            plotly.io.to_json(fc, validate=False)
            ser.append(time.perf_counter() - t0)
        row = {"refresh_new_snapshot_ms": _ms(new), "refresh_cached_ms": _ms(cached), "map_figure_ms": _ms(fig_map),
               "curves_figure_ms": _ms(fig_curves), "serialise_ms": _ms(ser),
               "total_new_snapshot_ms": _ms([a + b + c + d for a, b, c, d in zip(new, fig_map, fig_curves, ser)]),
               "shown": lm.method_shown("bench", method)}
        out["methods"][method] = row
        print(f"{method}: {row}", file=log, flush=True)
    return out


def _next_step(job: TrainingJob, poll_s: float = 0.005) -> tuple[int, float]:
    """(step, time) at the moment the job completes its next step (so rates count whole steps)."""
    s0 = job.progress()["step"]
    while True:
        s = job.progress()["step"]
        if s != s0 or job.done:
            return s, time.perf_counter()
        time.sleep(poll_s)


class _ThreadsJob(TrainingJob):
    """A TrainingJob whose thread sets its own torch thread count first (per thread in torch)."""

    def __init__(self, *args, threads: int | None = None, **kw):
        super().__init__(*args, **kw)
        self._threads = threads

    def _main(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)
        super()._main()


def slowdown(cfg, out_dir: str, threads: int | None, rounds: int = 5, window_s: float = 8.0,
             hz: float = 1.0, log=sys.stderr) -> dict:
    """Part 2 for one trainer thread count: steps/s with the refresher on over off."""
    registry = JobRegistry()
    # no validation during the measurement: 100 episodes every 100 steps land in some windows and
    # not others and swamp the difference measured (snapshots and checkpoints stay as configured)
    job = registry.start(_ThreadsJob(cfg.with_overrides(steps=10**7, val_every=10**7), out=out_dir, threads=threads))
    lm = LiveMap(warm_up=False)
    refreshing = threading.Event()
    quit_ = threading.Event()
    refresh_s: list[float] = []

    def refresher():
        while not quit_.is_set():
            if not refreshing.wait(0.1):
                continue
            t0 = time.perf_counter()
            page_refresh(lm, lm.read(out_dir, registry))
            dt = time.perf_counter() - t0
            refresh_s.append(dt)
            quit_.wait(max(0.0, 1.0 / hz - dt))

    thread = threading.Thread(target=refresher, daemon=True, name="bench-refresher")
    thread.start()
    try:
        while job.progress()["step"] < 30 and not job.done:  # past the first snapshots and warm-up steps
            time.sleep(0.2)
        if job.done:
            raise RuntimeError(f"the benchmark job ended early: {job.error}")
        ratios, wall_ratios, rates, wall = [], [], {"off": [], "on": []}, {"off": [], "on": []}
        for r in range(rounds):
            pair, wpair = {}, {}
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):  # alternate which goes first
                (refreshing.set if mode == "on" else refreshing.clear)()
                time.sleep(0.3)  # let a refresh in flight finish before counting
                s0, t0 = _next_step(job)
                c0 = job.trainer.seconds
                time.sleep(window_s)
                s1, t1 = _next_step(job)
                c1 = job.trainer.seconds
                # training steps per second of step time (validation, snapshots and checkpoints, which
                # land in some windows and not others, left out), and per second of wall time
                pair[mode], wpair[mode] = (s1 - s0) / max(c1 - c0, 1e-9), (s1 - s0) / (t1 - t0)
                rates[mode].append(pair[mode])
                wall[mode].append(wpair[mode])
            ratios.append(pair["on"] / pair["off"])
            wall_ratios.append(wpair["on"] / wpair["off"])
            print(f"threads={threads}: round {r + 1}/{rounds}: {pair['off']:.2f} steps/s without, "
                  f"{pair['on']:.2f} with the refresher (ratio {ratios[-1]:.3f}; wall clock {wall_ratios[-1]:.3f})",
                  file=log, flush=True)
    finally:
        quit_.set()
        refreshing.set()
        job.stop()
        job.join(120)
        thread.join(10)
    return {"trainer_threads": threads or torch.get_num_threads(),
            "steps_per_s_off": round(statistics.median(rates["off"]), 2),
            "steps_per_s_on": round(statistics.median(rates["on"]), 2), "ratio_median": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
            "slowdown_pct": round(100 * (1 - statistics.median(ratios)), 1),
            "wall_steps_per_s_off": round(statistics.median(wall["off"]), 2),
            "wall_steps_per_s_on": round(statistics.median(wall["on"]), 2),
            "wall_ratio_median": round(statistics.median(wall_ratios), 3),
            "refresh_ms_median": _ms(refresh_s) if refresh_s else None, "refreshes": len(refresh_s)}


def live_benchmark(preset_name: str = "demo", rounds: int = 8, window_s: float = 10.0,
                   threads: tuple[int | None, ...] = (None, 1), out_root: str | None = None, log=sys.stderr,
                   overrides: dict | None = None, snapshots: int = 10, repeats: int = 5) -> dict:
    """Both parts; one JSON-able dict. Run directories go to a temporary folder (out_root).
    overrides change the preset's TrainConfig (--smoke: a tiny model on tiny data)."""
    cfg = preset(preset_name).with_overrides(device="cpu", **(overrides or {}))
    result = {"benchmark": "live", "preset": preset_name, "machine": machine()}
    result["refresh"] = refresh_times(cfg, snapshots=snapshots, repeats=repeats, log=log)
    result["slowdown"] = []
    with tempfile.TemporaryDirectory(dir=out_root, prefix="bench-live-") as tmp:
        for i, n in enumerate(threads):
            result["slowdown"].append(slowdown(cfg, f"{tmp}/run{i}", n, rounds=rounds, window_s=window_s, log=log))
    return result


def add_arguments(parser) -> None:
    parser.add_argument("--preset", default="demo", help="the training configuration shown (default demo)")
    parser.add_argument("--browser", action="store_true",
                        help="instead: serve the app, press Start demo in Chromium and compare the demo's "
                             "steps/s with the live view open and closed (engine/bench/watched.py)")
    add_rounds(parser)


def run(args) -> dict:
    if getattr(args, "browser", False):
        from engine.bench.watched import watched_ratio
        sizes = dict(rounds=1, window_s=3.0, warm_s=1.0, settle_s=0.5, kept_windows=1) if args.smoke else dict(rounds=check_rounds(args.rounds))
        return {"benchmark": "live", "preset": "demo", "machine": machine(), "watched": watched_ratio(**sizes)}
    sizes = {"rounds": check_rounds(args.rounds), **(SMOKE if args.smoke else {})}
    return live_benchmark(args.preset, **sizes)
