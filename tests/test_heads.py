"""Heads read the encoder's token states as `head.pooling` says: the first token, or the mean of the real tokens
with padding left out."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lorabudget.config import AdapterConfig, HeadConfig
from lorabudget.model.adapters import add_adapters
from lorabudget.model.heads import apply_head


def _logits(model, tok, texts: list[str]) -> torch.Tensor:
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("family,head", [("roberta", "linear"), ("roberta", "lowrank"), ("bert", "linear"),
                                         ("bert", "lowrank")])
def test_mean_pooling_leaves_padding_out_under_peft(family, head, tiny_roberta, tiny_bert):
    """peft trains the head as a copy of the module (modules_to_save): the copy must see the mask too."""
    folder = tiny_roberta if family == "roberta" else tiny_bert
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=4)
    peft_model, _, _ = add_adapters(model, AdapterConfig(target_modules=["query", "value"]),
                                    HeadConfig(type=head, rank=4, pooling="mean"))
    peft_model.eval()
    alone = _logits(peft_model, tok, ["stocks rose"])[0]
    padded = _logits(peft_model, tok, ["stocks rose", "the match ended in a draw after extra time and penalties"])[0]
    assert torch.allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize("family,head", [("roberta", "linear"), ("roberta", "lowrank"), ("bert", "linear"),
                                         ("bert", "lowrank")])
def test_mean_pooling_leaves_padding_out(family, head, tiny_roberta, tiny_bert):
    folder = tiny_roberta if family == "roberta" else tiny_bert
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=4).eval()
    apply_head(model, HeadConfig(type=head, rank=4, pooling="mean"))
    short, long = "stocks rose", "the match ended in a draw after extra time and penalties in the rain"
    alone = _logits(model, tok, [short])[0]
    padded = _logits(model, tok, [short, long])[0]  # `short` now carries padding up to `long`'s length
    assert torch.allclose(alone, padded, atol=1e-5)

    # the same states read by the first token give other logits: the setting is really used
    torch.manual_seed(0)
    first = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=4).eval()
    apply_head(first, HeadConfig(type=head, rank=4, pooling="cls"))
    first.load_state_dict(model.state_dict())
    assert not torch.allclose(_logits(first, tok, [short])[0], alone, atol=1e-4)


def test_mean_pooling_without_a_mask_averages_every_position(tiny_bert):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4).eval()
    apply_head(model, HeadConfig(type="linear", pooling="mean"))
    ids = tok(["stocks rose"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        without = model(input_ids=ids).logits
        with_mask = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.allclose(without, with_mask, atol=1e-6)
