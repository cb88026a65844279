"""Prototypical networks (Snell et al. 2017): a class is the mean of its support concepts."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.learners.base import MetaLearner


def prototypes(support: torch.Tensor, support_labels: torch.Tensor, ways: int) -> torch.Tensor:
    onehot = F.one_hot(support_labels, ways).to(support.dtype)  # (T, N*K, N)
    sums = onehot.transpose(1, 2) @ support  # (T, N, D)
    return sums / onehot.sum(1).unsqueeze(-1)  # (T, N, D)


def squared_distances(query: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(T, M, D), (T, N, D) -> (T, M, N); written out because cdist's gradient is NaN at 0."""
    return (query.pow(2).sum(-1, keepdim=True) - 2 * query @ centres.transpose(1, 2)
            + centres.pow(2).sum(-1).unsqueeze(1))


class ProtoNet(MetaLearner):
    name = "protonet"
    display_name = "Prototypical networks"

    def centres(self, support, support_labels, ways):
        return prototypes(support, support_labels, ways)  # (T, N, D)

    def logits(self, support, support_labels, query, ways, steps=None, training=True):
        return -squared_distances(query, prototypes(support, support_labels, ways))  # (T, N*Q, N)
