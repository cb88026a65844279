"""Matching networks (Vinyals et al. 2016) without full-context embeddings: each query attends
to every support concept by scaled cosine similarity and takes the attention-weighted labels."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.learners.base import LearnerConfig, MetaLearner


class MatchingNet(MetaLearner):
    name = "matching"
    display_name = "Matching networks"

    def __init__(self, concept_dim: int, cfg: LearnerConfig):
        super().__init__(concept_dim, cfg)
        # learned temperature: raw cosine similarities in [-1, 1] give too flat an attention
        self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.matching_scale)))

    def logits(self, support, support_labels, query, ways, steps=None, training=True):
        sims = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)  # (T, N*Q, N*K)
        attention = torch.softmax(sims * self.log_scale.exp(), dim=-1)
        probs = attention @ F.one_hot(support_labels, ways).to(attention.dtype)  # (T, N*Q, N), rows sum to 1
        # log-probabilities are valid logits: log_softmax leaves them unchanged
        return probs.clamp_min(1e-8).log()

    def attention_scale(self) -> float:
        return float(self.log_scale.exp())
