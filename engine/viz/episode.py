"""One few-shot task laid out in concept space, for the episode view.

The task's support and query concepts are projected on their own PCA plane. Decision regions
are exact on that plane: grid points are mapped back to concept space and handed to the task
learner as queries, so what is drawn is what the learner would answer there (for every learner).
"""
from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch
from sklearn.decomposition import PCA

from engine.data.episodes import EpisodeIndex, EpisodeSampler, take
from engine.models.deml import DEMLModel, eval_mode
from engine.viz.regions import RegionGrid, grid_axes, grid_plane

UNKNOWN = -1  # query label of an image whose class nobody gave


class EpisodeDetail(TypedDict, total=False):
    """What engine.viz.charts.episode_view draws (positions on the task's own 2-D plane)."""

    support_xy: np.ndarray  # float (N*K, 2) support concepts
    support_labels: np.ndarray  # int (N*K,) task class 0..N-1 of each support image
    query_xy: np.ndarray  # float (N*Q, 2) query concepts
    query_labels: np.ndarray  # int (N*Q,) true task class of each query (the answer where unknown)
    query_pred: np.ndarray  # int (N*Q,) the learner's final answer for each query
    query_known: np.ndarray  # bool (N*Q,) which query labels were given (False: no label)
    class_names: list[str]  # (N,) names of the task's classes, indexed by the labels
    prototypes_xy: np.ndarray  # float (N, 2) the learner's class centres (metric learners that have them)
    steps_pred: np.ndarray  # int (S+1, N*Q) answers after 0..S inner steps (gradient learners, every label known)
    regions: RegionGrid  # what the task's learner answers over the plane
    support_images: np.ndarray  # the images' indices in their ImageSet, or their file names (hover)
    query_images: np.ndarray
    learner: str  # the learner's name (title, region note)


def task_detail(model: DEMLModel, support: torch.Tensor, support_labels: np.ndarray, query: torch.Tensor,
                query_labels: np.ndarray, class_names: list[str], device, steps: int | None = None,
                grid: int = 50) -> EpisodeDetail:
    """One task laid out in concept space: support (S, C, H, W) and query (M, C, H, W) images in
    [0, 1] with their task labels (UNKNOWN where a query's class was not given; it is drawn with
    the learner's answer as its label, and `query_known` says which are real)."""
    learner, ways = model.learner, len(class_names)
    with eval_mode(model):
        zs = model.concepts(support.to(device))[None]  # (1, S, D)
        zq = model.concepts(query.to(device))[None]  # (1, M, D)
        labels = torch.as_tensor(support_labels, device=device)[None]  # (1, S)

        def answer(queries):  # (1, G, D) -> logits (G, N)
            return learner.logits(zs, labels, queries, ways, steps=steps, training=False).detach()[0]

        query_pred = answer(zq).argmax(-1).cpu().numpy()  # (M,)
        known = np.asarray(query_labels) != UNKNOWN
        pca = PCA(n_components=2, random_state=0).fit(torch.cat([zs[0], zq[0]]).cpu().numpy())
        detail = EpisodeDetail(
            support_xy=pca.transform(zs[0].cpu().numpy()), support_labels=np.asarray(support_labels),
            query_xy=pca.transform(zq[0].cpu().numpy()), query_labels=np.where(known, query_labels, query_pred),
            query_pred=query_pred, query_known=known, class_names=list(class_names), learner=learner.name)
        by_step = learner.step_logits(zs, labels, zq, ways, steps)  # (S+1, 1, M, N) or None
        if by_step is not None and known.all():  # the slider rings right/wrong: only with every label known
            detail["steps_pred"] = by_step[:, 0].argmax(-1).cpu().numpy()  # (S+1, M)
        centres = learner.centres(zs, labels, ways)  # (1, N, D) or None
        if centres is not None:
            detail["prototypes_xy"] = pca.transform(centres[0].cpu().numpy())
        detail["regions"] = task_regions(pca, detail, answer, grid, device)
    return detail


def episode_detail(model: DEMLModel, sampler: EpisodeSampler, index: EpisodeIndex, device, task: int = 0,
                   steps: int | None = None, grid: int = 50) -> EpisodeDetail:
    """task_detail for task `task` of `index`, with the images' indices in sampler.data."""
    one = take(index, task, task + 1)
    ep = sampler.materialize(one)
    detail = task_detail(model, ep.support[0], ep.support_labels[0].numpy(), ep.query[0], ep.query_labels[0].numpy(),
                         [sampler.data.class_names[c] for c in one.classes[0]], device, steps, grid)
    detail["support_images"], detail["query_images"] = one.support[0], one.query[0]
    return detail


def task_regions(pca: PCA, detail: EpisodeDetail, answer, grid: int, device) -> RegionGrid:
    """What the task's learner answers (`answer(concepts (1, G*G, D)) -> logits`) over the PCA plane."""
    gx, gy = grid_axes(np.concatenate([detail["support_xy"], detail["query_xy"]]), grid=grid)
    plane = grid_plane(gx, gy)  # (G*G, 2)
    concepts = torch.as_tensor(pca.inverse_transform(plane), dtype=torch.float32, device=device)  # (G*G, D)
    probs = torch.softmax(answer(concepts[None]), -1).cpu().numpy()  # (G*G, N)
    return RegionGrid(x=gx, y=gy, pred=probs.argmax(-1).reshape(grid, grid), conf=probs.max(-1).reshape(grid, grid),
                      exact=True, method="exact: the task's learner applied to this task's PCA plane",
                      class_names=list(detail["class_names"]))
