"""Benchmark of the live concept map (python -m engine bench projection [RUN_DIR]): how long a
refresh takes (UMAP warm-started update, a cold UMAP fit, PCA, decision regions) for 150 / 500 /
2,000 / 5,000 probe points, how still the map stays over a run's snapshot sequence (update() frames
against independent refits), and what the epochs of a warm refit buy (REFINE_SWEEP). Timings are medians within one process; stability is a ratio.

Concepts come from RUN_DIR's snapshots when given (subsampled, or tiled with a small fixed jitter
when the probe has fewer points than asked), else from synthetic drifting clusters.
"""
from __future__ import annotations

import itertools
import os
import platform
import statistics
import sys
import time
from functools import partial

import numpy as np

from engine.viz import project
from engine.viz.project import (
    ConceptProjector,
    frame_displacement,
    procrustes_align,
    stable_layouts,
)
from engine.viz.regions import regions_for


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _synthetic_run(points: int, frames: int = 12, d: int = 64, classes: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres, velocity = rng.normal(size=(classes, d)) * 3, rng.normal(size=(classes, d))
    label = rng.integers(0, classes, points)
    offset = rng.normal(size=(points, d))
    concepts = [(centres[label] + t * 0.15 * velocity[label] + offset + rng.normal(size=(points, d)) * 0.05
                 ).astype(np.float32) for t in range(frames)]
    ext = max(2, classes // 2)
    disc = {"disc.net.weight": rng.normal(size=(ext, d)).astype(np.float32),
            "disc.net.bias": np.zeros(ext, np.float32)}
    snaps = []
    for c in concepts:
        logits = c @ disc["disc.net.weight"].T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        snaps.append({"concepts": c, "disc_pred": p.argmax(1), "disc_conf": p.max(1).astype(np.float32), **disc})
    probe = {"external_classes": np.array([f"class{i}" for i in range(ext)])}
    return list(range(frames)), snaps, probe


def _load_run(run_dir: str):
    from engine.runs import RunDir

    run = RunDir.open(run_dir)
    steps = run.snapshot_steps()
    if len(steps) < 2:
        raise ValueError(f"{run_dir} has {len(steps)} snapshot(s); the benchmark needs a sequence")
    return steps, [run.load_snapshot(s) for s in steps], run.load_probe()


def _resize(snaps: list[dict], points: int, seed: int) -> list[dict]:
    """The same `points` probe points in every snapshot: a fixed subsample, or the probe tiled with
    a fixed jitter (0.05 of the last frame's per-dimension spread) when it has fewer points."""
    n = len(snaps[0]["concepts"])
    rng = np.random.default_rng(seed)
    if points <= n:
        idx, noise = np.sort(rng.choice(n, points, replace=False)), None
    else:
        idx = np.concatenate([np.arange(n), rng.choice(n, points - n, replace=True)])
        spread = snaps[-1]["concepts"].std(0)
        noise = rng.normal(size=(points, snaps[0]["concepts"].shape[1])) * 0.05
        noise[:n] = 0.0  # the originals stay as they are
    out = []
    for s in snaps:
        r = {k: v for k, v in s.items() if k.startswith("disc.")}
        c = s["concepts"][idx]
        if noise is not None:
            c = c + (noise * np.maximum(s["concepts"].std(0), 1e-6 * spread.max())).astype(np.float32)
        r["concepts"] = c.astype(np.float32)
        for k in ("disc_pred", "disc_conf"):
            if k in s:
                r[k] = s[k][idx]
        out.append(r)
    return out


def _mean_step(layouts) -> float:
    return float(np.mean([frame_displacement(a, b) for a, b in itertools.pairwise(layouts)]))


def _stability(frames: list[np.ndarray], seed: int, log) -> dict:
    """Mean consecutive displacement (in RMS radii) over the sequence, and trustworthiness (k=10)."""
    from sklearn.manifold import trustworthiness

    def trust(layouts):
        pick = range(0, len(frames), max(1, len(frames) // 6))
        return round(float(np.mean([trustworthiness(frames[i], layouts[i], n_neighbors=10) for i in pick])), 4)

    half = len(frames) // 2
    def late(layouts):  # the second half: slow drift, after the first shake-up
        return round(_mean_step(layouts[half:]), 4)

    refits = [ConceptProjector("umap", seed=seed).fit(f).embedding_ for f in frames]
    aligned = [refits[0]]
    for e in refits[1:]:
        aligned.append(procrustes_align(e, aligned[-1]))
    forward = stable_layouts(frames, "umap", seed, backwards=False)
    backward = stable_layouts(frames, "umap", seed, backwards=True)
    out = {
        "frames": len(frames),
        "independent_refits": {"mean_step": round(_mean_step(refits), 4), "late_mean_step": late(refits)},
        "independent_refits_aligned": {"mean_step": round(_mean_step(aligned), 4), "late_mean_step": late(aligned),
                                       "trustworthiness": trust(refits)},
        "update_forward": {"mean_step": round(_mean_step(forward), 4), "late_mean_step": late(forward),
                           "trustworthiness": trust(forward)},
        "update_backward": {"mean_step": round(_mean_step(backward), 4), "late_mean_step": late(backward),
                            "trustworthiness": trust(backward)},
    }
    ref = out["independent_refits_aligned"]["mean_step"]
    out["ratio_update_vs_aligned_refits"] = round(out["update_forward"]["mean_step"] / ref, 3)
    out["ratio_update_vs_raw_refits"] = round(out["update_forward"]["mean_step"]
                                              / out["independent_refits"]["mean_step"], 3)
    out["ratio_backward_vs_aligned_refits"] = round(out["update_backward"]["mean_step"] / ref, 3)
    out["late_ratio_update_vs_aligned_refits"] = round(out["update_forward"]["late_mean_step"]
                                                       / out["independent_refits_aligned"]["late_mean_step"], 3)
    print(f"  stability over {len(frames)} frames: update {out['update_forward']['mean_step']:.3f} "
          f"(backward {out['update_backward']['mean_step']:.3f}) vs refits {ref:.3f} aligned / "
          f"{out['independent_refits']['mean_step']:.3f} raw", file=log, flush=True)
    return out


REFINE_SWEEP = (30, 50, 100)  # UMAP epochs per warm refit compared (project.REFINE_EPOCHS is the one used)


def _refine_sweep(frames: list[np.ndarray], seed: int, log) -> dict:
    """For each epoch count of REFINE_SWEEP: the median time of a warm refit (update) and the mean
    trustworthiness (k=10) of the frames laid out by a projector that refits so, against fresh fits."""
    from sklearn.manifold import trustworthiness

    fresh = [ConceptProjector("umap", seed=seed).fit(f).embedding_ for f in frames]
    out = {"fresh_fit_trustworthiness": round(float(np.mean(
        [trustworthiness(f, e, n_neighbors=10) for f, e in zip(frames, fresh)])), 4)}
    for epochs in REFINE_SWEEP:
        proj = ConceptProjector("umap", seed=seed, refine_epochs=epochs).fit(frames[0])
        times, trust = [], []
        for f in frames[1:]:
            t0 = time.perf_counter()
            proj.update(f)
            times.append(time.perf_counter() - t0)
            trust.append(trustworthiness(f, proj.embedding_, n_neighbors=10))
        out[f"epochs_{epochs}"] = {"update_s": round(statistics.median(times), 4),
                                   "trustworthiness": round(float(np.mean(trust)), 4)}
    print("  warm refit by epochs: " + ", ".join(f"{k} {v}" for k, v in out.items()), file=log, flush=True)
    return out


def projection_benchmark(run_dir: str | None, points=(150, 500, 2000, 5000), seed: int = 0, log=sys.stderr,
                         reps: int = 5, stability_max_points: int = 2000) -> dict:
    t_all, load_start = time.perf_counter(), _load()
    t0 = time.perf_counter()
    project.start_umap_warmup()
    if not project.wait_for_umap(300):
        raise RuntimeError(f"UMAP did not become ready: {project.umap_error() or 'timed out'}")
    print(f"UMAP ready after {time.perf_counter() - t0:.1f} s (warm-up {project.umap_warmup_seconds():.1f} s)",
          file=log, flush=True)
    if run_dir:
        steps, snaps, probe = _load_run(run_dir)
        source = {"run_dir": str(run_dir), "probe_points": len(snaps[0]["concepts"]), "snapshots": len(steps),
                  "steps": [int(s) for s in steps], "concept_dim": int(snaps[0]["concepts"].shape[1])}
    else:
        steps, snaps, probe = _synthetic_run(max(points), seed=seed)
        source = {"run_dir": None, "synthetic": "drifting clusters", "snapshots": len(steps)}
    has_disc = any(k.startswith("disc.") for k in snaps[-1])
    results = []
    for n in points:
        seq = _resize(snaps, n, seed)
        frames = [s["concepts"] for s in seq]
        how = "synthetic" if not run_dir else "tiled+jittered" if n > source["probe_points"] else "subsampled"
        print(f"{n} points ({how}):", file=log, flush=True)
        r: dict = {"points": n}
        cold_reps = 3 if n <= 2000 else 2
        cold = partial(ConceptProjector("umap", seed=seed).fit, frames[-1])  # fit() starts afresh each time
        r["umap_cold_fit_s"] = round(_median_time(cold, cold_reps), 3)
        late = frames[len(frames) // 2:]  # a live run's refreshes: the next snapshot of a slowly moving map
        proj = ConceptProjector("umap", seed=seed).fit(late[0])
        times = []
        for i in range(reps):
            f = late[1 + i % (len(late) - 1)] if len(late) > 1 else late[0]
            t1 = time.perf_counter()
            proj.update(f)
            times.append(time.perf_counter() - t1)
        r["umap_update_s"] = round(statistics.median(times), 3)
        new = frames[-1][: min(50, n)] + 0.01
        r["umap_transform_50_s"] = round(_median_time(partial(proj.transform, new), 3), 3)
        pca = ConceptProjector("pca", seed=seed).fit(late[0])
        r["pca_update_s"] = round(_median_time(partial(pca.update, late[-1]), reps), 4)
        if has_disc:
            snap = seq[-1]
            pca.update(snap["concepts"])
            proj.update(snap["concepts"])
            for key, p in (("regions_exact_pca_60x60_s", pca), ("regions_approx_umap_60x60_s", proj)):
                r[key] = round(_median_time(partial(regions_for, p, snap, probe, grid=60), reps), 4)
        print("  " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "points"), file=log, flush=True)
        if n <= stability_max_points and len(frames) >= 3:
            r["stability"] = _stability(frames, seed, log)
            r["refine_sweep"] = _refine_sweep(frames, seed, log)
        results.append(r)
    import sklearn
    import umap

    return {
        "benchmark": "projection", "source": source, "results": results,
        "refine_epochs": ConceptProjector().refine_epochs, "refine_learning_rate": project.REFINE_LEARNING_RATE,
        "umap_warmup_s": round(project.umap_warmup_seconds() or 0.0, 2),
        "total_s": round(time.perf_counter() - t_all, 1),
        "load_average_start_end": [load_start, _load()],  # other work on this shared machine
        "machine": {"python": platform.python_version(), "umap": umap.__version__, "sklearn": sklearn.__version__,
                    "processor": platform.processor() or platform.machine()},
        "notes": "times are medians in one process on a shared machine; stability is mean consecutive "
                 "displacement in units of the layout's RMS radius (lower is stiller)",
    }


SMOKE = dict(points=(60,), reps=1, stability_max_points=60)


def add_arguments(parser) -> None:
    parser.add_argument("--run", metavar="RUN_DIR", help="take concepts from this run's snapshots "
                        "(default: synthetic drifting clusters)")
    parser.add_argument("--points", type=lambda v: tuple(int(x) for x in v.split(",")), default=None,
                        metavar="N,N,...", help="probe sizes to measure (default 150,500,2000,5000; 150 is the demo's probe)")


def run(args) -> dict:
    sizes = dict(SMOKE) if args.smoke else {}
    if args.points:
        sizes["points"] = args.points
    return projection_benchmark(args.run, **sizes)
