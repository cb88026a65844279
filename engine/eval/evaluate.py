"""Accuracy with a 95% confidence interval over many episodes, and adaptation curves; a trained
run scored on its held-out classes (recorded in its evaluations.jsonl)."""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from engine.config import TrainConfig
from engine.data.episodes import EpisodeIndex, EpisodeSampler, class_major_labels
from engine.data.imageset import ImageSet
from engine.eval.checkpoints import evaluation_classes, load_trained
from engine.models.deml import DEMLModel, eval_mode
from engine.runs import RunDir, as_run

TASK_CHUNK = 64  # tasks per learner call: bounded memory, still batched
SPLIT_NAMES = {"val": "meta-validation", "test": "meta-test", "all": "all classes"}  # --classes -> what results say


@lru_cache(maxsize=256)
def t95(df: int) -> float:
    """The two-sided 95% Student-t quantile for `df` degrees of freedom (12.71 for 1, 2.78 for 4,
    2.26 for 9, 1.96 as df grows): every interval in the project takes it from here. scipy comes
    with scikit-learn (a requirement); imported on first use."""
    from scipy.special import stdtrit

    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom (got {df})")
    return float(stdtrit(df, 0.975))


def mean_ci95(values) -> tuple[float, float]:
    """Mean and half-width of its Student-t 95% confidence interval (len - 1 degrees of freedom),
    over episodes or over seeds alike; nan for fewer than 2 values."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()) if len(v) else float("nan"), float("nan")
    return float(v.mean()), float(t95(len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def concept_table(model: DEMLModel, sampler: EpisodeSampler, used: np.ndarray, device,
                  chunk: int = 1024) -> torch.Tensor:
    """Concepts (U, D) of the sampler's images `used` (U,), in chunks from host memory. In eval
    mode an image's concept does not depend on what else is in the batch, so each image is passed
    through G once however many episodes it appears in (several times fewer passes than per task)."""
    parts = []
    for i in range(0, len(used), chunk):
        x = sampler.images[torch.from_numpy(used[i:i + chunk])].to(device).float().div_(255.0)  # (c, C, H, W)
        parts.append(model.concepts(x))
    return torch.cat(parts)


def shared_concepts(model: DEMLModel, sampler: EpisodeSampler, indexes, device) -> tuple[np.ndarray, torch.Tensor]:
    """(used, concepts): the sorted image indices (U,) of every episode of `indexes` (EpisodeIndexes
    over the same images) and their concepts (U, D), each image passed through G once: several
    evaluations of one model on overlapping episodes (a validation and its adaptation curve) share them."""
    used = np.unique(np.concatenate([a.ravel() for ix in indexes for a in (ix.support, ix.query)]))
    with eval_mode(model):
        return used, concept_table(model, sampler, used, device)


def per_task(model, sampler, index, device, fn: Callable, progress=None, table=None) -> list:
    """Run fn(support concepts (T, N*K, D), query concepts (T, N*Q, D), labels) on chunks of tasks,
    the model in eval mode throughout. `table`: shared_concepts() covering the index's images."""
    out = []
    with eval_mode(model):
        support = index.support
        flat = np.concatenate([support.ravel(), index.query.ravel()])
        if table is None:
            used, inverse = np.unique(flat, return_inverse=True)
            z = concept_table(model, sampler, used, device)  # (U, D)
        else:
            used, z = table
            inverse = np.searchsorted(used, flat)
            if inverse.max(initial=0) >= len(used) or not np.array_equal(used[inverse], flat):
                raise ValueError("the shared concepts do not cover this evaluation's images")
        rows = torch.from_numpy(inverse).to(device)
        zs_all = z[rows[: support.size]].view(*support.shape, -1)  # (E, N*K, D)
        zq_all = z[rows[support.size:]].view(*index.query.shape, -1)  # (E, N*Q, D)
        n, k, q = sampler.ways, support.shape[1] // sampler.ways, sampler.queries
        total = len(index.classes)
        for start in range(0, total, TASK_CHUNK):
            zs, zq = zs_all[start:start + TASK_CHUNK], zq_all[start:start + TASK_CHUNK]
            t = len(zs)
            labels = {"support": class_major_labels(n, k, t, device), "query": class_major_labels(n, q, t, device)}
            with torch.no_grad():  # gradient learners turn gradients on for their own inner loop
                out.append(fn(zs, zq, labels))
            if progress:
                progress(min(start + TASK_CHUNK, total), total)
    return out


