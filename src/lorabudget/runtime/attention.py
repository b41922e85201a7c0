"""Attention with a cheap dropout mask, for training on CPUs.

Why by hand: with attention dropout on (BERT-style encoders train with p = 0.1), PyTorch's CPU
scaled_dot_product_attention leaves its fused kernel for the math path, which draws the mask with `bernoulli_`
(about 11 ns per element on the 2-core EPYC, the batch x heads x length^2 probabilities of every layer) and runs a
"safe" softmax that scans the scores for fully masked rows. Profiled on the recommended MiniLM recipe
(`python benchmarks/profile_step.py`), that was about a tenth of a training step. This is the same computation
as the math path (scores, additive padding mask, softmax, dropout, weighted sum) with FastDropout's mask
(runtime/fastdropout.py: about 1 ns per element, drawn from torch's seeded generator, so runs stay reproducible).

It plugs in through transformers' own extension point (`AttentionInterface`, with the sdpa mask format
registered beside it), so it applies to every family whose attention goes through that interface (BERT, RoBERTa,
ELECTRA, XLM-RoBERTa, ModernBERT, ...) and nowhere else. Without dropout (evaluation, prediction, p = 0), on other
devices, or with anything the plain computation does not cover (causal masks, position biases, grouped heads),
it hands the call to transformers' sdpa function unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .fastdropout import keep_mask

NAME = "lorabudget_cpu_dropout"  # the attention implementation's name in transformers' registry


def cpu_dropout_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query/key/value (batch, heads, length, head_dim); returns the
    output as (batch, length, heads, head_dim) and no attention weights, as the sdpa function does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)  # as the sdpa function
    causal = query.shape[2] > 1 and attention_mask is None and causal  # decides it
    plain = (dropout > 0.0 and query.device.type == "cpu" and not causal
             and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
             and getattr(module, "num_key_value_groups", 1) == 1)
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if attention_mask is not None:
        scores = scores + additive_mask(attention_mask[..., :key.shape[-2]], scores.dtype)
    probs = scores.softmax(dim=-1)
    probs = probs * keep_mask(probs.shape, dropout, probs.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sdpa's mask (bool: True attends; or already additive) as an additive one: 0 where attended, the dtype's most
    negative value elsewhere (a finite value: a fully padded row then gets a uniform softmax, not NaNs). The mask is
    (batch, 1, q, k): small next to the scores, so converting it in every layer costs little."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)


def use_cpu_dropout_attention(model: nn.Module) -> bool:
    """Switch the transformers model in `model` (itself, or inside a peft model or a custom head) to the function
    above where its attention runs through transformers' sdpa interface; True when switched. The switch is runtime
    only: configs saved from the model do not record it (transformers keeps the implementation out of config
    files), so exported models load with their stock attention."""
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    outermost = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if outermost is None or getattr(outermost.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, cpu_dropout_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same padding mask as sdpa's
    outermost.set_attn_implementation(NAME)  # dispatched to its submodels as well
    return True
