"""Frozen-prefix caching computes what the full model computes, and trains to the same result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_texts, tiny_config, write_config

from lorabudget.cli import main
from lorabudget.config import AdapterConfig
from lorabudget.model.adapters import add_adapters
from lorabudget.model.backbone import load_pretrained, load_tokenizer
from lorabudget.runtime import cache_storage as prefix
from lorabudget.runtime.batching import TokenBatches
from lorabudget.runtime.forward import forward_logits
from lorabudget.runtime.inference import ordered, predict_logits
from lorabudget.runtime.prefix import compute_states, encoder_model, frozen_prefix_length, layers_from
from lorabudget.runtime.tokens import tokenize


@pytest.mark.parametrize("head", ["default", "linear", "pooler"])
def test_cached_forward_equals_full_forward(tiny_bert, head):
    torch.manual_seed(0)
    model = load_pretrained(str(tiny_bert), ["a", "b", "c", "d"])
    model, _, _ = add_adapters(model, AdapterConfig(r=4, layers=[1], init="gaussian"), head)
    assert frozen_prefix_length(model) == 1
    tok = load_tokenizer(str(tiny_bert))
    data = tokenize([t for t, _ in make_texts(40, seed=3)], None, tok, 32, use_cache=False, progress=False)
    full = ordered(*predict_logits(model, TokenBatches(data, tok.pad_token_id), batch_size=16,
                                   device=torch.device("cpu")), len(data))
    states = compute_states(model, data, 1, pad_id=tok.pad_token_id, device=torch.device("cpu"),
                            storage=torch.float32)
    inner = encoder_model(model)

    def cached_forward(m, batch, device):
        with layers_from(inner, 1):
            return m(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"]).logits

    cached = ordered(*predict_logits(model, states, batch_size=16, device=torch.device("cpu"),
                                     forward=cached_forward), len(data))
    np.testing.assert_allclose(cached, full, atol=1e-5)
    # and the swap is undone: names, and the full forward, are as before
    assert len(inner.encoder.layer) == 2
    again = forward_logits(model.eval(), TokenBatches(data, tok.pad_token_id).batch(np.arange(4)), "cpu")
    np.testing.assert_allclose(again.detach().numpy(), full[:4], atol=1e-5)


def test_no_prefix_when_a_lower_layer_trains(tiny_roberta):
    model = load_pretrained(str(tiny_roberta), ["a", "b"])
    bias_all, _, _ = add_adapters(model, AdapterConfig(r=2, layers=[1], bias="all"), "default")
    assert frozen_prefix_length(bias_all) == 0  # biases of layer 0 and the embeddings train
    model = load_pretrained(str(tiny_roberta), ["a", "b"])
    all_layers, _, _ = add_adapters(model, AdapterConfig(r=2, layers="all"), "default")
    assert frozen_prefix_length(all_layers) == 0


def test_states_on_disk_equal_states_in_memory_and_leave_no_file(tiny_bert, tmp_path):
    model = load_pretrained(str(tiny_bert), ["a", "b"])
    model, _, _ = add_adapters(model, AdapterConfig(r=2, layers=[1]), "default")
    tok = load_tokenizer(str(tiny_bert))
    data = tokenize([t for t, _ in make_texts(30, seed=5)], None, tok, 32, use_cache=False, progress=False)
    kwargs = dict(pad_id=tok.pad_token_id, device=torch.device("cpu"))
    in_memory = compute_states(model, data, 1, **kwargs)
    on_disk = compute_states(model, data, 1, on_disk=tmp_path / "prefix", **kwargs)
    assert torch.equal(in_memory.flat, on_disk.flat)
    assert not torch.equal(on_disk.flat, torch.zeros_like(on_disk.flat))
    # the file is unlinked as soon as it is mapped: nothing is left behind, even by a killed run
    assert list((tmp_path / "prefix").iterdir()) == []


def test_states_nbytes_predicts_what_compute_states_stores(tiny_bert):
    model = load_pretrained(str(tiny_bert), ["a", "b"])
    model, _, _ = add_adapters(model, AdapterConfig(r=2, layers=[1]), "default")
    tok = load_tokenizer(str(tiny_bert))
    parts = [tokenize([t for t, _ in make_texts(n, seed=n)], None, tok, 32, use_cache=False, progress=False)
             for n in (20, 7)]
    stored = sum(compute_states(model, d, 1, pad_id=tok.pad_token_id, device=torch.device("cpu")).nbytes()
                 for d in parts)
    assert prefix.states_nbytes(parts, model.config.hidden_size) == stored > 0


def test_auto_storage_keeps_the_states_in_ram_only_when_they_take_at_most_half_of_it():
    gib = 2**30
    assert prefix.choose_storage("auto", 4 * gib, 8 * gib) == "memory"
    assert prefix.choose_storage("auto", 4 * gib + 1, 8 * gib) == "disk"
    assert prefix.choose_storage("auto", 3 * gib, 8 * gib, processes=2) == "disk"  # each process holds a copy
    # an explicit choice is the user's, whatever the machine has
    assert prefix.choose_storage("memory", 10 * gib, 1 * gib) == "memory"
    assert prefix.choose_storage("disk", 1, 100 * gib) == "disk"


@pytest.mark.parametrize("available_gib, expected", [(64, "memory"), (0, "disk")])
def test_auto_storage_in_a_run_follows_the_memory_available(tiny_roberta, easy_csv, tmp_path, monkeypatch,
                                                             available_gib, expected):
    monkeypatch.setattr("lorabudget.runtime.cache_storage.available_memory", lambda: available_gib * 2**30)
    out = tmp_path / "run"
    cfg = tiny_config(tiny_roberta, easy_csv, out, adapter={"layers": [1]}, speed={"prefix_cache_storage": "auto"},
                      optim={"max_steps": 4}, eval={"every_steps": 4})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frozen_prefix_cached_layers"] == 1
    assert summary["prefix_cache_storage"] == expected


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_training_with_and_without_the_cache_agree(tiny_roberta, easy_csv, tmp_path, storage):
    results = {}
    for cache in (True, False):
        out = tmp_path / f"cache-{cache}"
        cfg = tiny_config(tiny_roberta, easy_csv, out, adapter={"layers": [1], "dropout": 0.0},
                          speed={"cache_frozen_prefix": cache, "prefix_cache_storage": storage},
                          optim={"max_steps": 40}, eval={"every_steps": 20})
        assert main(["train", "-c", str(write_config(tmp_path / f"{cache}.yaml", cfg))]) == 0
        results[cache] = json.loads((out / "summary.json").read_text())
    assert results[True]["frozen_prefix_cached_layers"] == 1
    assert results[False]["frozen_prefix_cached_layers"] == 0
    assert results[True]["prefix_cache_storage"] == storage
    assert results[False]["prefix_cache_storage"] is None
    a, b = results[True]["final"], results[False]["final"]
    # the states are stored in fp16: the runs differ by rounding, not by what they learn
    assert abs(a["loss"] - b["loss"]) < 0.02, (a, b)
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.03, (a, b)


def test_compiled_training_matches_eager(tiny_roberta, easy_csv, tmp_path):
    results = {}
    for compiled in (True, False):
        out = tmp_path / f"compile-{compiled}"
        cfg = tiny_config(tiny_roberta, easy_csv, out, adapter={"dropout": 0.0}, speed={"compile": compiled},
                          optim={"max_steps": 12}, eval={"every_steps": 12})
        assert main(["train", "-c", str(write_config(tmp_path / f"{compiled}.yaml", cfg))]) == 0
        results[compiled] = json.loads((out / "summary.json").read_text())
    assert results[True]["compiled"] is True and results[False]["compiled"] is False
    a, b = results[True]["final"], results[False]["final"]
    assert abs(a["loss"] - b["loss"]) < 1e-3, (a, b)  # the same math, fused differently


def test_compile_is_not_applied_over_a_cached_prefix(tiny_roberta, easy_csv, tmp_path):
    """The cached path swaps modules in every forward: a compiled graph would be rebuilt each step."""
    out = tmp_path / "run"
    cfg = tiny_config(tiny_roberta, easy_csv, out, adapter={"layers": [1]}, speed={"compile": True},
                      optim={"max_steps": 4}, eval={"every_steps": 4})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frozen_prefix_cached_layers"] == 1 and summary["compiled"] is False


def test_disk_cache_reserves_its_space_where_the_os_has_no_posix_fallocate(tmp_path, monkeypatch):
    """macOS has no os.posix_fallocate: the file is extended after a check of the free space, and a disk too
    small is the same clear error as elsewhere, not an AttributeError."""
    import shutil
    from collections import namedtuple

    import torch

    from lorabudget.errors import TrainingError
    from lorabudget.runtime.cache_storage import disk_tensor

    monkeypatch.delattr("os.posix_fallocate", raising=False)
    states = disk_tensor((10, 4), torch.float16, tmp_path)
    states[:] = 1.5
    assert states.shape == (10, 4) and float(states.sum()) == 60.0
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 90, 10))
    with pytest.raises(TrainingError, match="no room for the cached states"):
        disk_tensor((10, 4), torch.float16, tmp_path)
