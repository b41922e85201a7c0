"""The forward pass, one for training, validation and prediction: logits for a batch of token ids, or for a batch
of cached states (the frozen prefix's outputs), which enter the encoder at the batch's `start_layer`."""

from __future__ import annotations

import torch
from torch import nn

from .prefix import encoder_model, layers_from


def forward_logits(model: nn.Module, batch: dict, device: torch.device, inner: nn.Module | None = None) -> torch.Tensor:
    """`inner` is the encoder inside `model` (found when not given; a DDP-wrapped model needs it given)."""
    mask = batch["attention_mask"].to(device, non_blocking=True)
    if "inputs_embeds" not in batch:
        return model(input_ids=batch["input_ids"].to(device, non_blocking=True), attention_mask=mask).logits
    with layers_from(inner if inner is not None else encoder_model(model), batch["start_layer"]):
        return model(inputs_embeds=batch["inputs_embeds"].to(device, non_blocking=True), attention_mask=mask).logits
