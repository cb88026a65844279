"""Concept discriminator D: concepts (B, concept_dim) -> logits over the external classes."""
from __future__ import annotations

from torch import nn


class ConceptDiscriminator(nn.Module):
    def __init__(self, concept_dim: int, num_classes: int, hidden: int = 0):
        super().__init__()
        if hidden > 0:  # optional MLP; linear keeps its decision regions easy to draw exactly
            self.net = nn.Sequential(nn.Linear(concept_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        else:
            self.net = nn.Linear(concept_dim, num_classes)

    def forward(self, concepts):
        return self.net(concepts)  # (B, num_classes)
