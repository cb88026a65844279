"""MAML (Finn et al. 2017) on a task head in concept space (as ANIL, Raghu et al. 2019), with the
head's output layer initialised from the support prototypes (Proto-MAML, Triantafillou et al. 2020).

Each task's head starts as a prototype classifier of its support concepts (engine/learners/head.py;
with --head-hidden, after a meta-learned hidden layer) and takes `inner_steps` SGD steps on the
support loss, summed over classes so that a class's row moves by the same step at any number of
ways; the query loss of the adapted head is the meta-loss. What is meta-learned is G (and the
hidden layer): the output layer has no initial weights of its own. Second-order by default
(gradients flow through the inner updates and the prototypes into G), first-order as an option
(the inner gradients are constants; the prototypes still carry G's gradient).

Two equal implementations: `adapt` maps a pure per-task inner loop over the task axis with
torch.func (grad + vmap); `adapt_looped` is the plain per-task autograd loop kept as the
reference that tests hold the batched one to.
"""
from __future__ import annotations

from functools import partial

import torch
from torch.func import grad, vmap

from engine.learners.base import LearnerConfig, MetaLearner, per_task_cross_entropy
from engine.learners.head import HeadInit, Params, head_logits, support_loss


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

    def _shared(self, training: bool) -> Params:
        """The head's meta-learned parameters; evaluation: detached (no graph to the meta-parameters)."""
        return {k: v if training else v.detach() for k, v in self.head.shared.items()}

    def _init(self, shared: Params, x, y, ways: int, training: bool) -> Params:
        """One task's head before the inner loop (HeadInit.task_params); evaluation: detached."""
        # the hidden layer enters as its own node (a clone): the rows start from prototypes computed
        # through it, and the inner step's gradient for it must be the partial one, as torch.func's
        # grad takes it, not the total one autograd.grad would sum over both paths (adapt_looped)
        init = self.head.task_params(shared, x, y, ways) | {k: v.clone() for k, v in shared.items()}
        return init if training else {k: v.detach() for k, v in init.items()}

    # --- batched: one pure function per task, vmapped over the task axis -------------------
    def _adapt_one(self, shared: Params, x, y, steps: int, ways: int, second_order: bool,
                   training: bool) -> list[Params]:
        path = [self._init(shared, x, y, ways, training)]
        for _ in range(steps):
            g = grad(support_loss)(path[-1], x, y, ways)
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
        one = partial(self._adapt_one, steps=steps, ways=ways, second_order=self._second_order(training),
                      training=training)
        with torch.enable_grad():  # evaluation runs under no_grad, but the inner loop needs gradients
            return vmap(one, in_dims=(None, 0, 0))(self._shared(training), support, support_labels)

    # --- reference: the plain per-task loop with torch.autograd -----------------------------
    def adapt_looped(self, support, support_labels, ways: int, steps: int, training: bool = True) -> list[Params]:
        second_order = self._second_order(training)
        per_task = []
        with torch.enable_grad():
            for x, y in zip(support, support_labels):
                params = self._init(self._shared(training), x, y, ways, training)
                if not training:  # detached: leaves whose gradients the inner loop takes
                    params = {k: v.requires_grad_() for k, v in params.items()}
                path = [params]
                for _ in range(steps):
                    loss = support_loss(params, x, y, ways)
                    # retain: the prototype start shares its graph (to G) with every step's loss
                    grads = torch.autograd.grad(loss, list(params.values()), create_graph=second_order,
                                                retain_graph=True)
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
