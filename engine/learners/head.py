"""The task head that gradient learners adapt in concept space, as a pure function of its
parameters (so torch.func can take per-task gradients and vmap them over tasks).

The head's initial output layer is one learned row shared by every class (and a shared bias):
expanded to N rows it serves any number of ways and any class order, and every class starts
from the same logit, so the inner loop alone tells the classes apart.
"""
from __future__ import annotations

import torch
from torch import nn

Params = dict[str, torch.Tensor]


class HeadInit(nn.Module):
    """The meta-learned initial head: optional hidden layer, then the shared class row."""

    def __init__(self, concept_dim: int, hidden: int = 0):
        super().__init__()
        self.shared = nn.ParameterDict()
        width = concept_dim
        if hidden > 0:
            layer = nn.Linear(concept_dim, hidden)
            self.shared["hidden_weight"] = nn.Parameter(layer.weight.detach().clone())  # (H, D)
            self.shared["hidden_bias"] = nn.Parameter(layer.bias.detach().clone())  # (H,)
            width = hidden
        self.shared["row_weight"] = nn.Parameter(torch.zeros(width))  # (D',) one row for every class
        self.shared["row_bias"] = nn.Parameter(torch.zeros(()))  # () one bias for every class

    def task_params(self, ways: int) -> Params:
        return expand_rows(dict(self.shared), ways)


def expand_rows(shared: Params, ways: int) -> Params:
    """Shared row -> one row per class: row_weight (D',) -> (N, D'), row_bias () -> (N,)."""
    out = dict(shared)
    out["row_weight"] = shared["row_weight"].unsqueeze(0).expand(ways, -1).contiguous()
    out["row_bias"] = shared["row_bias"].expand(ways).contiguous()
    return out


def head_logits(params: Params, x: torch.Tensor) -> torch.Tensor:
    """(M, D) concepts -> (M, N) logits for one task."""
    if "hidden_weight" in params:
        x = torch.relu(x @ params["hidden_weight"].T + params["hidden_bias"])
    return x @ params["row_weight"].T + params["row_bias"]
