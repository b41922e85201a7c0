"""The CPU attention with a cheap dropout mask computes sdpa's attention: the same output where no probability is
dropped, dropout's statistics where some are, sdpa itself in evaluation; and the switch to it stays out of saved
configs, so exported models load with their stock attention."""

from __future__ import annotations

import torch
from transformers import AutoModel, BertConfig, BertModel

from lorabudget.runtime import attention
from lorabudget.runtime.attention import NAME, cpu_dropout_attention, use_cpu_dropout_attention


def _bert(attention_dropout: float) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=attention_dropout, attn_implementation="sdpa")
    return BertModel(config)


def _batch():
    ids = torch.randint(3, 50, (6, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(6, 12, dtype=torch.long)
    for i in range(6):
        mask[i, 4 + i:] = 0  # padding of every length, as length-bucketed batches have
    return ids, mask


def _output_and_grad(model: BertModel) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = _batch()
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    (out * mask[..., None]).square().sum().backward()
    return out.detach(), model.encoder.layer[0].attention.self.query.weight.grad.clone()


def test_without_a_dropped_probability_it_is_sdpa_forward_and_backward(monkeypatch):
    reference = _bert(0.0).train()
    out_ref, grad_ref = _output_and_grad(reference)
    model = _bert(0.3).train()  # dropout on: the hand-written path is taken ...
    assert use_cpu_dropout_attention(model) and model.config._attn_implementation == NAME
    monkeypatch.setattr(attention, "keep_mask", lambda shape, p, dtype: torch.ones(shape, dtype=dtype))
    out, grad = _output_and_grad(model)  # ... with a mask that keeps everything
    assert torch.allclose(out, out_ref, atol=1e-5) and torch.allclose(grad, grad_ref, atol=1e-5)


def test_dropout_keeps_the_expectation_and_follows_the_torch_seed():
    torch.manual_seed(0)
    query = key = torch.zeros(4, 2, 50, 8)  # uniform probabilities: 1/50 each
    value = torch.ones(4, 2, 50, 8)
    mask = torch.ones(4, 1, 50, 50, dtype=torch.bool)

    def attend(seed):
        torch.manual_seed(seed)
        return cpu_dropout_attention(torch.nn.Module(), query, key, value, mask, dropout=0.5)[0]

    out = attend(3)
    assert out.shape == (4, 50, 2, 8)
    assert abs(out.mean().item() - 1.0) < 0.02  # the kept probabilities, scaled by 2, still sum to 1 on average
    assert out.std().item() > 0.05  # but each row drops its own
    assert torch.equal(out, attend(3)) and not torch.equal(out, attend(4))


def test_padded_keys_get_no_weight():
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8)
    mask = torch.tensor([True, True, False, False]).expand(1, 1, 4, 4)
    value_padded = value.clone()
    value_padded[..., 2:, :] = 1e4  # whatever the padded positions hold
    a = cpu_dropout_attention(torch.nn.Module(), query, key, value, mask, dropout=1e-9)[0]
    b = cpu_dropout_attention(torch.nn.Module(), query, key, value_padded, mask, dropout=1e-9)[0]
    assert torch.allclose(a, b)


def test_evaluation_is_sdpa_itself():
    model = _bert(0.3).eval()
    ids, mask = _batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).last_hidden_state
        use_cpu_dropout_attention(model)
        after = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(before, after)


def test_the_switch_is_not_saved(tmp_path):
    model = _bert(0.1)
    use_cpu_dropout_attention(model)
    model.save_pretrained(tmp_path)
    assert NAME not in (tmp_path / "config.json").read_text()
    assert AutoModel.from_pretrained(tmp_path).config._attn_implementation == "sdpa"


def test_models_on_other_attention_are_left_alone():
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, attn_implementation="eager")
    model = BertModel(config)
    assert not use_cpu_dropout_attention(model)
    assert model.config._attn_implementation == "eager"
    assert not use_cpu_dropout_attention(torch.nn.Linear(2, 2))


def test_a_causal_call_is_handed_to_sdpa():
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    decoder = torch.nn.Module()
    decoder.is_causal = True  # no padding mask and a causal module: sdpa's causal attention, as the model asked
    out = cpu_dropout_attention(decoder, query, key, value, None, dropout=1e-9)[0]
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-6)
