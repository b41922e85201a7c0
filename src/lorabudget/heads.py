"""Classification heads. Each is a budget lever: roberta's own head alone is 593,668 parameters, 59% of a 1M budget.

A head is set up on the plain transformers model *before* adapters are added; `peft` then trains the head's
modules in full (`modules_to_save`). The model families are told apart by their configuration's `model_type`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import ModelError

ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}
BERT_LIKE = {"bert"}
HEAD_TYPES = ("default", "pooler", "linear")


@dataclass(frozen=True)
class HeadSpec:
    type: str
    modules_to_save: tuple[str, ...]  # module names (suffixes) that train in full
    stock_loadable: bool  # can `PeftModel.from_pretrained` rebuild it on the stock model class?


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


class FirstToken(nn.Module):
    """Stands in for BERT's pooler: the first token's hidden state, untransformed (no parameters)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[:, 0]


def model_family(config) -> str:
    if config.model_type in ROBERTA_LIKE:
        return "roberta"
    if config.model_type in BERT_LIKE:
        return "bert"
    return config.model_type


def head_module_names(model) -> tuple[str, ...]:
    """Names of the modules the default head consists of ('classifier' or 'score')."""
    names = [n for n in ("classifier", "score") if isinstance(getattr(model, n, None), nn.Module)]
    if not names:
        raise ModelError(f"{type(model).__name__} has no 'classifier' or 'score' module to train as a head")
    return (names[0],)


def apply_head(model, head_type: str) -> HeadSpec:
    """Set up the head on a transformers sequence-classification model; return what trains."""
    config = model.config
    family = model_family(config)
    head = head_module_names(model)
    if head_type == "default":
        return HeadSpec("default", head, stock_loadable=True)
    if head_type == "pooler":
        pooler = getattr(model.base_model, "pooler", None)
        if family != "bert" or pooler is None:
            raise ModelError(f"head.type=pooler needs a BERT-style model with a pooler; {config.model_type!r} has "
                             "none (roberta's 'default' head already holds the dense layer that plays its part)")
        return HeadSpec("pooler", head + ("pooler",), stock_loadable=True)
    if head_type == "linear":
        dropout = getattr(config, "classifier_dropout", None) or getattr(config, "hidden_dropout_prob", 0.1)
        std = getattr(config, "initializer_range", 0.02)
        if family == "roberta":
            device = next(model.classifier.parameters()).device
            with torch.device(device):
                model.classifier = FirstTokenLinear(config.hidden_size, config.num_labels, dropout, std)
            return HeadSpec("linear", head, stock_loadable=False)
        if family == "bert":
            # BERT's classifier is already one linear layer on the pooled output; dropping the pooler's dense +
            # tanh leaves exactly a linear layer on [CLS].
            model.base_model.pooler = FirstToken()
            return HeadSpec("linear", head, stock_loadable=False)
        raise ModelError(f"head.type=linear is available for roberta- and BERT-style models, not "
                         f"{config.model_type!r}; use head.type=default")
    raise ModelError(f"unknown head type {head_type!r}; choose one of {', '.join(HEAD_TYPES)}")
