"""One few-shot task laid out in concept space, for the episode view.

The task's support and query concepts are projected on their own PCA plane. Decision regions
are exact on that plane: grid points are mapped back to concept space and handed to the task
learner as queries, so what is drawn is what the learner would answer there (for every learner).
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch.func import vmap

from engine.data.episodes import EpisodeIndex, EpisodeSampler, take
from engine.learners.head import head_logits
from engine.learners.protonet import prototypes
from engine.models.deml import DEMLModel
from engine.viz.regions import RegionGrid

GRID_MARGIN = 0.15  # fraction of the layout's extent added around it for the region grid


def episode_detail(model: DEMLModel, sampler: EpisodeSampler, index: EpisodeIndex, device, task: int = 0,
                   steps: int | None = None, grid: int = 50) -> dict:
    """Everything the episode view draws for task `task` of `index` (see engine.viz.charts.episode)."""
    one = take(index, task, task + 1)
    ep = sampler.materialize(one).to(device)
    learner, ways = model.learner, sampler.ways
    was_training = model.training
    model.eval()
    try:
        zs = model.concepts(ep.support[0])[None]  # (1, N*K, D)
        zq = model.concepts(ep.query[0])[None]  # (1, N*Q, D)
        answer = lambda queries: learner.logits(zs, ep.support_labels, queries, ways, steps=steps,  # noqa: E731
                                                training=False).detach()[0]
        query_pred = answer(zq).argmax(-1)  # (N*Q,)
        pca = PCA(n_components=2, random_state=0).fit(torch.cat([zs[0], zq[0]]).cpu().numpy())
        detail = {
            "support_xy": pca.transform(zs[0].cpu().numpy()),
            "support_labels": ep.support_labels[0].cpu().numpy(),
            "query_xy": pca.transform(zq[0].cpu().numpy()),
            "query_labels": ep.query_labels[0].cpu().numpy(),
            "query_pred": query_pred.cpu().numpy(),
            "class_names": [sampler.data.class_names[c] for c in one.classes[0]],
            "support_images": one.support[0], "query_images": one.query[0],  # indices in sampler.data
            "learner": learner.name,
        }
        if learner.adapts_by_steps:  # how query predictions change with each inner step
            path = learner.adapt(zs, ep.support_labels, ways, steps, training=False)
            detail["steps_pred"] = np.stack([
                vmap(head_logits)({k: v.detach() for k, v in params.items()}, zq)[0].argmax(-1).cpu().numpy()
                for params in path])  # (S+1, N*Q)
        else:
            protos = prototypes(zs, ep.support_labels, ways)[0]  # (N, D): class means in concept space
            detail["prototypes_xy"] = pca.transform(protos.cpu().numpy())
        detail["regions"] = task_regions(pca, detail, answer, grid, device)
    finally:
        model.train(was_training)
    return detail


def task_regions(pca: PCA, detail: dict, answer, grid: int, device) -> RegionGrid:
    """What the task's learner answers (`answer(concepts (1, G*G, D)) -> logits`) over the PCA plane."""
    xy = np.concatenate([detail["support_xy"], detail["query_xy"]])
    lo, hi = xy.min(0), xy.max(0)
    pad = (hi - lo) * GRID_MARGIN + 1e-6
    gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], grid)
    gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], grid)
    plane = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)  # (G*G, 2), row-major over y then x
    concepts = torch.as_tensor(pca.inverse_transform(plane), dtype=torch.float32, device=device)  # (G*G, D)
    probs = torch.softmax(answer(concepts[None]), -1).cpu().numpy()  # (G*G, N)
    return RegionGrid(x=gx, y=gy, pred=probs.argmax(-1).reshape(grid, grid), conf=probs.max(-1).reshape(grid, grid),
                      exact=True, method="exact: the task's learner applied to this task's PCA plane",
                      class_names=list(detail["class_names"]))
