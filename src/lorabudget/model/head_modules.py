"""The torch modules of the heads in `heads.HEADS`, and the functions that put them on a model.

Needs nothing but torch: a merged export carries the source of what its head uses (`Head.exported`) in its
modeling file, so that the head it rebuilds at load is the one that trained.
"""

from __future__ import annotations

import torch
from torch import nn


class FirstTokenLinear(nn.Module):
    """Dropout, then one linear layer on the first token's hidden state ([CLS] / <s>)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, init_std: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.out_proj.weight, std=init_std)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.out_proj(self.dropout(features[:, 0, :]))


class LowRankDense(nn.Module):
    """A hidden x hidden dense layer of rank k, as the product of hidden -> k -> hidden.

    Only the second factor has a bias: U (V x) + b is exactly a dense layer whose weight U V has rank k. Both
    factors keep PyTorch's default init (uniform, scaled by fan-in), so the product starts at a moderate scale;
    two std-0.02 factors would make it, and its gradients, vanish.
    """

    def __init__(self, hidden_size: int, rank: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class FirstTokenLowRank(nn.Module):
    """roberta's classification head with its dense layer factored through rank k: dropout, dense (hidden -> k ->
    hidden), tanh, dropout, output layer, on the first token's hidden state."""

    def __init__(self, hidden_size: int, rank: int, num_labels: int, dropout: float, init_std: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = LowRankDense(hidden_size, rank)
        self.out_proj = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.out_proj.weight, std=init_std)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(features[:, 0, :])))
        return self.out_proj(self.dropout(x))


class LowRankPooler(nn.Module):
    """Stands in for BERT's pooler: tanh of a rank-k dense layer on the first token (BERT's classifier follows)."""

    def __init__(self, hidden_size: int, rank: int):
        super().__init__()
        self.dense = LowRankDense(hidden_size, rank)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


class FirstToken(nn.Module):
    """Stands in for BERT's pooler: the first token's hidden state, untransformed (no parameters)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[:, 0]


def head_settings(model) -> tuple[float, float, torch.device]:
    """(dropout, init std, device) for a new head, as the model's own head would have them."""
    config = model.config
    dropout = getattr(config, "classifier_dropout", None) or getattr(config, "hidden_dropout_prob", 0.1)
    return dropout, getattr(config, "initializer_range", 0.02), next(model.classifier.parameters()).device


def install_linear(model, family: str, rank: int) -> None:
    """One output layer on the first token. BERT's classifier is already one linear layer on the pooled output;
    dropping the pooler's dense + tanh leaves exactly that."""
    dropout, std, device = head_settings(model)
    with torch.device(device):
        if family == "roberta":
            model.classifier = FirstTokenLinear(model.config.hidden_size, model.config.num_labels, dropout, std)
        else:
            model.base_model.pooler = FirstToken()


def install_lowrank(model, family: str, rank: int) -> None:
    """roberta: its head with the dense layer factored through rank k. BERT: the pooler's place (first token ->
    rank-k dense -> tanh), BERT's own classifier behind it."""
    dropout, std, device = head_settings(model)
    with torch.device(device):
        if family == "roberta":
            model.classifier = FirstTokenLowRank(model.config.hidden_size, rank, model.config.num_labels, dropout,
                                                 std)
        else:
            model.base_model.pooler = LowRankPooler(model.config.hidden_size, rank)