def query_predictions(model: DEMLModel, sampler: EpisodeSampler, index: EpisodeIndex, device,
                      steps: int | None = None, progress=None, table=None) -> np.ndarray:
    """Predicted task label of every query, (E, N*Q); the true labels are class-major 0..N-1."""
    def fn(zs, zq, labels):
        logits = model.learner.logits(zs, labels["support"], zq, sampler.ways, steps=steps, training=False)
        return logits.argmax(-1).cpu()  # (T, N*Q)
    return torch.cat(per_task(model, sampler, index, device, fn, progress=progress, table=table)).numpy()


def query_labels(sampler: EpisodeSampler) -> np.ndarray:
    """The true task labels of one task's queries, (N*Q,)."""
    return class_major_labels(sampler.ways, sampler.queries)[0].numpy()


def episode_accuracies(model: DEMLModel, sampler: EpisodeSampler, index: EpisodeIndex, device,
                       steps: int | None = None, progress=None, table=None) -> np.ndarray:
    """Query accuracy of each task in `index`, (E,). `table`: shared_concepts() covering it."""
    preds = query_predictions(model, sampler, index, device, steps, progress, table)
    return (preds == query_labels(sampler)).mean(-1)


def confusion(model: DEMLModel, sampler: EpisodeSampler, episodes: int, seed: int, device,
              steps: int | None = None, progress=None) -> dict:
    """Confusions between the split's classes over an evaluation: matrix[true, predicted] counts
    queries, and cells[(true, predicted)] lists the image indices (in the sampler's ImageSet) it holds."""
    index = sampler.fixed(episodes, seed)
    preds = query_predictions(model, sampler, index, device, steps, progress)  # (E, N*Q)
    classes = index.classes  # (E, N) class ids of each task's labels
    rows = np.take_along_axis(classes, np.broadcast_to(query_labels(sampler), preds.shape), 1)  # (E, N*Q) true ids
    cols = np.take_along_axis(classes, preds, 1)  # (E, N*Q) predicted ids
    c = sampler.data.num_classes
    matrix = np.zeros((c, c), dtype=np.int64)
    np.add.at(matrix, (rows.ravel(), cols.ravel()), 1)
    cells: dict[tuple[int, int], list[int]] = {}
    for r, col, img in zip(rows.ravel(), cols.ravel(), index.query.ravel()):
        cells.setdefault((int(r), int(col)), []).append(int(img))
    return {"matrix": matrix, "class_names": list(sampler.data.class_names), "cells": cells,
            "episodes": episodes, "accuracy": float(np.trace(matrix) / max(1, matrix.sum()))}


def evaluate(model: DEMLModel, sampler: EpisodeSampler, episodes: int, seed: int, device,
             steps: int | None = None, progress=None) -> dict:
    acc = episode_accuracies(model, sampler, sampler.fixed(episodes, seed), device, steps, progress)
    mean, ci = mean_ci95(acc)
    return {"accuracy": mean, "ci95": ci, "episodes": episodes, "ways": sampler.ways,
            "shots": sampler.shots, "queries": sampler.queries, "seed": seed}


def curve_scores(model: DEMLModel, sampler: EpisodeSampler, index: EpisodeIndex, device, steps: int,
                 progress=None, table=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode query accuracy and loss along the learner's adaptation axis (after 0..steps
    inner steps, or with 1..K shots: MetaLearner.curve), two (points, E) arrays. `table`:
    shared_concepts() covering the index's images."""
    def fn(zs, zq, labels):
        losses, accs = model.learner.curve(zs, labels["support"], zq, labels["query"], sampler.ways, steps)
        return losses.cpu(), accs.cpu()  # (P, T) each
    parts = per_task(model, sampler, index, device, fn, progress=progress, table=table)
    return torch.cat([p[1] for p in parts], 1).numpy(), torch.cat([p[0] for p in parts], 1).numpy()


def curve_summary(model: DEMLModel, sampler: EpisodeSampler, acc: np.ndarray, loss: np.ndarray, episodes: int,
                  seed: int, steps: int) -> dict:
    """(points, E) scores -> the curve record the charts read; points past the curve's length
    (`steps` inner steps, or the sampler's shots) are left out."""
    points = model.learner.curve_points(sampler.shots, steps)
    return {"episodes": episodes, "ways": sampler.ways, "shots": sampler.shots, "queries": sampler.queries,
            "seed": seed, "learner": model.learner.name, "axis": model.learner.curve_axis, "steps": points,
            **_summaries(acc[: len(points)], loss[: len(points)])}


