"""The adapter methods beside LoRA (VeRA, (IA)^3, LayerNorm tuning) and the options that go with a method
(adapter.train_layernorms, optim.loraplus_lr_ratio): each counted exactly, by the planner's arithmetic and by the
built model alike; each refusing what it does not have; each planned, trained, resumed exactly after a stop and
reloaded with its adapters merged to the run's own predictions.

roberta-base is built on the meta device from its shipped configuration (no weights, no Hub); everything else
runs on the tiny models of conftest.
"""

from __future__ import annotations

import json
import math
import re
import signal
from pathlib import Path

import pytest
import torch
from conftest import check_plan_equals_build, make_texts, tiny_config, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from lorabudget.cli import main
from lorabudget.config import build_config, load_config
from lorabudget.errors import ConfigError
from lorabudget.model.build import planned_breakdown
from lorabudget.model.methods import METHODS
from lorabudget.tools import planner


def config(model: str, adapter: dict, head: dict | None = None, **top):
    return build_config({"model": {"name": str(model)}, "adapter": {"layers": "all", **adapter},
                         "head": head or {"type": "default"}, **top})


def arithmetic(cfg, shape: planner.ModelShape) -> planner.Counts:
    return planner.count_allocation(shape, planner.allocation_from_config(cfg, shape))


# ---- exact figures for roberta-base --------------------------------------------------------------------------

HEAD = 593_668  # roberta's own head: dense 768 x 768 + 768, output 768 x 4 + 4
ROBERTA_BASE = {  # adapter section -> (total, some of its groups), 12 layers, hidden 768, intermediate 3,072
    "vera-qv-r256": ({"method": "vera", "r": 256, "target_modules": ["query", "value"]},
                     HEAD + 12 * 2 * (256 + 768), {"vera attention.self.query": 12 * (256 + 768)}),
    # the paper's placement: keys and values scale their outputs, the FFN output its 3,072-wide input
    "ia3-kv-ffn_out": ({"method": "ia3", "target_modules": ["key", "value", "ffn_out"]},
                       HEAD + 12 * (768 + 768 + 3072), {"ia3 output.dense": 12 * 3072,
                                                        "ia3 attention.self.key": 12 * 768}),
    "ia3-attention-output": ({"method": "ia3", "target_modules": ["attention.output.dense"]},
                             HEAD + 12 * 768, {"ia3 attention.output.dense": 12 * 768}),
    "ln_tuning": ({"method": "ln_tuning"}, HEAD + 12 * 2 * 2 * 768,
                  {"layernorm attention.output.LayerNorm": 12 * 2 * 768, "layernorm output.LayerNorm": 12 * 2 * 768}),
    "ln_tuning-top-half": ({"method": "ln_tuning", "layers": "top-half"}, HEAD + 6 * 2 * 2 * 768, {}),
    # AdaLoRA counts its initial rank: Q (r x 768), P (768 x r) and E (r) per module, in LoRA's groups
    "adalora-qv-r6": ({"method": "adalora", "r": 6, "target_r": 4, "target_modules": ["query", "value"]},
                      HEAD + 12 * 2 * (6 * (768 + 768) + 6), {"lora attention.self.value": 12 * (6 * 1536 + 6)}),
    # the common q,v r=8 recipe (888,580) with the LayerNorms of every layer beside it
    "lora-qv-r8-layernorms": ({"r": 8, "target_modules": ["query", "value"], "train_layernorms": True},
                              888_580 + 12 * 2 * 2 * 768, {"layernorm output.LayerNorm": 12 * 2 * 768}),
    # bias='all' (990,724) and the LayerNorms: their biases are counted once, in the LayerNorms' groups
    "lora-qv-r8-bias-all-layernorms": ({"r": 8, "target_modules": ["query", "value"], "bias": "all",
                                        "train_layernorms": True}, 990_724 + 12 * 2 * 768, {}),
}


@pytest.fixture(scope="module")
def roberta_base() -> planner.ModelShape:
    return planner.model_shape("roberta-base", 4)


