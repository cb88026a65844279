"""Reptile (Nichol et al. 2018) on the concept-space head.

The head init moves toward each task's adapted weights: theta <- theta + eps * (theta' - theta),
written as the gradient of 1/2 |theta - sg(theta')|^2 so the shared optimizer applies it.
Reptile itself gives the generator no signal, so G learns from the first-order query loss of
the adapted (detached) head, plus the discriminator's loss under DEML.
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
        adapted = {k: v.detach() for k, v in self.adapt(support, support_labels, ways)[-1].items()}  # (T, ...)
        logits = vmap(head_logits)(adapted, query)  # (T, N*Q, N): gradient reaches G via the query concepts
        query_loss = cross_entropy(logits, query_labels)
        init = self.head.task_params(ways)
        tasks = support.shape[0]
        # scaled by 1/(inner_lr * steps) so the pull has the size of an average gradient
        scale = 1.0 / (self.cfg.inner_lr * max(1, self.cfg.inner_steps) * tasks)
        pull = sum(0.5 * (init[k] - adapted[k]).pow(2).sum() for k in init) * scale
        return TaskResult(query_loss + pull, query_loss.detach(), accuracy(logits, query_labels).detach(),
                          logits.detach())
