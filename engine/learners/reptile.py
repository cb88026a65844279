"""Reptile (Nichol et al. 2018) on the concept-space head.

The head's initialisation moves toward each task's adapted head: theta <- theta + eps * (theta' - theta),
written as the gradient of 1/2 |theta - sg(theta')|^2 so the shared optimizer applies it. The
initialisation is the hidden layer's weights (with --head-hidden) and the output layer's
prototype rows (engine/learners/head.py), which are a function of G's support concepts: the pull
moves G so that the prototypes start where the inner loop took the rows. That is where Reptile
differs from first-order MAML even with the default linear head: its G gradient comes from the sum
of the inner steps (theta - theta'), first-order MAML's from the query loss at the adapted head.
G also learns from the first-order query loss of the adapted (detached) head, and from the
discriminator's loss under DEML.
"""
from __future__ import annotations

from torch.func import vmap

from engine.learners.base import TaskResult, accuracy, cross_entropy
from engine.learners.head import head_logits
from engine.learners.maml import MAML


class Reptile(MAML):
    name = "reptile"
    display_name = "Reptile"

    def _second_order(self, training: bool) -> bool:
        return False  # Reptile is first-order by definition

    def meta_loss(self, support, support_labels, query, query_labels, ways) -> TaskResult:
        path = self.adapt(support, support_labels, ways)
        init = path[0]  # (T, ...): the hidden layer (broadcast over tasks) and the prototype rows
        adapted = {k: v.detach() for k, v in path[-1].items()}  # (T, ...)
        logits = vmap(head_logits)(adapted, query)  # (T, N*Q, N): gradient reaches G via the query concepts
        query_loss = cross_entropy(logits, query_labels)
        tasks = support.shape[0]
        # scaled by 1/(inner_lr * steps) so the pull has the size of an average gradient
        scale = 1.0 / (self.cfg.inner_lr * max(1, self.cfg.inner_steps) * tasks)
        pull = sum(0.5 * (init[k] - adapted[k]).pow(2).sum() for k in init) * scale
        return TaskResult(query_loss + pull, query_loss.detach(), accuracy(logits, query_labels).detach(),
                          logits.detach())
