"""Classification heads. Each is a budget lever: roberta's own head alone is 593,668 parameters, 59% of a 1M budget.

'lowrank' keeps the shape of roberta's head (dense, tanh, output layer) but factors its hidden x hidden dense
through rank k, so the head costs 2 x hidden x k + hidden + the output layer: 52,996 for roberta-base at k=32.

A head is set up on the plain transformers model *before* adapters are added; `peft` then trains the head's
modules in full (`modules_to_save`). The model families are told apart by their configuration's `model_type`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import HeadConfig
from .errors import ModelError

ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}
BERT_LIKE = {"bert"}
HEAD_TYPES = ("default", "pooler", "linear", "lowrank")


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


CUSTOM_HEADS = ("linear", "lowrank")  # heads the stock transformers classes cannot express


def install_custom_head(model, family: str, head_type: str, rank: int) -> None:
    """Put a 'linear' or 'lowrank' head on a roberta- or BERT-style sequence-classification model.

    Needs nothing but torch and the head classes above: exported models carry this function's own source in
    their modeling file, so that the head they rebuild at load is the one that trained.
    """
    config = model.config
    dropout = getattr(config, "classifier_dropout", None) or getattr(config, "hidden_dropout_prob", 0.1)
    std = getattr(config, "initializer_range", 0.02)
    device = next(model.classifier.parameters()).device
    with torch.device(device):
        if family == "roberta" and head_type == "linear":
            model.classifier = FirstTokenLinear(config.hidden_size, config.num_labels, dropout, std)
        elif family == "roberta" and head_type == "lowrank":
            model.classifier = FirstTokenLowRank(config.hidden_size, rank, config.num_labels, dropout, std)
        elif family == "bert" and head_type == "linear":
            # BERT's classifier is already one linear layer on the pooled output; dropping the pooler's dense +
            # tanh leaves exactly a linear layer on [CLS].
            model.base_model.pooler = FirstToken()
        elif family == "bert" and head_type == "lowrank":
            # The pooler's place: first token -> rank-k dense -> tanh; BERT's own classifier stays behind it.
            model.base_model.pooler = LowRankPooler(config.hidden_size, rank)
        else:
            raise ValueError(f"no {head_type!r} head for the {family!r} family")


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


def apply_head(model, head: HeadConfig | str) -> HeadSpec:
    """Set up the head on a transformers sequence-classification model; return what trains.

    `head` is the config's head section, or just a head type (its other fields, such as the rank, at their
    defaults)."""
    if isinstance(head, str):
        head_type, rank = head, HeadConfig.model_fields["rank"].default
    else:
        head_type, rank = head.type, head.rank
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
    if head_type in CUSTOM_HEADS:
        if family not in ("roberta", "bert"):
            raise ModelError(f"head.type={head_type} (the default is 'linear') is available for roberta- and "
                             f"BERT-style models, not {config.model_type!r}; set head.type=default for the model "
                             "class's own head")
        install_custom_head(model, family, head_type, rank)
        # BERT's lowrank head takes the pooler's place in front of BERT's own classifier: both train.
        saved = head + ("pooler",) if (family, head_type) == ("bert", "lowrank") else head
        return HeadSpec(head_type, saved, stock_loadable=False)
    raise ModelError(f"unknown head type {head_type!r}; choose one of {', '.join(HEAD_TYPES)}")
