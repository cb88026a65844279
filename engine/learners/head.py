"""The task head that gradient learners adapt in concept space, as a pure function of its
parameters (so torch.func can take per-task gradients and vmap them over tasks).

The output layer starts each task from the support prototypes (Proto-MAML, Triantafillou et al.
2020): class k's row is W_k = 2 c_k and its bias b_k = -|c_k|^2, with c_k the mean of class k's
support features, so before any inner step the head is a prototype classifier
(W_k . x + b_k = -|x - c_k|^2 + |x|^2: ProtoNet's logits up to a per-query constant), and the
inner loop starts from a sensible classifier for any number of ways and any class order. The
output layer has no meta-learned weights of its own (a learned row shared by the classes would
get exactly zero meta-gradient: softmax ignores a shift common to every class); what is
meta-learned is G, which the prototypes depend on, and the optional hidden layer.
"""
from __future__ import annotations

import torch
from torch import nn

Params = dict[str, torch.Tensor]


def one_hot(y: torch.Tensor, ways: int, dtype: torch.dtype) -> torch.Tensor:
    """(M,) labels -> (M, N) one-hot rows (written as a comparison so that vmap maps it)."""
    return (y.unsqueeze(-1) == torch.arange(ways, device=y.device)).to(dtype)


def features(params: Params, x: torch.Tensor) -> torch.Tensor:
    """(M, D) concepts -> (M, D') what the output layer reads: the hidden layer's output, if any."""
    if "hidden_weight" in params:
        return torch.relu(x @ params["hidden_weight"].T + params["hidden_bias"])
    return x


def prototype_rows(h: torch.Tensor, y: torch.Tensor, ways: int) -> Params:
    """Output layer of a prototype classifier for one task: row_weight (N, D') = 2 c_k,
    row_bias (N,) = -|c_k|^2, with c_k the mean of class k's support features h (M, D')."""
    onehot = one_hot(y, ways, h.dtype)  # (M, N)
    centres = (onehot.T @ h) / onehot.sum(0).clamp_min(1).unsqueeze(-1)  # (N, D')
    return {"row_weight": 2 * centres, "row_bias": -centres.pow(2).sum(-1)}


class HeadInit(nn.Module):
    """The head's meta-learned part (the optional hidden layer; none for a linear head) and the
    prototype initialisation of its output layer."""

    def __init__(self, concept_dim: int, hidden: int = 0):
        super().__init__()
        self.shared = nn.ParameterDict()  # meta-learned, shared by every task
        self.width = concept_dim  # D': the output layer's input width
        if hidden > 0:
            layer = nn.Linear(concept_dim, hidden)
            self.shared["hidden_weight"] = nn.Parameter(layer.weight.detach().clone())  # (H, D)
            self.shared["hidden_bias"] = nn.Parameter(layer.bias.detach().clone())  # (H,)
            self.width = hidden

    @staticmethod
    def task_params(shared: Params, x: torch.Tensor, y: torch.Tensor, ways: int) -> Params:
        """One task's head before its inner loop: the shared hidden layer and the output layer from
        the support prototypes of support concepts x (M, D) with labels y (M,)."""
        return {**shared, **prototype_rows(features(shared, x), y, ways)}


def head_logits(params: Params, x: torch.Tensor) -> torch.Tensor:
    """(M, D) concepts -> (M, N) logits for one task."""
    return features(params, x) @ params["row_weight"].T + params["row_bias"]


def support_loss(params: Params, x: torch.Tensor, y: torch.Tensor, ways: int) -> torch.Tensor:
    """One task's inner loss: the sum over classes of each class's mean cross-entropy (M, D), (M,)
    -> scalar. A class's row then moves by the same step whatever the number of ways N (a mean over
    all N*K support images would shrink every row's step by 1/N)."""
    losses = torch.nn.functional.cross_entropy(head_logits(params, x), y, reduction="none")  # (M,)
    per_class = one_hot(y, ways, losses.dtype)  # (M, N)
    weights = per_class @ (1.0 / per_class.sum(0).clamp_min(1))  # (M,) 1 / (images of the image's class)
    return (losses * weights).sum()
