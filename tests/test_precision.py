"""Training in bf16: frozen weights held in bf16, trainable ones in fp32, and peft's adapter-input casts skipped
without changing what the adapted model computes."""

from __future__ import annotations

import pytest
import torch
from conftest import make_texts
from transformers import AutoTokenizer

from lorabudget.config import AdapterConfig
from lorabudget.model.adapters import add_adapters
from lorabudget.model.backbone import load_pretrained
from lorabudget.runtime.precision import autocast, hold_frozen_in, keep_adapter_inputs_in

ALL_ROLES = ["query", "key", "value", "attention_output", "ffn_in", "ffn_out"]


def _adapted(model_dir, dora: bool = False):
    torch.manual_seed(0)
    model = load_pretrained(str(model_dir), ["a", "b", "c", "d"])
    model, _, _ = add_adapters(model, AdapterConfig(r=4, dropout=0.0, target_modules=ALL_ROLES, layers="all",
                                                    use_dora=dora), "default")
    for name, p in model.named_parameters():  # B starts at zero: move it, so the adapters change the output
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return model.eval()


@pytest.mark.parametrize("dora", [False, True])
def test_skipping_the_input_casts_leaves_bf16_logits_unchanged(dora, tiny_roberta):
    model = _adapted(tiny_roberta, dora)
    hold_frozen_in(model, torch.bfloat16)
    enc = AutoTokenizer.from_pretrained(tiny_roberta)([t for t, _ in make_texts(16, seed=3)], padding=True,
                                                      return_tensors="pt")
    with torch.no_grad(), autocast(torch.device("cpu"), torch.bfloat16):
        cast = model(**enc).logits
        skipped = keep_adapter_inputs_in(model)
        kept = model(**enc).logits
    # every adapted linear layer of the 2 layers, but none with DoRA, whose weight norm takes the input's dtype
    assert skipped == (0 if dora else len(ALL_ROLES) * 2)
    # bf16 -> fp32 -> bf16 is lossless, so the adapters' matmuls see the same operands
    assert torch.equal(cast, kept)
    assert keep_adapter_inputs_in(model) == 0  # already off


def test_frozen_weights_go_to_bf16_and_trainable_ones_stay_fp32(tiny_roberta):
    model = _adapted(tiny_roberta)
    converted = hold_frozen_in(model, torch.bfloat16)
    frozen = [p for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))
              for p in m.parameters(recurse=False) if not p.requires_grad]
    assert converted == sum(p.numel() for p in frozen) > 0
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