@pytest.mark.parametrize("name", ROBERTA_BASE)
def test_roberta_base_figures_by_arithmetic_and_built_model(name, roberta_base):
    adapter, expected, some_groups = ROBERTA_BASE[name]
    cfg = config("roberta-base", adapter)
    counts = arithmetic(cfg, roberta_base)
    built = planned_breakdown(cfg, 4)
    assert counts.total == built.total == expected
    assert counts.groups == dict(built.groups) and counts.layers == built.layers
    assert some_groups.items() <= counts.groups.items()


# ---- property: arithmetic == built model, on random configs --------------------------------------------------

TARGETS = ["query", "key", "value", "dense", "ffn_in", "ffn_out", "attention.output.dense", "output.dense"]


@st.composite
def adapter_and_head(draw, family: str):
    method = draw(st.sampled_from(["vera", "ia3", "ln_tuning", "lora", "adalora"]))
    adapter = {"method": method, "r": draw(st.integers(METHODS[method].min_rank, 9)),
               "target_modules": draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=4, unique=True)),
               "layers": draw(st.none() | st.sampled_from(["top-1", [0], [1], [0, 1]])),
               "bias": draw(st.sampled_from(METHODS[method].biases))}
    if method != "ln_tuning":
        adapter["train_layernorms"] = draw(st.booleans())
    if method == "lora":
        adapter["use_dora"] = draw(st.booleans())
    if method == "adalora":
        adapter["target_r"] = draw(st.integers(1, adapter["r"] - 1))
    heads = ["default", "linear", "lowrank"] + (["pooler"] if family == "bert" else [])
    return adapter, {"type": draw(st.sampled_from(heads)), "rank": draw(st.integers(1, 12))}


def _check(model_dir: Path, adapter: dict, head: dict) -> None:
    cfg = config(model_dir, adapter, head)
    built = check_plan_equals_build(cfg, planner.model_shape(str(model_dir), 3))
    assert "other" not in built.groups and not any(g.startswith("head (LayerNorm") for g in built.groups)
    if adapter["method"] == "ln_tuning" or adapter.get("train_layernorms"):
        assert any(g.startswith("layernorm ") for g in built.groups)


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(drawn=adapter_and_head("roberta"))
def test_arithmetic_equals_built_model_roberta(tiny_roberta, drawn):
    _check(tiny_roberta, *drawn)


@SETTINGS
@given(drawn=adapter_and_head("bert"))
def test_arithmetic_equals_built_model_bert(tiny_bert, drawn):
    _check(tiny_bert, *drawn)


@pytest.mark.parametrize("model_type", ["distilbert", "modernbert"])
def test_other_families_count_alike(model_type, tmp_path):
    """Other names and shapes: DistilBERT's LayerNorms are `sa_layer_norm` and `output_layer_norm`, its FFN output
    `ffn.lin2`; ModernBERT's LayerNorms have no bias and its first layer no attention norm at all, and it has no
    'query' role (LN tuning reads no targets, so the default ones cannot fail it)."""
    from test_families import build_family_model

    from lorabudget.model.families import FAMILIES

    folder = build_family_model(tmp_path, model_type)
    roles = list(next(f for f in FAMILIES.values() if model_type in f.model_types).roles)
    for adapter in [{"method": "vera", "r": 3, "target_modules": roles}, {"method": "ia3", "target_modules": roles},
                    {"method": "ln_tuning"}, {"method": "ln_tuning", "layers": [1]},
                    {"r": 2, "target_modules": roles[:1], "train_layernorms": True, "bias": "all"}]:
        cfg = config(folder, adapter)
        counts = arithmetic(cfg, planner.model_shape(str(folder), 4))
        built = planned_breakdown(cfg, 4)
        assert (counts.total, counts.groups, counts.layers) == (built.total, dict(built.groups), built.layers)
        if model_type == "modernbert" and adapter.get("method") == "ln_tuning" and "layers" not in adapter:
            assert built.layers[0] < built.layers[1]  # layer 0: the MLP norm only
        if adapter.get("method") == "ia3":  # the FFN output scales its input: the intermediate width, 64
            assert counts.groups[f"ia3 {'ffn.lin2' if model_type == 'distilbert' else 'mlp.Wo'}"] == 2 * 64


