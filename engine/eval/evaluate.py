"""Accuracy with a 95% confidence interval over many episodes, and adaptation curves."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from engine.data.episodes import EpisodeIndex, EpisodeSampler
from engine.learners.base import per_task_cross_entropy
from engine.models.deml import DEMLModel

TASK_CHUNK = 64  # tasks per learner call: bounded memory, still batched


def mean_ci95(values) -> tuple[float, float]:
    """Mean and half-width of its normal 95% confidence interval."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()) if len(v) else float("nan"), float("nan")
    return float(v.mean()), float(1.96 * v.std(ddof=1) / np.sqrt(len(v)))


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


def _per_task(model, sampler, index, device, fn: Callable, shots=None, progress=None) -> list:
    """Run fn(support concepts (T, N*K, D), query concepts (T, N*Q, D), labels) on chunks of tasks,
    the model in eval mode throughout."""
    was_training = model.training
    model.eval()
    out = []
    try:
        support = sampler.support_shots(index.support, shots)
        used, inverse = np.unique(np.concatenate([support.ravel(), index.query.ravel()]), return_inverse=True)
        z = concept_table(model, sampler, used, device)  # (U, D)
        rows = torch.from_numpy(inverse).to(device)
        zs_all = z[rows[: support.size]].view(*support.shape, -1)  # (E, N*K, D)
        zq_all = z[rows[support.size:]].view(*index.query.shape, -1)  # (E, N*Q, D)
        n, k, q = sampler.ways, support.shape[1] // sampler.ways, sampler.queries
        total = len(index.classes)
        for start in range(0, total, TASK_CHUNK):
            zs, zq = zs_all[start:start + TASK_CHUNK], zq_all[start:start + TASK_CHUNK]
            t = len(zs)
            labels = {"support": torch.arange(n, device=device).repeat_interleave(k).expand(t, -1),
                      "query": torch.arange(n, device=device).repeat_interleave(q).expand(t, -1)}
            with torch.no_grad():  # gradient learners turn gradients on for their own inner loop
                out.append(fn(zs, zq, labels))
            if progress:
                progress(min(start + TASK_CHUNK, total), total)
    finally:
        model.train(was_training)
    return out


def query_predictions(model: DEMLModel, sampler: EpisodeSampler, index: EpisodeIndex, device,
                      steps: int | None = None, progress=None) -> np.ndarray:
    """Predicted task label of every query, (E, N*Q); the true labels are class-major 0..N-1."""
    def fn(zs, zq, labels):
        logits = model.learner.logits(zs, labels["support"], zq, sampler.ways, steps=steps, training=False)
        return logits.argmax(-1).cpu()  # (T, N*Q)
    return torch.cat(_per_task(model, sampler, index, device, fn, progress=progress)).numpy()


def query_labels(sampler: EpisodeSampler) -> np.ndarray:
    """The true task labels of one task's queries, (N*Q,)."""
    return np.repeat(np.arange(sampler.ways), sampler.queries)


def episode_accuracies(model: DEMLModel, sampler: EpisodeSampler, index: EpisodeIndex, device,
                       steps: int | None = None, progress=None) -> np.ndarray:
    """Query accuracy of each task in `index`, (E,)."""
    preds = query_predictions(model, sampler, index, device, steps, progress)
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


def adaptation_curve(model: DEMLModel, sampler: EpisodeSampler, episodes: int, seed: int, device,
                     max_steps: int = 10, progress=None) -> dict:
    """Gradient learners: query accuracy and loss after 0..max_steps inner steps.
    Metric learners: the same against the number of shots, 1..K of the sampler."""
    index = sampler.fixed(episodes, seed)
    base = {"episodes": episodes, "ways": sampler.ways, "shots": sampler.shots, "queries": sampler.queries,
            "seed": seed, "learner": model.learner.name}
    if model.learner.adapts_by_steps:
        def fn(zs, zq, labels):
            losses, accs = model.learner.trace(zs, labels["support"], zq, labels["query"], sampler.ways, max_steps)
            return losses.detach().cpu(), accs.detach().cpu()  # (S+1, T) each
        parts = _per_task(model, sampler, index, device, fn, progress=progress)
        losses = torch.cat([p[0] for p in parts], 1).numpy()
        accs = torch.cat([p[1] for p in parts], 1).numpy()
        return {**base, "axis": "steps", "steps": list(range(max_steps + 1)), **_summaries(accs, losses)}
    rows_acc, rows_loss = [], []
    for k in range(1, sampler.shots + 1):
        def fn(zs, zq, labels):
            logits = model.learner.logits(zs, labels["support"], zq, sampler.ways, training=False)
            loss = per_task_cross_entropy(logits, labels["query"])  # (T,)
            return loss.cpu(), (logits.argmax(-1) == labels["query"]).float().mean(-1).cpu()
        parts = _per_task(model, sampler, index, device, fn, shots=k)
        rows_loss.append(torch.cat([p[0] for p in parts]).numpy())
        rows_acc.append(torch.cat([p[1] for p in parts]).numpy())
        if progress:
            progress(k, sampler.shots)
    return {**base, "axis": "shots", "steps": list(range(1, sampler.shots + 1)),
            **_summaries(np.stack(rows_acc), np.stack(rows_loss))}


def _summaries(accs: np.ndarray, losses: np.ndarray) -> dict:
    """(points, E) per-episode values -> mean and CI lists per point."""
    acc = [mean_ci95(a) for a in accs]
    loss = [mean_ci95(v) for v in losses]
    return {"accuracy": [a for a, _ in acc], "accuracy_ci95": [c for _, c in acc],
            "loss": [a for a, _ in loss], "loss_ci95": [c for _, c in loss]}
