"""Meta-SGD (Li et al. 2017): MAML whose inner step size is a learned tensor, one per head
parameter entry (direction and size both meta-learned), initialised at inner_lr."""
from __future__ import annotations

import torch
from torch import nn

from engine.learners.base import LearnerConfig
from engine.learners.head import Params, expand_rows
from engine.learners.maml import MAML


class MetaSGD(MAML):
    name = "metasgd"
    display_name = "Meta-SGD"

    def __init__(self, concept_dim: int, cfg: LearnerConfig):
        super().__init__(concept_dim, cfg)
        self.step_sizes = nn.ParameterDict({
            k: nn.Parameter(torch.full_like(p, cfg.inner_lr)) for k, p in self.head.shared.items()
        })  # same shapes as the shared head: one alpha per row entry, shared by the classes

    def inner_update(self, params: Params, grads: Params, ways: int) -> Params:
        alpha = expand_rows(dict(self.step_sizes), ways)
        return {k: p - alpha[k] * grads[k] for k, p in params.items()}
