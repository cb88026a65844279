"""The one protocol every meta-learner follows.

A meta-learner works in concept space: it receives concepts that the generator G already
computed for a meta-batch of tasks and returns query logits. Shapes throughout:
  support (T, N*K, D), support_labels (T, N*K), query (T, N*Q, D), logits (T, N*Q, N).
Support and query rows are class-major (class 0's K shots, then class 1's ...): see
engine.data.episodes.class_major_labels.

Every learner answers (callers ask it, never branch on its type):
  logits(...)                    query logits after adapting to the support set
  meta_loss(...)                 the loss meta-training minimises (TaskResult)
  curve(...)                     query loss and accuracy along its adaptation axis, (P, T) each:
                                 after 0..S inner steps (`adapts_by_steps`) or with 1..K shots
  curve_points(shots, steps)     the x values of that curve; curve_shots(shots): the shots per
                                 class its curve wants; curve_index(shots, steps): the point of
                                 the curve that is the N-way K-shot answer after `steps`
  step_logits(...)               query logits after 0..S inner steps (S+1, T, N*Q, N), or None
  centres(...)                   the class centres it compares queries to (T, N, D), or None
  display_name                   how pages, charts and reports name it

Gradient learners (MAML and its kin, `adapts_by_steps = True`) adapt a task head with inner SGD
steps and also provide:
  adapt(support, support_labels, ways, steps=None, training=True) -> list of S+1 head parameter
      dicts, each with a leading task axis (T, ...): the head after 0..S inner steps
  trace(support, support_labels, query, query_labels, ways, steps) -> (losses, accs), two
      (S+1, T) tensors: query loss and accuracy per task after 0..S steps, without graphs
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
    inner_lr: float = 0.1  # their step size; per class row, at any number of ways (the inner loss sums over classes)
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


CURVE_SHOTS = 5  # metric learners' adaptation curves run over 1..5 shots unless told otherwise


class MetaLearner(nn.Module):
    name: ClassVar[str]
    display_name: ClassVar[str]
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

    # --- the adaptation curve: over shots here, over inner steps for gradient learners ----------
    def curve(self, support, support_labels, query, query_labels, ways: int,
              steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Query loss and accuracy per task with the first 1..K shots of each class: (K, T) each.
        Support rows are class-major, so the first k of each class are a reshape away."""
        t, k_max = len(support), support.shape[1] // ways
        losses, accs = [], []
        for k in range(1, k_max + 1):
            zk = support.reshape(t, ways, k_max, -1)[:, :, :k].reshape(t, ways * k, -1)  # (T, N*k, D)
            lk = support_labels.reshape(t, ways, k_max)[:, :, :k].reshape(t, ways * k)
            logits = self.logits(zk, lk, query, ways, training=False)
            losses.append(per_task_cross_entropy(logits, query_labels))
            accs.append((logits.argmax(-1) == query_labels).float().mean(-1))
        return torch.stack(losses).detach(), torch.stack(accs).detach()

    def curve_points(self, shots: int, steps: int) -> list[int]:
        return list(range(1, shots + 1))

    def curve_shots(self, shots: int) -> int:
        """Shots per class the curve's episodes should hold (a shot curve needs more than 1)."""
        return max(shots, CURVE_SHOTS)

    def curve_index(self, shots: int, steps: int) -> int:
        return shots - 1

    @property
    def curve_axis(self) -> str:
        return "steps" if self.adapts_by_steps else "shots"

    # --- what the episode view draws ---------------------------------------------------------
    def step_logits(self, support, support_labels, query, ways: int, steps: int | None = None) -> torch.Tensor | None:
        return None

    def centres(self, support, support_labels, ways: int) -> torch.Tensor | None:
        return None

    def attention_scale(self) -> float | None:
        """For learners that answer by attending over every support concept (softmax of the cosine
        similarities times this scale, then the attention-weighted one-hot labels, as log-probabilities):
        the scale; None for the others. What an exported model needs to answer as the learner does."""
        return None