def adaptation_curve(model: DEMLModel, sampler: EpisodeSampler, episodes: int, seed: int, device,
                     max_steps: int = 10, progress=None) -> dict:
    """Query accuracy and loss along the learner's adaptation axis: after 0..max_steps inner steps
    (gradient learners), or against the number of shots, 1..K of the sampler (metric learners)."""
    acc, loss = curve_scores(model, sampler, sampler.fixed(episodes, seed), device, max_steps, progress)
    return curve_summary(model, sampler, acc, loss, episodes, seed, max_steps)


def _summaries(accs: np.ndarray, losses: np.ndarray) -> dict:
    """(points, E) per-episode values -> mean and CI lists per point."""
    acc = [mean_ci95(a) for a in accs]
    loss = [mean_ci95(v) for v in losses]
    return {"accuracy": [a for a, _ in acc], "accuracy_ci95": [c for _, c in acc],
            "loss": [a for a, _ in loss], "loss_ci95": [c for _, c in loss]}


def curve_sampler(model: DEMLModel, data: ImageSet, sampler: EpisodeSampler) -> EpisodeSampler:
    """The sampler of an adaptation curve: episodes with the shots per class the learner's curve
    wants (MetaLearner.curve_shots), as many as the classes hold."""
    w, q = sampler.ways, sampler.queries
    room = int(np.sort(data.counts())[-w]) - q if data.num_classes >= w else sampler.shots
    shots = max(sampler.shots, min(model.learner.curve_shots(sampler.shots), room))
    return sampler if shots == sampler.shots else EpisodeSampler(data, w, shots, q)


def is_test_record(rec: dict, kind: str, cfg: TrainConfig) -> bool:
    """Is `rec` (a line of evaluations.jsonl) a result of `kind` on the run's own meta-test classes?"""
    return (rec.get("kind") == kind and rec.get("classes") == "test"
            and rec.get("dataset") == f"{cfg.dataset} [meta-test]")


def run_evaluation(run: RunDir | str, kind: str, dataset: str | None = None, classes: str = "test",
                   ways: int | None = None, shots: int | None = None, queries: int | None = None,
                   episodes: int = 600, seed: int = 0, steps: int | None = None, device: str = "auto",
                   progress=None, warn=None) -> dict:
    """kind "evaluate": accuracy with its 95% CI; "curve": the adaptation curve (inner steps
    0..steps, default 10, or shots 1..K). Ways/shots/queries default to the run's. classes: "test"
    (meta-test), "val" (meta-validation: where choices such as the number of test-time steps are
    made) or "all"; the result says which ("split"). The result is appended to the run's
    evaluations.jsonl and returned. A metric learner's curve runs over 1..max(K, 5) shots."""
    run = as_run(run)
    cfg, model, dev = load_trained(run, device)
    data = evaluation_classes(cfg, dataset, classes)
    sampler = EpisodeSampler(data, *(cfg_value if given is None else given  # 0 is refused, not replaced
                                     for given, cfg_value in ((ways, cfg.ways), (shots, cfg.shots),
                                                              (queries, cfg.queries))))
    if kind == "curve" and shots is None:
        sampler = curve_sampler(model, data, sampler)
    for w in sampler.warnings():
        (warn or (lambda _: None))(w)
    if kind == "evaluate":
        result = evaluate(model, sampler, episodes, seed, dev, steps, progress)
    else:
        result = adaptation_curve(model, sampler, episodes, seed, dev, 10 if steps is None else steps, progress)
    result.update(dataset=data.source, classes=classes, split=SPLIT_NAMES[classes], learner=cfg.learner, kind=kind)
    run.append_evaluation(result)
    return result


def recorded_or_new(run: RunDir | str, kind: str, episodes: int, progress=None) -> dict:
    """The run's own test-split result of `kind` at its ways/shots: the latest recorded one with at
    least `episodes` episodes, else a new one (recorded too)."""
    run = as_run(run)
    cfg = run.train_config()
    for rec in reversed(run.read_evaluations()):
        if (is_test_record(rec, kind, cfg) and rec.get("ways") == cfg.ways
                and (len(rec.get("steps", [])) > 1 if kind == "curve" else rec.get("shots") == cfg.shots)
                and rec.get("episodes", 0) >= episodes):
            return rec
    return run_evaluation(run, kind, episodes=episodes, progress=progress)
