"""Meta-SGD (Li et al. 2017): MAML whose inner step size is a learned tensor, one per head
parameter entry (direction and size both meta-learned), initialised at inner_lr. The output
layer's step sizes are one row (and one bias step) shared by the classes, since its rows are
the classes' own (initialised from their prototypes) and any class can sit in any row."""
from __future__ import annotations

import torch
from torch import nn

from engine.learners.base import LearnerConfig
from engine.learners.head import Params
from engine.learners.maml import MAML


class MetaSGD(MAML):
    name = "metasgd"
    display_name = "Meta-SGD"

    def __init__(self, concept_dim: int, cfg: LearnerConfig):
        super().__init__(concept_dim, cfg)
        shapes = {k: p.shape for k, p in self.head.shared.items()}  # the hidden layer's, if any
        shapes.update(row_weight=torch.Size([self.head.width]), row_bias=torch.Size([]))
        self.step_sizes = nn.ParameterDict({k: nn.Parameter(torch.full(s, cfg.inner_lr)) for k, s in shapes.items()})

    def inner_update(self, params: Params, grads: Params, ways: int) -> Params:
        # row_weight (N, D') and row_bias (N,) broadcast against their per-entry steps (D',), ()
        return {k: p - self.step_sizes[k] * grads[k] for k, p in params.items()}