def test_vera_shares_one_pair_of_projections_sized_to_the_widest_layer(tiny_roberta):
    """Adapted layers of different shapes share one frozen pair, as buffers: peft slices it per layer."""
    from lorabudget.model.adapters import add_adapters
    from lorabudget.model.backbone import load_pretrained

    cfg = config(tiny_roberta, {"method": "vera", "r": 5, "target_modules": ["query", "ffn_in", "ffn_out"]})
    model, _, _ = add_adapters(load_pretrained(str(tiny_roberta), ["a", "b", "c", "d"]), cfg.adapter, cfg.head)
    buffers = {n: b.shape for n, b in model.named_buffers() if ".vera_A." in n or ".vera_B." in n}
    # one pair for the model: 64 is the widest input (FFN output's) and output (FFN input's) of the tiny model
    assert set(buffers.values()) == {torch.Size([5, 64]), torch.Size([64, 5])}
    assert not any(".vera_A." in n or ".vera_B." in n for n, _ in model.named_parameters())


# ---- what a method does not have is refused, with the way out -------------------------------------------------

@pytest.mark.parametrize("raw, words", [
    ({"adapter": {"method": "vera", "use_dora": True}}, ["adapter.use_dora", "method=vera", "adapter.method=lora"]),
    ({"adapter": {"method": "vera", "rank_pattern": {"value": 8}}}, ["rank_pattern", "one rank r"]),
    ({"adapter": {"method": "ia3", "init": "pissa"}}, ["adapter.init='pissa'", "method=ia3"]),
    ({"adapter": {"method": "ia3", "bias": "all"}}, ["adapter.bias='all'", "choose from none"]),
    ({"adapter": {"method": "ln_tuning", "bias": "lora_only"}}, ["adapter.bias='lora_only'"]),
    ({"adapter": {"method": "ln_tuning", "use_rslora": True}}, ["adapter.use_rslora"]),
    ({"adapter": {"method": "ln_tuning", "train_layernorms": True}}, ["train_layernorms", "already"]),
    ({"adapter": {"method": "vera"}, "optim": {"loraplus_lr_ratio": 16}}, ["loraplus_lr_ratio", "method=vera"]),
    ({"optim": {"loraplus_lr_ratio": 0.5}}, ["optim.loraplus_lr_ratio", "greater than or equal to 1"]),
    ({"adapter": {"method": "adalora", "use_dora": True}}, ["adapter.use_dora", "method=adalora"]),
    ({"adapter": {"method": "adalora", "rank_pattern": {"value": 8}}}, ["rank_pattern", "one rank r"]),
    ({"adapter": {"method": "adalora", "r": 4, "target_r": 4}}, ["adapter.target_r=4", "below adapter.r=4"]),
    ({"adapter": {"target_r": 2}}, ["adapter.target_r=2", "method=lora", "adapter.method=adalora"]),
    ({"adapter": {"method": "ia3", "orth_reg_weight": 0.5}}, ["adapter.orth_reg_weight", "adapter.method=adalora"]),
    ({"adapter": {"method": "adalora", "tinit": 0.5, "tfinal": 0.6}}, ["adapter.tinit=0.5", "below 1"]),
    ({"adapter": {"method": "adalora", "tfinal": 2.5}}, ["adapter.tfinal", "a step count"]),
    ({"adapter": {"method": "adalora"}, "optim": {"loraplus_lr_ratio": 4}}, ["loraplus_lr_ratio", "method=adalora"]),
    ({"adapter": {"method": "adalora"}, "data": {"target_source": "t.csv"}, "selftrain": {"rounds": 1}},
     ["adapter.method=adalora", "selftrain.rounds"]),
], ids=["vera-dora", "vera-rank-pattern", "ia3-pissa", "ia3-bias", "ln-bias", "ln-rslora", "ln-twice",
        "vera-loraplus", "loraplus-below-1", "adalora-dora", "adalora-rank-pattern", "adalora-no-pruning",
        "lora-target-r", "ia3-orth-reg", "adalora-no-allocation-phase", "adalora-tfinal-float", "adalora-loraplus",
        "adalora-selftrain"])
