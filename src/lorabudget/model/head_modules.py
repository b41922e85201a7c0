"""The torch modules of the heads in `heads.HEADS`, and the functions that put them on a model.

Needs nothing but torch: a merged export carries the source of what its head uses (`Head.exported`) in its
modeling file, so that the head it rebuilds at load is the one that trained.
"""

from __future__ import annotations

import torch
from torch import nn


class MaskSlot:
    """The attention mask of the current forward call, shared by the hook that sets it and every pooling module
    that reads it. Copies share it too: peft trains a head as a deep copy of the original module
    (`modules_to_save`), and that copy must see the same mask as the hook's."""

    def __init__(self):
        self.mask: torch.Tensor | None = None

    def __deepcopy__(self, memo):
        return self


class TokenPooling(nn.Module):
    """One vector per text from the encoder's token states: the first token ([CLS] / <s>) or the mean over the
    real tokens. Sentence-embedding checkpoints (all-MiniLM, all-mpnet) were trained to be read by the mean.

    A head sees only the token states, not the attention mask; `watch_mask` hands it the mask of each forward
    call, so that padding never enters the mean. Without a mask every position counts, as transformers' own
    default mask says."""

    def __init__(self, mode: str = "cls"):
        super().__init__()
        self.mode = mode
        self.slot = MaskSlot()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls":
            return hidden[:, 0]
        if self.slot.mask is None:
            return hidden.mean(dim=1)
        keep = self.slot.mask[:, : hidden.shape[1]].to(hidden.dtype).unsqueeze(-1)
        return (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)


def watch_mask(model, pooling: TokenPooling) -> None:
    """Give `pooling` the attention mask of every call of the encoder (`model.base_model`). The hook sits on the
    encoder, not on `model`: peft calls `model.forward` directly, which runs no hooks of `model` itself."""
    slot = pooling.slot

    def remember(module, args, kwargs):
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        slot.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    if pooling.mode != "cls":
        model.base_model.register_forward_pre_hook(remember, with_kwargs=True)


class FirstTokenLinear(nn.Module):
    """Dropout, then one linear layer on the pooled token states (the first token's, or their mean)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, init_std: float, pooling: str = "cls"):
        super().__init__()
        self.pool = TokenPooling(pooling)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.out_proj.weight, std=init_std)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.out_proj(self.dropout(self.pool(features)))


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
    hidden), tanh, dropout, output layer, on the pooled token states."""

    def __init__(self, hidden_size: int, rank: int, num_labels: int, dropout: float, init_std: float,
                 pooling: str = "cls"):
        super().__init__()
        self.pool = TokenPooling(pooling)
        self.dropout = nn.Dropout(dropout)
        self.dense = LowRankDense(hidden_size, rank)
        self.out_proj = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.out_proj.weight, std=init_std)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(self.pool(features))))
        return self.out_proj(self.dropout(x))


class LowRankPooler(nn.Module):
    """Stands in for BERT's pooler: tanh of a rank-k dense layer on the pooled token states (BERT's classifier
    follows)."""

    def __init__(self, hidden_size: int, rank: int, pooling: str = "cls"):
        super().__init__()
        self.pool = TokenPooling(pooling)
        self.dense = LowRankDense(hidden_size, rank)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(self.pool(hidden_states)))


def head_settings(model) -> tuple[float, float, torch.device]:
    """(dropout, init std, device) for a new head, as the model's own head would have them."""
    config = model.config
    dropout = getattr(config, "classifier_dropout", None) or getattr(config, "hidden_dropout_prob", 0.1)
    return dropout, getattr(config, "initializer_range", 0.02), next(model.classifier.parameters()).device


class LowRankTanh(nn.Module):
    """tanh of a rank-k dense layer on one vector per text: ModernBERT's prediction head's place, after the
    model's own pooling."""

    def __init__(self, hidden_size: int, rank: int):
        super().__init__()
        self.dense = LowRankDense(hidden_size, rank)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(pooled))


def output_layer(model, hidden_size: int, std: float) -> nn.Linear:
    """The family's classifier when it reads a hidden-wide vector, else a fresh one that does (DeBERTa's reads
    `pooler_hidden_size`, which a config may set apart from the hidden size)."""
    if model.classifier.in_features == hidden_size:
        return model.classifier
    layer = nn.Linear(hidden_size, model.config.num_labels)
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)
    return layer


def install_linear(model, style: str, rank: int, pooling: str = "cls") -> None:
    """One output layer on the pooled token states, put where the family's head `style` says
    (families.Family.head_style). Where the model keeps its own output layer behind a pooler (BERT, DeBERTa,
    ModernBERT), a pooler that only pools (no dense, no tanh) leaves exactly that."""
    dropout, std, device = head_settings(model)
    hidden = model.config.hidden_size
    with torch.device(device):
        if style == "classifier":
            model.classifier = FirstTokenLinear(hidden, model.config.num_labels, dropout, std, pooling)
            watch_mask(model, model.classifier.pool)
        elif style == "pooler":
            model.base_model.pooler = TokenPooling(pooling)
            watch_mask(model, model.base_model.pooler)
        elif style == "top_pooler":
            model.pooler = TokenPooling(pooling)
            model.classifier = output_layer(model, hidden, std)
            watch_mask(model, model.pooler)
        else:  # 'prediction_head': the model pools by its config (with the mask), then runs its head
            model.config.classifier_pooling = pooling
            model.head = nn.Identity()


def install_lowrank(model, style: str, rank: int, pooling: str = "cls") -> None:
    """The pooled tokens through a rank-k dense layer and tanh, then the output layer. roberta-style: its own
    head with the dense layer factored; BERT and DeBERTa: in the pooler's place; ModernBERT: in its prediction
    head's place."""
    dropout, std, device = head_settings(model)
    hidden = model.config.hidden_size
    with torch.device(device):
        if style == "classifier":
            model.classifier = FirstTokenLowRank(hidden, rank, model.config.num_labels, dropout, std, pooling)
            watch_mask(model, model.classifier.pool)
        elif style == "pooler":
            model.base_model.pooler = LowRankPooler(hidden, rank, pooling)
            watch_mask(model, model.base_model.pooler.pool)
        elif style == "top_pooler":
            model.pooler = LowRankPooler(hidden, rank, pooling)
            model.classifier = output_layer(model, hidden, std)
            watch_mask(model, model.pooler.pool)
        else:  # 'prediction_head'
            model.config.classifier_pooling = pooling
            model.head = LowRankTanh(hidden, rank)
