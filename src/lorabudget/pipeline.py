"""Assemble the pieces a run needs from its config: the data splits and the adapted model.

Shared by training, evaluation and prediction, so that all three see the same label space, the same validation
rows and the same model construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import add_adapters
from .budget import Breakdown, check_budget, count_trainable
from .config import Config
from .data import Dataset, LabelSpace, Split, load_source, split_train_validation
from .errors import DataError, ModelError
from .heads import HeadSpec
from .models import build_on_meta, load_pretrained


@dataclass
class TrainingData:
    dataset: Dataset
    split: Split

    @property
    def labels(self) -> LabelSpace:
        return self.dataset.labels


def load_training_data(cfg: Config) -> TrainingData:
    dataset = load_source(cfg.data)
    if "train" not in dataset.splits:
        raise DataError(f"{dataset.source} has no training split (a data folder needs train.csv)")
    split = split_train_validation(dataset.splits["train"], cfg.data, len(dataset.labels.names), dataset.source)
    return TrainingData(dataset, split)


def planned_breakdown(cfg: Config, num_labels: int) -> Breakdown:
    """The exact trainable count, from the model's shape on the meta device (no weights, no download)."""
    model = build_on_meta(cfg.model.name, num_labels, trust_remote_code=cfg.model.trust_remote_code)
    peft_model, _, _ = add_adapters(model, cfg.adapter, cfg.head, meta_ok=True)
    return count_trainable(peft_model)


@dataclass
class AdaptedModel:
    model: torch.nn.Module  # a peft model
    head: HeadSpec
    targets: list[str]
    breakdown: Breakdown


def build_adapted_model(cfg: Config, labels: LabelSpace) -> AdaptedModel:
    """Pretrained weights + head + adapters. The budget is checked on the meta-device shape first, so an
    over-budget config fails before any weights load, and again on the real model, which must agree."""
    planned = planned_breakdown(cfg, len(labels.names))
    check_budget(planned, cfg.budget)
    model = load_pretrained(cfg.model.name, labels.names, trust_remote_code=cfg.model.trust_remote_code)
    peft_model, head, targets = add_adapters(model, cfg.adapter, cfg.head)
    real = count_trainable(peft_model)
    if real.total != planned.total:
        raise ModelError(f"the built model trains {real.total:,} parameters but its shape promised "
                         f"{planned.total:,}; please report this as a bug")
    check_budget(real, cfg.budget)
    return AdaptedModel(peft_model, head, targets, real)


def hold_frozen_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store frozen matmul weights (linear layers, embeddings) in `dtype`; trainable ones stay fp32.

    Under autocast a frozen fp32 weight is cast to bf16 on every forward; holding it in bf16 saves that work and
    half the memory. LayerNorm stays fp32 (autocast runs it in fp32 anyway). Returns the parameters converted.
    """
    converted = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            for p in module.parameters(recurse=False):
                if not p.requires_grad and p.dtype != dtype:
                    p.data = p.data.to(dtype)
                    converted += p.numel()
    return converted
