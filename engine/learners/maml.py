"""MAML (Finn et al. 2017) on a task head in concept space (as ANIL, Raghu et al. 2019).

Each task's head starts from the meta-learned init and takes `inner_steps` SGD steps on the
support concepts; the query loss of the adapted head is the meta-loss. Second-order by default
(gradients flow through the inner updates into G and the init), first-order as an option.

Two equal implementations: `adapt` maps a pure per-task inner loop over the task axis with
torch.func (grad + vmap); `adapt_looped` is the plain per-task autograd loop kept as the
reference that tests hold the batched one to.
"""
from __future__ import annotations

from functools import partial

import torch
from torch.func import grad, vmap

from engine.learners.base import LearnerConfig, MetaLearner, per_task_cross_entropy
from engine.learners.head import HeadInit, Params, head_logits


def support_loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(head_logits(params, x), y)  # one task: (M, D), (M,)


class MAML(MetaLearner):
    name = "maml"
    display_name = "MAML"
    adapts_by_steps = True

    def __init__(self, concept_dim: int, cfg: LearnerConfig):
        super().__init__(concept_dim, cfg)
        self.head = HeadInit(concept_dim, cfg.head_hidden)

    def inner_update(self, params: Params, grads: Params, ways: int) -> Params:
        return {k: p - self.cfg.inner_lr * grads[k] for k, p in params.items()}

    def _second_order(self, training: bool) -> bool:
        return training and not self.cfg.first_order

    def _init(self, ways: int, training: bool) -> Params:
        init = self.head.task_params(ways)
        if training:
            return init
        return {k: v.detach().requires_grad_() for k, v in init.items()}  # evaluation: no graph to the meta-parameters

    # --- batched: one pure function per task, vmapped over the task axis -------------------
    def _adapt_one(self, init: Params, x, y, steps: int, ways: int, second_order: bool) -> list[Params]:
        path = [init]
        for _ in range(steps):
            g = grad(support_loss)(path[-1], x, y)
            if not second_order:
                g = {k: v.detach() for k, v in g.items()}
            path.append(self.inner_update(path[-1], g, ways))
        return path

    def adapt(self, support, support_labels, ways: int, steps: int | None = None,
              training: bool = True) -> list[Params]:
        """Head parameters after 0..steps inner steps, each with a leading task axis (T, ...)."""
        steps = self.cfg.inner_steps if steps is None else steps
        if not self.cfg.batched:
            return self.adapt_looped(support, support_labels, ways, steps, training)
        one = partial(self._adapt_one, steps=steps, ways=ways, second_order=self._second_order(training))
        with torch.enable_grad():  # evaluation runs under no_grad, but the inner loop needs gradients
            return vmap(one, in_dims=(None, 0, 0))(self._init(ways, training), support, support_labels)

    # --- reference: the plain per-task loop with torch.autograd -----------------------------
    def adapt_looped(self, support, support_labels, ways: int, steps: int, training: bool = True) -> list[Params]:
        second_order = self._second_order(training)
        per_task = []
        with torch.enable_grad():
            for x, y in zip(support, support_labels):
                params = self._init(ways, training)
                path = [params]
                for _ in range(steps):
                    loss = support_loss(params, x, y)
                    grads = torch.autograd.grad(loss, list(params.values()), create_graph=second_order)
                    g = {k: v if second_order else v.detach() for k, v in zip(params, grads)}
                    params = self.inner_update(params, g, ways)
                    path.append(params)
                per_task.append(path)
        return [{k: torch.stack([p[i][k] for p in per_task]) for k in per_task[0][i]} for i in range(steps + 1)]

    def logits(self, support, support_labels, query, ways, steps=None, training=True):
        adapted = self.adapt(support, support_labels, ways, steps, training)[-1]
        return vmap(head_logits)(adapted, query)  # (T, N*Q, N)

    def trace(self, support, support_labels, query, query_labels, ways: int, steps: int):
        """Query loss and accuracy per task after 0..steps inner steps: two (steps+1, T) tensors."""
        losses, accs = [], []
        for params in self.adapt(support, support_labels, ways, steps, training=False):
            logits = vmap(head_logits)({k: v.detach() for k, v in params.items()}, query)  # (T, N*Q, N)
            losses.append(per_task_cross_entropy(logits, query_labels))
            accs.append((logits.argmax(-1) == query_labels).float().mean(-1))
        return torch.stack(losses), torch.stack(accs)

    # --- the protocol's curve and episode view: over inner steps ------------------------------
    def curve(self, support, support_labels, query, query_labels, ways, steps):
        return self.trace(support, support_labels, query, query_labels, ways, steps)

    def curve_points(self, shots, steps):
        return list(range(steps + 1))

    def curve_shots(self, shots):
        return shots

    def curve_index(self, shots, steps):
        return steps

    def step_logits(self, support, support_labels, query, ways, steps=None):
        path = self.adapt(support, support_labels, ways, steps, training=False)
        return torch.stack([vmap(head_logits)({k: v.detach() for k, v in p.items()}, query)
                            for p in path])  # (S+1, T, N*Q, N)
