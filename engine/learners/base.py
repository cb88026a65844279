"""The one protocol every meta-learner follows.

A meta-learner works in concept space: it receives concepts that the generator G already
computed for a meta-batch of tasks and returns query logits. Shapes throughout:
  support (T, N*K, D), support_labels (T, N*K), query (T, N*Q, D), logits (T, N*Q, N).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LearnerConfig:
    inner_steps: int = 5  # gradient learners: SGD steps on the support set per task
    inner_lr: float = 0.5  # their step size (concept space is small; ANIL-style heads like large steps)
    first_order: bool = False  # MAML/Meta-SGD: drop second-order terms (cheaper, slightly worse)
    head_hidden: int = 0  # gradient learners: 0 = linear task head, >0 = one hidden layer of this width
    batched: bool = True  # inner loops vmapped over tasks; False runs the per-task reference loop
    matching_scale: float = 10.0  # matching networks: initial cosine-similarity temperature


@dataclass
class TaskResult:
    loss: torch.Tensor  # scalar to minimise; its gradient is the learner's meta-gradient
    query_loss: torch.Tensor  # scalar mean query cross-entropy, detached (for reporting)
    accuracy: torch.Tensor  # scalar query accuracy, detached
    logits: torch.Tensor  # (T, N*Q, N), detached


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every task and query: (T, M, N), (T, M) -> scalar."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def per_task_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each task: (T, M, N), (T, M) -> (T,)."""
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    return losses.view(labels.shape).mean(-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).float().mean()


class MetaLearner(nn.Module):
    name: ClassVar[str]
    adapts_by_steps: ClassVar[bool] = False  # True: adaptation curves over inner steps, else over shots

    def __init__(self, concept_dim: int, cfg: LearnerConfig):
        super().__init__()
        self.concept_dim, self.cfg = concept_dim, cfg

    def logits(self, support, support_labels, query, ways: int, steps: int | None = None,
               training: bool = True) -> torch.Tensor:
        """Query logits (T, N*Q, N). `training=False` skips graphs only meta-training needs."""
        raise NotImplementedError

    def meta_loss(self, support, support_labels, query, query_labels, ways: int) -> TaskResult:
        logits = self.logits(support, support_labels, query, ways)
        loss = cross_entropy(logits, query_labels)
        return TaskResult(loss, loss.detach(), accuracy(logits, query_labels).detach(), logits.detach())
