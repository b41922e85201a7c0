"""Every encoder family in model/families.py, on a tiny model of it built in code: roles resolve to its own module
names, the planner's arithmetic equals the built model's count, a run trains, reloads in a new process to the
same predictions, and exports (a stock model class for the family's own head, its own modeling code for
lorabudget's heads).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tokenizer, check_plan_equals_build, make_texts, one_torch_thread, tiny_config, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lorabudget
from lorabudget.cli import main
from lorabudget.config import build_config
from lorabudget.errors import ModelError
from lorabudget.model.adapters import add_adapters
from lorabudget.model.backbone import build_on_meta
from lorabudget.model.families import FAMILIES
from lorabudget.model.heads import HEADS, check_family
from lorabudget.tools import planner

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=70, initializer_range=0.4)
TINY = {  # model_type -> its configuration's own fields besides SMALL
    "bert": {"pad_token_id": 1},
    "roberta": {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "type_vocab_size": 1},
    "xlm-roberta": {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "type_vocab_size": 1},
    "electra": {"pad_token_id": 1, "embedding_size": 32},
    "distilbert": {"pad_token_id": 1, "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    "deberta-v2": {"pad_token_id": 1, "relative_attention": True, "position_buckets": 16,
                   "pos_att_type": ["p2c", "c2p"], "type_vocab_size": 0},
    "mpnet": {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
    "modernbert": {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "cls_token_id": 0, "sep_token_id": 2,
                   "global_attn_every_n_layers": 2, "local_attention": 16, "hidden_activation": "gelu"},
}


def build_family_model(folder: Path, model_type: str) -> Path:
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    tok = build_tokenizer(folder)
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), **SMALL, **TINY[model_type])
    AutoModel.from_config(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def family_models(tmp_path_factory) -> dict[str, Path]:
    return {t: build_family_model(tmp_path_factory.mktemp(t), t) for t in TINY}


def test_every_family_has_a_tiny_model():
    assert {t for fam in FAMILIES.values() for t in fam.model_types} >= set(TINY)


@pytest.mark.parametrize("model_type", TINY)
def test_roles_name_the_family_modules(model_type, family_models):
    family = FAMILIES[[k for k, f in FAMILIES.items() if model_type in f.model_types][0]]
    cfg = build_config({"model": {"name": str(family_models[model_type])},
                        "adapter": {"target_modules": list(family.roles), "layers": "all", "r": 2},
                        "head": {"type": "default"}})
    _, _, targets = add_adapters(build_on_meta(cfg.model.name, 4), cfg.adapter, cfg.head, meta_ok=True)
    assert len(targets) == 2 * len(family.roles)
    relative = [re.split(r"\.layers?\.\d+\.", t)[1] for t in targets]
    for role, module in family.roles.items():
        assert relative.count(module) == 2, role  # once in each of the two layers


def test_a_missing_role_names_the_roles_the_family_offers(family_models):
    cfg = build_config({"model": {"name": str(family_models["modernbert"])},
                        "adapter": {"target_modules": ["query"], "layers": "all"}, "head": {"type": "default"}})
    with pytest.raises(ModelError, match=r"ModernBERT has no attention query.*'qkv'.*roles it offers: qkv"):
        add_adapters(build_on_meta(cfg.model.name, 4), cfg.adapter, cfg.head, meta_ok=True)


def test_distilbert_offers_only_its_own_head(family_models):
    with pytest.raises(ModelError, match="DistilBERT's classifier .* ReLU"):
        check_family("linear", "distilbert", "distilbert")


@st.composite
def allocations(draw, model_type: str):
    family = next(f for f in FAMILIES.values() if model_type in f.model_types)
    roles = draw(st.lists(st.sampled_from(sorted(family.roles)), min_size=1, max_size=4, unique=True))
    key = next(k for k, f in FAMILIES.items() if f is family)
    heads = [h for h in HEADS if HEADS[h].families is None or key in HEADS[h].families]
    return ({"r": draw(st.integers(1, 6)), "target_modules": roles,
             "layers": draw(st.sampled_from(["all", "top-1", [0]])),
             "rank_pattern": draw(st.dictionaries(st.sampled_from(roles), st.integers(1, 6), max_size=2)),
             "bias": draw(st.sampled_from(["none", "all", "lora_only"])), "use_dora": draw(st.booleans())},
            {"type": draw(st.sampled_from(heads)), "rank": draw(st.integers(1, 8)),
             "pooling": draw(st.sampled_from(["cls", "mean"]))})


@pytest.mark.parametrize("model_type", TINY)
def test_planner_arithmetic_equals_the_built_model(model_type, family_models):
    folder = str(family_models[model_type])
    shape = planner.model_shape(folder, 3)

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(drawn=allocations(model_type))
    def check(drawn):
        adapter, head = drawn
        check_plan_equals_build(build_config({"model": {"name": folder}, "adapter": adapter, "head": head}), shape)

    check()


# ---- training, reload in a new process, export -----------------------------------------------------------

@pytest.fixture(scope="module")
def family_runs(family_models, tmp_path_factory) -> dict[str, Path]:
    """A short run per family with its own head, LoRA on every role it has."""
    from conftest import write_csv

    folder = tmp_path_factory.mktemp("family-runs")
    data = write_csv(folder / "easy.csv", make_texts(96, seed=3))
    runs = {}
    with one_torch_thread():
        for model_type, model_dir in family_models.items():
            roles = list(next(f for f in FAMILIES.values() if model_type in f.model_types).roles)
            out = folder / model_type
            cfg = tiny_config(model_dir, data, out, adapter={"target_modules": roles}, optim={"max_steps": 8},
                              eval={"every_steps": 8})
            assert main(["train", "-c", str(write_config(folder / f"{model_type}.yaml", cfg))]) == 0
            runs[model_type] = out
    return runs


TEXTS = [t for t, _ in make_texts(10, seed=11)]


def test_each_run_counts_what_trains(family_runs):
    for model_type, run in family_runs.items():
        summary = json.loads((run / "summary.json").read_text())
        groups = summary["breakdown"]["groups"]
        assert summary["trainable_params"] == sum(groups.values()) > 0, model_type
        assert any(g.startswith("lora ") for g in groups) and "other" not in groups, (model_type, groups)


def test_runs_reload_in_a_new_process_to_the_same_predictions(family_runs):
    here = {t: lorabudget.load(run).predict_proba(TEXTS).tolist() for t, run in family_runs.items()}
    code = ("import json, sys, lorabudget\nruns, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
            "print(json.dumps({t: lorabudget.load(r).predict_proba(texts).tolist() for t, r in runs.items()}))")
    res = subprocess.run([sys.executable, "-c", code, json.dumps({t: str(r) for t, r in family_runs.items()}),
                          json.dumps(TEXTS)], capture_output=True, text=True, env={**__import__("os").environ,
                                                                                    "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    there = json.loads(res.stdout.strip().splitlines()[-1])
    for model_type in family_runs:
        np.testing.assert_allclose(there[model_type], here[model_type], atol=1e-6, err_msg=model_type)


def test_default_head_exports_to_the_stock_class(family_runs, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for model_type, run in family_runs.items():
        merged = tmp_path / model_type
        assert main(["export", str(run), "--merged", str(merged)]) == 0
        model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
        assert not type(model).__name__.startswith("Lorabudget") and not (merged / "modeling_lorabudget.py").exists()
        tok = AutoTokenizer.from_pretrained(merged)
        with torch.no_grad():
            batch = tok(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
            probs = torch.softmax(model(**batch).logits, -1).numpy()
        np.testing.assert_allclose(probs, lorabudget.load(run).predict_proba(TEXTS), atol=1e-5, err_msg=model_type)


@pytest.mark.parametrize("model_type,head", [("deberta-v2", "linear"), ("modernbert", "lowrank"),
                                             ("electra", "lowrank"), ("mpnet", "linear")])
def test_own_heads_with_mean_pooling_export_with_their_code(model_type, head, family_models, easy_csv, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "run"
    roles = list(next(f for f in FAMILIES.values() if model_type in f.model_types).roles)[:2]
    cfg = tiny_config(family_models[model_type], easy_csv, out, adapter={"target_modules": roles},
                      head={"type": head, "rank": 4, "pooling": "mean"}, optim={"max_steps": 8},
                      eval={"every_steps": 8})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_params"] == sum(summary["breakdown"]["groups"].values())
    merged = tmp_path / "merged"
    assert main(["export", str(out), "--merged", str(merged), "--custom-code"]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(merged, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(merged)
    with torch.no_grad():
        batch = tok(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
        probs = torch.softmax(model(**batch).logits, -1).numpy()
    np.testing.assert_allclose(probs, lorabudget.load(out).predict_proba(TEXTS), atol=1e-5)
