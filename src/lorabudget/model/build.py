"""The adapted model a run trains: pretrained weights + head + adapters, with its budget checked twice: on the
meta-device shape before any weights load, and on the real model, which must agree with it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Config
from ..data import LabelSpace
from ..errors import ModelError
from .adapters import add_adapters
from .backbone import build_on_meta, load_pretrained, portable_model_id
from .budget import Breakdown, check_budget, count_trainable
from .heads import HeadSpec


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
    for adapter_config in peft_model.peft_config.values():  # recorded in adapter_config.json: not a local path
        adapter_config.base_model_name_or_path = portable_model_id(cfg.model.name)
    real = count_trainable(peft_model)
    if real.total != planned.total:
        raise ModelError(f"the built model trains {real.total:,} parameters but its shape promised "
                         f"{planned.total:,}; please report this as a bug")
    check_budget(real, cfg.budget)
    return AdaptedModel(peft_model, head, targets, real)