def test_an_option_the_method_lacks_is_a_config_error(raw, words):
    with pytest.raises(ConfigError) as err:
        build_config(raw, "test")
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_refused_option_exits_2_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("adapter: {method: vera, use_dora: true}\n")
    assert main(["plan", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "use_dora" in err and "Traceback" not in err


def test_lora_options_stay_with_lora():
    cfg = build_config({"adapter": {"use_dora": True, "use_rslora": True, "init": "gaussian",
                                    "rank_pattern": {"value": 4}, "train_layernorms": True},
                        "optim": {"loraplus_lr_ratio": 16}}, "test")
    assert cfg.optim.loraplus_lr_ratio == 16 and cfg.adapter.train_layernorms


def test_runs_compare_without_the_fields_a_method_does_not_read():
    """VeRA has no alpha, (IA)^3 no rank: runs that differ only there are seeds of one recipe; LoRA's are not."""
    from lorabudget.config import effective_settings

    def same(method: str, one: dict, two: dict) -> bool:
        a, b = (effective_settings(build_config({"adapter": {"method": method, **x}}, "t")) for x in (one, two))
        return a == b

    assert same("vera", {"alpha": 4}, {"alpha": 64})
    assert same("ia3", {"r": 2, "dropout": 0.0}, {"r": 9, "dropout": 0.3})
    assert same("ln_tuning", {"target_modules": ["query"]}, {"target_modules": ["value", "key"]})
    assert not same("lora", {"alpha": 4}, {"alpha": 64})
    assert not same("vera", {"r": 4}, {"r": 64})


# ---- the optimizer: LoRA+ and the scales never decayed ---------------------------------------------------------

def _optimizer(model_dir: Path, adapter: dict, optim: dict):
    from lorabudget.model.adapters import add_adapters
    from lorabudget.model.backbone import load_pretrained
    from lorabudget.train.optim import Schedule, make_optimizer

    cfg = config(model_dir, adapter, optim={"lr": 1e-3, "weight_decay": 0.1, **optim})
    model, _, _ = add_adapters(load_pretrained(str(model_dir), ["a", "b", "c", "d"]), cfg.adapter, cfg.head)
    optimizer, _ = make_optimizer(model, cfg.optim, Schedule(10, 10, 10, 1))
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in optimizer.param_groups]


def test_loraplus_gives_b_its_own_learning_rate(tiny_roberta):
    groups = _optimizer(tiny_roberta, {"target_modules": ["query", "value"], "use_dora": True},
                        {"loraplus_lr_ratio": 16})
    # AdamW's groups scale with the schedule by their own initial lr; warmup starts at 1/1 here
    assert [(lr, wd) for lr, wd, _ in groups] == [(1e-3, 0.1), (1e-3, 0.0), (pytest.approx(16e-3), 0.1)]
    decay, no_decay, fast = (names for _, _, names in groups)
    assert fast and all(".lora_B." in n for n in fast) and len(fast) == 4  # q, v in 2 layers
    assert any(".lora_A." in n for n in decay) and not any(".lora_B." in n for n in decay + no_decay)
    assert any("lora_magnitude_vector" in n for n in no_decay)  # DoRA's magnitudes keep lr, undecayed
    plain = _optimizer(tiny_roberta, {"target_modules": ["query", "value"]}, {})
    assert len(plain) == 2 and any(".lora_B." in n for n in plain[0][2])


def test_ia3_vectors_are_never_decayed(tiny_roberta):
    """(IA)^3 holds its scales as 1 x n and n x 1 matrices; decay would pull them from 1 towards 0."""
    decay, no_decay = (names for _, _, names in _optimizer(tiny_roberta, {"method": "ia3"}, {}))
    assert not any(".ia3_l." in n for n in decay) and sum(".ia3_l." in n for n in no_decay) == 12


# ---- `lorabudget plan --methods ...` -------------------------------------------------------------------------

def stated_count(path: Path) -> int:
    m = re.search(r"^# trainable: ([\d,]+)", path.read_text(), flags=re.MULTILINE)
    assert m, path.read_text()
    return int(m.group(1).replace(",", ""))


def test_plan_searches_the_new_methods(tiny_roberta, capsys):
    assert main(["plan", "--model", str(tiny_roberta), "--budget", "3000", "--methods", "vera,ia3,ln_tuning",
                 "--bias", "none,all", "--top", "40", "--sample", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+[\d,]+\s+[\d.]+%", line)]
    assert len(rows) == 40 and all(int(r[1].replace(",", "")) <= 3000 for r in rows)
    methods = [next(w for w in r if w in METHODS) for r in rows]
    assert {"vera", "ia3"} <= set(methods) <= {"vera", "ia3", "ln_tuning"}
    assert "verified  44 allocations" in out
    # (IA)^3 and LN tuning have no bias option: only VeRA rows train biases (the sixth column)
    assert all(r[5] == "0" for r, m in zip(rows, methods) if m != "vera")
    assert any(r[5] != "0" for r, m in zip(rows, methods) if m == "vera")


def test_adalora_is_planned_when_asked_and_its_pruning_is_shown(capsys):
    """Searched only with --methods (its E vectors would outrank LoRA at the same rank); a config's breakdown
    says what the pruned adapter holds beside what trains."""
    assert "adalora" not in planner.SearchSpace().methods and "lora" in planner.SearchSpace().methods
    assert planner.SearchSpace.parse(methods="adalora").methods == ("adalora",)
    preset = Path(__file__).resolve().parent.parent / "configs" / "recipes" / "round2-adalora.yaml"
    assert main(["plan", "-c", str(preset)]) == 0
    out = capsys.readouterr().out
    # 36 modules: 144 ranks at r=4, 108 at target_r=3; each rank dropped sheds fan_in + fan_out + 1
    shed = 6 * (4 * (384 + 384 + 1) + 2 * (384 + 1536 + 1))
    assert re.search(rf"after pruning\s+{167_572 - shed:,}\s+AdaLoRA keeps 108 of 144 ranks", out), out


@pytest.mark.parametrize("method", ["vera", "ia3", "ln_tuning", "adalora"])
def test_written_candidate_of_each_method_trains_with_its_planned_count(method, tiny_bert, easy_csv, tmp_path):
    path = tmp_path / "planned.yaml"
    assert main(["plan", "--model", str(tiny_bert), "--budget", "2000", "--methods", method, "--top", "3",
                 "--sample", "1", "--write", str(path), "--set", "optim.loraplus_lr_ratio=4"]) == 0
    planned = stated_count(path)
    out = tmp_path / "run"
    assert main(["train", "-c", str(path), "--data", str(easy_csv), "--output-dir", str(out), "--max-steps", "4",
                 "--set", "model.max_length=32", "--set", "model.precision=fp32", "--set", "model.device=cpu",
                 "--set", "optim.batch_size=16", "--set", "logging.progress=false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_params"] == planned <= 2000
    written = load_config(out / "config.yaml")
    # the base's LoRA+ is a LoRA setting: a candidate of another method is written without it
    assert written.adapter.method == method and written.optim.loraplus_lr_ratio is None


def test_plan_counts_layernorms_beside_lora_but_does_not_search_them(tiny_roberta, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {{name: {tiny_roberta}}}\nadapter: {{r: 2, target_modules: [query], "
                    "train_layernorms: true, layers: [1]}\nbudget: 5000\n")
    assert main(["plan", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"layernorm output\.LayerNorm\s+64\b", out) and "per encoder layer: 1:" in out
    assert "0:" not in out.split("per encoder layer:")[1].splitlines()[0]  # layer 0 trains nothing
    assert main(["plan", "-c", str(path), "--model", str(tiny_roberta)]) == 2
    assert "train_layernorms" in capsys.readouterr().err


# ---- each trains, resumes exactly after a stop, and reloads merged to the run's predictions ------------------

RUNS = {  # family, adapter, optim, the budget groups it must show
    "vera-shapes-dropout": ("roberta", {"method": "vera", "r": 16, "dropout": 0.1,
                                        "target_modules": ["query", "value", "ffn_in"]}, {}, ["vera "]),
    "vera-layernorms-top1": ("bert", {"method": "vera", "r": 8, "train_layernorms": True, "layers": "top-1",
                                      "bias": "lora_only"}, {}, ["vera ", "layernorm ", "biases"]),
    "ia3-paper-placement": ("roberta", {"method": "ia3", "target_modules": ["key", "value", "ffn_out"]}, {},
                            ["ia3 output.dense"]),
    "ln_tuning-top1": ("bert", {"method": "ln_tuning", "layers": "top-1"}, {}, ["layernorm "]),
    "lora-layernorms-bias-all": ("roberta", {"train_layernorms": True, "bias": "all", "layers": [1]}, {},
                                 ["lora ", "layernorm ", "biases"]),
    "dora-loraplus": ("bert", {"use_dora": True}, {"loraplus_lr_ratio": 8}, ["lora ", "dora magnitude "]),
    # pruned from step 3 to 18 of 24, re-allocated every 2 steps: the stop at step 11 falls mid-allocation
    "adalora-prunes": ("roberta", {"method": "adalora", "r": 4, "target_r": 2, "tinit": 2, "tfinal": 6, "deltaT": 2,
                                   "dropout": 0.1, "target_modules": ["query", "value", "ffn_in"]}, {}, ["lora "]),
}


def _run_config(name, tiny_roberta, tiny_bert, easy_csv, out):
    family, adapter, optim, _ = RUNS[name]
    return tiny_config(tiny_roberta if family == "roberta" else tiny_bert, easy_csv, out, adapter=adapter,
                       optim={"max_steps": 24, **optim}, eval={"every_steps": 8})


def _trained_adapter_moved(run: Path) -> None:
    """Every adapter tensor of the best checkpoint differs from what a fresh build of the config starts from."""
    from lorabudget.config import load_config
    from lorabudget.data import LabelSpace
    from lorabudget.model.build import build_adapted_model
    from lorabudget.model.weights import trainable_state

    cfg = load_config(run / "config.yaml")
    fresh = trainable_state(build_adapted_model(cfg, LabelSpace.from_json(json.loads((run / "labels.json")
                                                                                     .read_text()))).model)
    trained = load_file(run / "checkpoints" / "best" / "trainable.safetensors")
    assert trained.keys() == fresh.keys()
    adapter = [k for k in trained if "modules_to_save" not in k or ".layer." in k]
    still = [k for k in adapter if torch.equal(trained[k], fresh[k])]
    # an AdaLoRA module pruned to rank 0 holds E = 0, as it started; nothing else may stay where it started
    assert adapter and all(".lora_E." in k and not trained[k].any() for k in still), still


def _merged_export_matches_unmerged(run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lorabudget.config import load_config
    from lorabudget.data import LabelSpace
    from lorabudget.serve.api import load_peft_model

    merged = tmp_path / "merged"
    assert main(["export", str(run), "--merged", str(merged)]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    assert not any("vera" in n or "ia3" in n or "ln_tuning" in n or "modules_to_save" in n
                   for n, _ in model.named_parameters())
    tok = AutoTokenizer.from_pretrained(merged)
    labels = LabelSpace.from_json(json.loads((run / "labels.json").read_text()))
    unmerged = load_peft_model(load_config(run / "config.yaml"), labels, run / "adapter").eval()
    enc = tok([t for t, _ in make_texts(24, seed=8)], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, unmerged(**enc).logits, atol=1e-5, rtol=1e-4)


def _stop_after(monkeypatch, step: int):
    """SIGTERM to this process right after optimizer step `step`: the run's handler only sets a flag, and the
    loop stops there with a checkpoint, as for a SIGTERM from outside. Returns the unpatched step."""
    original = torch.optim.AdamW.step
    calls = {"n": 0}

    def counted(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == step:
            signal.raise_signal(signal.SIGTERM)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    return original


@pytest.mark.parametrize("name", RUNS)
def test_method_trains_resumes_exactly_and_reloads_merged(name, tiny_roberta, tiny_bert, easy_csv, tmp_path,
                                                          monkeypatch):
    from lorabudget.serve.evaluate import evaluate

    straight = tmp_path / "straight"
    cfg = _run_config(name, tiny_roberta, tiny_bert, easy_csv, straight)
    assert main(["train", "-c", str(write_config(tmp_path / "a.yaml", cfg))]) == 0
    summary = json.loads((straight / "summary.json").read_text())
    groups = summary["breakdown"]["groups"]
    assert summary["trainable_params"] == sum(groups.values())
    assert all(any(g.startswith(prefix) for g in groups) for prefix in RUNS[name][3]), groups
    shape = planner.model_shape(cfg["model"]["name"], 4)
    assert arithmetic(build_config(cfg, "run"), shape).groups == groups
    _trained_adapter_moved(straight)
    # a fresh load, adapters merged, scores the run's validation rows as training did, unmerged
    scores, _ = evaluate(str(straight), progress=False)
    assert scores["accuracy"] == pytest.approx(summary["best"]["accuracy"], abs=1e-9)
    _merged_export_matches_unmerged(straight, tmp_path)

    stopped = tmp_path / "stopped"
    step = _stop_after(monkeypatch, 11)
    assert main(["train", "-c", str(write_config(tmp_path / "b.yaml", _run_config(
        name, tiny_roberta, tiny_bert, easy_csv, stopped)))]) == 143
    assert json.loads((stopped / "status.json").read_text())["state"] == "interrupted"
    monkeypatch.setattr(torch.optim.AdamW, "step", step)  # not undo(): conftest's isolation uses it too
    assert main(["train", "--resume", str(stopped)]) == 0
    again = json.loads((stopped / "summary.json").read_text())
    assert (again["best"], again["final"], again["steps"]) == (summary["best"], summary["final"], summary["steps"])
    a, b = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (straight, stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if "loraplus_lr_ratio" in cfg["optim"]:  # recorded in the run like every field
        assert "loraplus_lr_ratio: 8" in (stopped / "config.yaml").read_text()
    if cfg["adapter"].get("method") == "adalora":
        _adalora_allocated_and_shipped(straight, summary, a)


def _adalora_allocated_and_shipped(run: Path, summary: dict, shipped: dict) -> None:
    """The allocator ended at target_r x modules; the adapter holds the ranks its summary says, per module, with
    peft's rank pattern in its config; the allocator's state went into checkpoints as safetensors."""
    facts, modules = summary["adalora"], 3 * 2  # query, value, ffn_in in 2 layers
    assert facts["ranks_at_start"] == 4 * modules and facts["ranks_allocated"] == 2 * modules
    assert (facts["tinit"], facts["tfinal"], facts["total_step"]) == (2, 6, 24)
    assert sum(facts["ranks"].values()) == facts["ranks_shipped"] <= facts["ranks_at_start"]
    for module, rank in facts["ranks"].items():
        e = shipped[f"base_model.model.{module}.lora_E"]
        assert e.shape == (rank, 1) and shipped[f"base_model.model.{module}.lora_A"].shape[0] == rank
        assert bool((e != 0).all())  # only the masked triplets (E = 0) were dropped
    assert facts["params_shipped"] == summary["trainable_params"] - sum(
        (4 - rank) * (32 + out + 1) for module, rank in facts["ranks"].items()
        for out in [64 if module.endswith("intermediate.dense") else 32])
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["total_step"] == 24
    assert {k: sum(v) for k, v in config["rank_pattern"].items()} == {f"{m}.lora_E": r
                                                                        for m, r in facts["ranks"].items()}
    state = load_file(run / "checkpoints" / "last" / "adalora.safetensors")
    assert sum(k.startswith("rank_pattern/") for k in state) == modules
    assert summary["breakdown"]["pruning"]["ranks_at_end"] == 2 * modules


def test_adalora_regulariser_is_peft_s_own_term(tiny_roberta):
    """peft adds orth_reg_weight x its orthogonality term only to a loss the model computes; lorabudget's loss
    comes from the logits, so the recipe adds the method's regulariser, which must be peft's term exactly."""
    from lorabudget.model.adapters import add_adapters
    from lorabudget.model.backbone import load_pretrained

    cfg = config(tiny_roberta, {"method": "adalora", "r": 4, "target_r": 2, "orth_reg_weight": 0.3})
    model, _, _ = add_adapters(load_pretrained(str(tiny_roberta), ["a", "b", "c", "d"]), cfg.adapter, cfg.head)
    hooks = METHODS["adalora"].train_hooks(model, cfg.adapter, 50)
    ids = torch.randint(5, model.config.vocab_size, (3, 7))
    labels = torch.tensor([0, 1, 3])
    model.eval()
    out = model(input_ids=ids, labels=labels)
    plain = torch.nn.functional.cross_entropy(out.logits, labels)
    reg = hooks.regulariser()
    assert reg.item() > 0 and reg.requires_grad
    torch.testing.assert_close(out.loss - plain, reg, rtol=1e-5, atol=1e-6)
    # peft's schedule is the run's: set from its steps and the fractions
    assert (model.peft_config["default"].total_step, model.peft_config["default"].tinit) == (50, 5)


def test_adalora_state_refuses_a_missing_or_foreign_file(tiny_roberta, tmp_path):
    from lorabudget.errors import DamagedFileError
    from lorabudget.model.adapters import add_adapters
    from lorabudget.model.backbone import load_pretrained

    cfg = config(tiny_roberta, {"method": "adalora", "r": 4, "target_r": 2})
    model, _, _ = add_adapters(load_pretrained(str(tiny_roberta), ["a", "b", "c", "d"]), cfg.adapter, cfg.head)
    hooks = METHODS["adalora"].train_hooks(model, cfg.adapter, 50)
    with pytest.raises(DamagedFileError, match="holds no allocator state"):
        hooks.load_state(None, tmp_path / "adalora.safetensors", "start again")
    with pytest.raises(DamagedFileError, match="does not hold this model's AdaLoRA state"):
        hooks.load_state({"#format": torch.tensor(1), "ipt/elsewhere.lora_A.default": torch.zeros(2)},
                         tmp_path / "adalora.safetensors", "start again")


def test_adalora_schedule_that_leaves_no_allocation_is_refused_at_train(tiny_roberta, easy_csv, tmp_path, capsys):
    cfg = tiny_config(tiny_roberta, easy_csv, tmp_path / "run", adapter={"method": "adalora", "target_r": 2, "tinit": 3,
                                                                         "tfinal": 2}, optim={"max_steps": 5})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert "adapter.tinit=3" in err and "5-step run" in err and "Traceback" not in err


@pytest.mark.parametrize("name", RUNS)
def test_method_trains_in_bf16_with_adapter_inputs_left_in_bf16(name, tiny_roberta, tiny_bert, easy_csv, tmp_path):
    """Under bf16 autocast peft's input casts are switched off where its layers have them (the LoRA family:
    runtime/precision.keep_adapter_inputs_in): every method still trains, its loss finite, its adapters moved."""
    out = tmp_path / "run"
    cfg = _run_config(name, tiny_roberta, tiny_bert, easy_csv, out)
    cfg["model"]["precision"] = "bf16"
    assert main(["train", "-c", str(write_config(tmp_path / "a.yaml", cfg))]) == 0
    summary = json.loads((out / "summary.json").read_text())
    adapter = RUNS[name][1]
    lora_family = adapter.get("method", "lora") in ("lora", "adalora") and not adapter.get("use_dora")
    assert summary["precision"] == "bf16" and (summary["adapter_input_casts_skipped"] > 0) is lora_family
    losses = [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"train_loss"' in line]
    assert losses and all(map(math.isfinite, losses))
    _trained_adapter_moved(out)
