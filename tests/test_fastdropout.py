"""FastDropout is dropout: the keep probability, the scale, the gradient, eval mode, seeding; and the engine swaps
it in on CPUs, with the attention function that uses its mask (resuming with it is covered by test_resume, whose
adapters have dropout 0.1)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, write_config
from torch import nn

from lorabudget.runtime.fastdropout import FastDropout, keep_mask, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keeps_each_element_with_probability_one_minus_p_and_rescales(p):
    torch.manual_seed(0)
    out = FastDropout(p).train()(torch.ones(1000, 1000))
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - p) < 0.002  # the proportion's std is at most 0.0005 here
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / (1 - p)))
    assert abs(out.mean().item() - 1.0) < 0.005  # expectation preserved, as nn.Dropout's


def test_masks_are_independent_across_elements():
    """No structure from the 16-bit slicing of 64-bit words: neighbours are dropped independently."""
    torch.manual_seed(1)
    kept = keep_mask(torch.Size([2_000_000]), 0.5, torch.float32) > 0
    both = (kept[0::4] & kept[1::4]).float().mean().item()  # two draws from one 64-bit word
    assert abs(both - 0.25) < 0.003


def test_gradient_flows_through_the_kept_elements_only():
    torch.manual_seed(2)
    x = torch.randn(64, 48, requires_grad=True)
    out = FastDropout(0.3).train()(x)
    (out * 3).sum().backward()
    mask = out.detach() / x.detach()
    assert torch.allclose(x.grad, 3 * mask)
    kept = mask[mask != 0]
    assert 0 < kept.numel() < mask.numel() and torch.allclose(kept, torch.full_like(kept, 1 / 0.7))


def test_eval_mode_and_p_zero_are_the_identity():
    x = torch.randn(10, 10)
    assert FastDropout(0.5).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FastDropout(1.0)


def test_torch_seed_decides_the_mask():
    def draw(seed):
        torch.manual_seed(seed)
        return FastDropout(0.1).train()(torch.ones(300, 300))

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))


def test_swaps_every_dropout_and_leaves_the_weights_alone(tiny_roberta):
    from lorabudget.config import AdapterConfig
    from lorabudget.model.adapters import add_adapters
    from lorabudget.model.backbone import load_pretrained

    model = load_pretrained(str(tiny_roberta), ["a", "b", "c", "d"])
    for m in model.modules():  # the tiny model is built without dropout; give it some, as real encoders have
        if isinstance(m, nn.Dropout):
            m.p = 0.1
    adapter = AdapterConfig(r=4, dropout=0.1, target_modules=["query", "value"], layers="all")
    model, _, _ = add_adapters(model, adapter, "default")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = sum(1 for m in model.modules() if type(m) is nn.Dropout and m.p > 0)
    assert use_fast_dropout(model) == expected > 4  # embeddings, 2 layers x 2, head, 2 layers x q,v adapters
    assert not [m for m in model.modules() if type(m) is nn.Dropout and m.p > 0]
    lora_dropouts = [m.lora_dropout["default"] for m in model.modules() if hasattr(m, "lora_dropout")]
    assert len(lora_dropouts) == 4 and all(isinstance(d, FastDropout) for d in lora_dropouts)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("fast", [True, False])
def test_the_engine_swaps_on_cpu_unless_told_not_to(fast, tiny_roberta, easy_csv, tmp_path):
    from lorabudget.cli import main

    out = tmp_path / "run"
    cfg = tiny_config(tiny_roberta, easy_csv, out, adapter={"dropout": 0.1}, optim={"max_steps": 3},
                      speed={"fast_dropout": fast})
    assert main(["train", "-c", str(write_config(tmp_path / "cfg.yaml", cfg))]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["fast_dropout_modules"] > 0) is fast
    assert summary["fast_attention_dropout"] is fast  # attention probabilities: runtime/attention.py (test_attention)
