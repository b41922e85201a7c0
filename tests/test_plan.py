"""`lorabudget plan`: the planner's closed-form arithmetic against the built model, the search, the written
configs (they train, and train exactly the planned count), the low-rank head, the picture.

roberta-base is built on the meta device from its shipped configuration (no weights, no Hub); the property tests
and the training runs use the tiny models of conftest.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from conftest import check_plan_equals_build, make_texts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorabudget.cli import main
from lorabudget.config import build_config, layer_indices
from lorabudget.errors import BudgetError
from lorabudget.model.adapters import add_adapters
from lorabudget.model.build import planned_breakdown
from lorabudget.model.families import FAMILIES, ROLES
from lorabudget.tools import planner

PUBLISHED = {  # roberta-base, 4 labels, default head
    "qv-r8": ({"r": 8, "target_modules": ["query", "value"]}, 888_580),
    "qv-r8-bias-all": ({"r": 8, "target_modules": ["query", "value"], "bias": "all"}, 990_724),
    "value-r22": ({"r": 22, "target_modules": ["value"]}, 999_172),
    "qv-r4-dora": ({"r": 4, "target_modules": ["query", "value"], "use_dora": True}, 759_556),
    "layers-0-1-5-10-11-r12": ({"r": 12, "target_modules": ["query", "value"], "layers": [0, 1, 5, 10, 11]},
                               777_988),
}
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def config(model: str, adapter: dict, head: dict | None = None, **top):
    """Every layer unless `adapter` says otherwise (the tool's default is the top half)."""
    return build_config({"model": {"name": model}, "adapter": {"layers": "all", **adapter},
                         "head": head or {"type": "default"}, **top})


def arithmetic(cfg, shape: planner.ModelShape) -> planner.Counts:
    return planner.count_allocation(shape, planner.allocation_from_config(cfg, shape))


def really_trains(model) -> int:
    """Parameters that require grad, each once; peft's frozen copies of saved modules never train."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".original_module." not in n)


@pytest.fixture(scope="module")
def roberta_base() -> planner.ModelShape:
    return planner.model_shape("roberta-base", 4)


# ---- exact figures for roberta-base --------------------------------------------------------------------------

@pytest.mark.parametrize("name", PUBLISHED)
def test_published_figures_by_arithmetic_and_built_model(name, roberta_base):
    adapter, expected = PUBLISHED[name]
    cfg = config("roberta-base", adapter)
    counts = arithmetic(cfg, roberta_base)
    built = planned_breakdown(cfg, 4)
    assert counts.total == built.total == expected
    assert counts.groups == dict(built.groups) and counts.layers == built.layers


@pytest.mark.parametrize(("spec", "n_layers", "expected"), [
    ("top-half", 12, list(range(6, 12))), ("top-half", 6, [3, 4, 5]), ("top-half", 5, [2, 3, 4]),
    ("top-half", 1, [0]), ("top-3", 12, [9, 10, 11]), ("top-12", 12, list(range(12))), (None, 3, [0, 1, 2]),
    ([0, 5], 12, [0, 5]), ("all", 2, [0, 1]),
])
def test_relative_layers_resolve_by_depth(spec, n_layers, expected):
    assert layer_indices(spec, n_layers) == expected


def test_runs_compare_by_the_layers_they_adapt_once_the_depth_is_known():
    """Runs are grouped by effective settings: `top-half` and [3, 4, 5] on 6 layers train the same adapters."""
    from lorabudget.config import Config, effective_settings

    def layers(spec, n_layers=None):
        return effective_settings(Config(adapter={"layers": spec}), n_layers)["adapter"]["layers"]

    assert layers("top-half", 6) == layers([5, 4, 3], 6) == layers("top-3", 6) == [3, 4, 5]
    assert layers("all", 6) == layers(list(range(6)), 6) == layers(None, 6) is None
    assert layers("top-half", 12) == list(range(6, 12)) != layers("top-half", 6)
    assert layers("top-7", 6) == "top-7"  # more than the model has: such a run never trained
    # without the depth (a run from before summaries recorded it), only 'all' and None are known to agree
    assert layers("top-half") == "top-half" and layers([3, 4, 5]) == [3, 4, 5] and layers("all") is None


def test_runs_compare_by_the_precision_they_trained_in():
    """`auto` is bf16 where the hardware has it and fp32 elsewhere: with the precision a run resolved, two `auto`
    runs on different machines are apart, and `auto` that became bf16 is the same as an explicit `bf16`."""
    from lorabudget.config import Config, effective_settings

    def precision(spec, resolved=None):
        return effective_settings(Config(model={"precision": spec}), precision=resolved)["model"]["precision"]

    assert precision("auto", "bf16") == precision("bf16", "bf16") == "bf16" != precision("auto", "fp32")
    assert precision("auto") == "auto"  # a run from before summaries recorded it compares as written


def test_top_half_counts_the_same_as_its_indices(roberta_base):
    """The relative form is a spelling, not another recipe: same targets, same count, arithmetic = built."""
    by_name = config("roberta-base", {"r": 12, "layers": "top-half"}, {"type": "linear"})
    by_index = config("roberta-base", {"r": 12, "layers": list(range(6, 12))}, {"type": "linear"})
    assert arithmetic(by_name, roberta_base).total == planned_breakdown(by_name, 4).total \
        == planned_breakdown(by_index, 4).total == 998_404


@pytest.mark.parametrize("init", ["default", "gaussian", "pissa", "olora"])
def test_count_does_not_depend_on_init(init, roberta_base):
    cfg = config("roberta-base", {"r": 8, "target_modules": ["query", "value"], "init": init})
    assert arithmetic(cfg, roberta_base).total == planned_breakdown(cfg, 4).total == 888_580


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_real_weight_inits_count_the_same_on_a_real_model(init, tiny_roberta):
    """pissa and olora decompose real weights; planning uses the default init in their place. On real weights
    the count is the arithmetic's."""
    from lorabudget.model.backbone import load_pretrained

    cfg = config(str(tiny_roberta), {"r": 4, "target_modules": ["query", "value", "dense"], "init": init})
    model, _, _ = add_adapters(load_pretrained(str(tiny_roberta), ["a", "b", "c", "d"]), cfg.adapter, cfg.head)
    assert really_trains(model) == arithmetic(cfg, planner.model_shape(str(tiny_roberta), 4)).total


def test_search_finds_the_published_allocations(roberta_base):
    """The search's own bookkeeping (per-layer tables, bisection) reaches the same figures."""
    for adapter, expected in PUBLISHED.values():
        space = planner.SearchSpace(
            methods=("dora",) if adapter.get("use_dora") else ("lora",), modules=tuple(adapter["target_modules"]),
            ranks=(adapter["r"],), heads=("default",), biases=(adapter.get("bias", "none"),),
            custom_layers=(tuple(adapter["layers"]),) if "layers" in adapter else ())
        designs = planner.enumerate_designs(roberta_base, 1_000_000, space, head_rank=32)
        wanted = tuple(adapter.get("layers", range(12)))
        design = next(d for d in designs if d.layers == wanted and d.table.subset == tuple(adapter["target_modules"]))
        assert design.total(design.fits - 1) == expected


def test_on_a_tie_the_method_the_studies_measured_best_ranks_first(roberta_base):
    """DoRA's best row can spend exactly what a LoRA row of the same coverage spends (other ranks, the same count);
    without the studies' term the order the search met them in decides such ties, and with the methods listed
    DoRA first, DoRA wins them. With it LoRA leads every tie, and only ties move: a DoRA design of wider coverage
    still outranks a narrower LoRA one."""
    space = planner.SearchSpace(methods=("dora", "lora"), modules=("query", "key", "value", "attention_output"),
                                ranks=(2, 3, 4, 6, 8), heads=("default",), biases=("none",))
    designs = planner.enumerate_designs(roberta_base, 1_000_000, space, head_rank=32)

    def tie(d):
        best = d.fits - 1
        return len(d.layers), d.table.subset, d.adapter_params(best), d.total(best), len(set(d.table.ranks[best]))

    first: dict[tuple, str] = {}
    ties = 0
    for d in designs:
        if tie(d) in first and first[tie(d)] != d.table.variant:
            ties += 1
            assert first[tie(d)] == "lora", tie(d)
        first.setdefault(tie(d), d.table.variant)
    assert ties > 0  # the case this term decides exists in this space
    wider = next(d for d in designs if d.table.variant == "dora" and len(d.layers) == 12)
    narrower = next(d for d in designs if d.table.variant == "lora" and len(d.layers) < 12)
    assert designs.index(wider) < designs.index(narrower)


# ---- property: arithmetic == built model, on random configs --------------------------------------------------

TARGET_NAMES = ["query", "key", "value", "dense", "self.query", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense", "attention_output", "ffn_in", "ffn_out"]
BERT_ROLES = FAMILIES["bert"].roles  # roberta's are the same


@st.composite
def adapter_and_head(draw, family: str):
    targets = draw(st.lists(st.sampled_from(TARGET_NAMES), min_size=1, max_size=4, unique=True))
    layers = draw(st.none() | st.sampled_from(["top-half", "top-1", "top-2"])
                  | st.lists(st.integers(0, 1), min_size=1, max_size=2, unique=True))
    # rank_pattern keys: a target name, or the full name of an adapted module (the first matching key wins).
    # A target names the module of exactly its name where there is one, else those it is a dotted suffix of.
    def named(t):
        if t in ROLES:
            return [BERT_ROLES[t]]
        linears = tuple(BERT_ROLES.values())
        return [t] if t in linears else [lin for lin in linears if lin.endswith("." + t)]
    hits = sorted({lin for t in targets for lin in named(t)})
    full = [f"{family}.encoder.layer.{i}.{lin}" for i in layer_indices(layers, 2) for lin in hits]
    pattern = draw(st.dictionaries(st.sampled_from(targets + full), st.integers(1, 9), max_size=3))
    adapter = {"r": draw(st.integers(1, 9)), "target_modules": targets, "layers": layers, "rank_pattern": pattern,
               "bias": draw(st.sampled_from(["none", "all", "lora_only"])), "use_dora": draw(st.booleans()),
               "init": draw(st.sampled_from(["default", "gaussian"]))}
    heads = ["default", "linear", "lowrank"] + (["pooler"] if family == "bert" else [])
    head = {"type": draw(st.sampled_from(heads)), "rank": draw(st.integers(1, 40))}
    return adapter, head


def _check_random_config(model_dir: Path, adapter: dict, head: dict) -> None:
    cfg = config(str(model_dir), adapter, head)
    check_plan_equals_build(cfg, planner.model_shape(str(model_dir), 3))


@SETTINGS
@given(drawn=adapter_and_head("roberta"))
def test_arithmetic_equals_built_model_roberta(tiny_roberta, drawn):
    _check_random_config(tiny_roberta, *drawn)


@SETTINGS
@given(drawn=adapter_and_head("bert"))
def test_arithmetic_equals_built_model_bert(tiny_bert, drawn):
    _check_random_config(tiny_bert, *drawn)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=st.integers(400, 12_000), ranks=st.sampled_from(["1,2,4", "2,8", "3,5"]), seed=st.integers(0, 99))
def test_every_searched_row_fits_and_is_verified(tiny_bert, budget, ranks, seed):
    """search() builds every row and a random sample on the meta device and raises on any disagreement."""
    base = config(str(tiny_bert), {}, budget=budget)
    try:
        plan = planner.search(base, str(tiny_bert), planner.SearchSpace.parse(ranks=ranks), top=3, sample=2,
                              seed=seed)
    except BudgetError:
        return  # nothing fits a very small budget: that is an answer, not a failure
    assert plan.rows and all(counts.total <= budget for _, counts, _ in plan.rows)


def test_rank_pattern_for_a_separate_ffn_output_rank(roberta_base):
    """'output.dense' names the FFN output alone: its rank must not reach attention.output.dense (peft alone
    would apply the key to both, as a suffix), and the FFN output can be adapted without the attention output."""
    base = config("roberta-base", {})
    for ranks in [(("attention_output", 4), ("ffn_out", 8)),
                  (("query", 4), ("value", 4), ("attention_output", 4), ("ffn_out", 16)),
                  (("ffn_out", 8),)]:
        modules = tuple(roberta_base.roles[t] for t, _ in ranks)
        cand = planner.Candidate("linear", 32, "none", False, tuple(range(12)), "all 12", ranks, "lora", modules)
        cfg = planner.candidate_config(base, roberta_base, 1_000_000, cand)
        breakdown = planner.verify(cfg, planner.count_allocation(roberta_base, cand.allocation()), 4)
        for target, r in ranks:
            width = 768 + (3072 if target == "ffn_out" else 768)
            assert breakdown.groups[f"lora {roberta_base.roles[target]}"] == 12 * width * r


def test_a_wrong_count_fails_loudly(roberta_base):
    cfg = config("roberta-base", {"r": 8})
    counts = arithmetic(cfg, roberta_base)
    counts.total += 1
    with pytest.raises(planner.PlanMismatch):
        planner.verify(cfg, counts, 4)


# ---- the CLI -----------------------------------------------------------------------------------------------

def test_plan_config_prints_breakdown(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("adapter: {r: 4, target_modules: [query, value], use_dora: true, layers: all}\n"
                    "head: {type: default}\n")
    assert main(["plan", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "759,556" in out and "fits" in out and "dora magnitude attention.self.value" in out
    assert "per encoder layer" in out


def test_plan_over_budget_exits_2(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("adapter: {r: 64, target_modules: [query, value]}\nbudget: 1000000\n")
    assert main(["plan", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "over the budget of 1,000,000" in err and "EXCEEDS" in err


def test_search_with_nothing_that_fits_exits_2(tiny_roberta, capsys):
    assert main(["plan", "--model", str(tiny_roberta), "--budget", "50"]) == 2
    assert "no allocation fits a budget of 50" in capsys.readouterr().err


def test_bad_search_options_exit_2(tiny_roberta, capsys):
    assert main(["plan", "--model", str(tiny_roberta), "--modules", "query,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["plan", "--model", str(tiny_roberta), "--heads", "pooler"]) == 2
    assert "pooler" in capsys.readouterr().err
    assert main(["plan", "--write", "x.yaml"]) == 2
    assert "--model" in capsys.readouterr().err


def test_roberta_base_under_1m(tmp_path, capsys):
    png = tmp_path / "split.png"
    assert main(["plan", "--model", "roberta-base", "--budget", "1000000", "--top", "4", "--sample", "1",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+\s+[\d,]+\s+[\d.]+%", line)]
    assert len(rows) == 4
    totals = [int(row.split()[1].replace(",", "")) for row in rows]
    assert all(t <= 1_000_000 for t in totals)
    assert "verified  5 allocations" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[2] in (3, 4)  # decodes as an image


# ---- written candidates train, with exactly the planned count ----------------------------------------------

def stated_count(path: Path) -> int:
    m = re.search(r"^# trainable: ([\d,]+)", path.read_text(), flags=re.MULTILINE)
    assert m, path.read_text()
    return int(m.group(1).replace(",", ""))


TRAIN_SETTINGS = ["--set", "model.max_length=32", "--set", "model.precision=fp32", "--set", "model.device=cpu",
                  "--set", "optim.batch_size=16", "--set", "logging.progress=false"]


def check_reload(run: Path) -> None:
    """The head's trained weights are saved with the adapter, and a reload puts exactly them in place."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    import lorabudget
    from lorabudget.config import load_config
    from lorabudget.data import LabelSpace
    from lorabudget.serve.api import load_peft_model

    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    saved_head = {k: v for k, v in saved.items() if ".classifier." in k or ".pooler." in k}
    assert any(".dense.down." in k for k in saved_head) and any(".dense.up." in k for k in saved_head)
    cfg = load_config(run / "config.yaml")
    labels = LabelSpace.from_json(json.loads((run / "labels.json").read_text()))
    # what peft would save from the reloaded model is what was saved: the head came back, not a fresh init
    again = get_peft_model_state_dict(load_peft_model(cfg, labels, run / "adapter"))
    for key, tensor in saved_head.items():
        assert torch.equal(again[key], tensor), key
    probs = lorabudget.load(run).predict_proba([t for t, _ in make_texts(8, seed=3)])
    assert probs.shape == (8, 4)


@pytest.mark.parametrize("model,plan_args", [
    ("tiny_roberta", ["--heads", "lowrank", "--set", "head.rank=4"]),
    ("tiny_roberta", ["--heads", "default", "--methods", "dora", "--bias", "lora_only", "--pick", "2"]),
    ("tiny_bert", ["--heads", "lowrank", "--bias", "all", "--layers", "1", "--pick", "3"]),
], ids=["roberta-lowrank", "roberta-dora-pick2", "bert-lowrank-pick3"])
def test_written_candidate_trains_with_planned_count(model, plan_args, request, easy_csv, tmp_path):
    model_dir = request.getfixturevalue(model)
    path = tmp_path / "planned.yaml"
    assert main(["plan", "--model", str(model_dir), "--budget", "6000", "--top", "3", "--sample", "1",
                 "--write", str(path), *plan_args]) == 0
    umask = os.umask(0)
    os.umask(umask)
    # written whole through a temporary file, with the mode the user's umask gives
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask and [p.name for p in tmp_path.iterdir()] == [path.name]
    planned = stated_count(path)
    out = tmp_path / "run"
    assert main(["train", "-c", str(path), "--data", str(easy_csv), "--output-dir", str(out), "--max-steps", "4",
                 *TRAIN_SETTINGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_params"] == planned <= 6000
    if "lowrank" in plan_args:
        check_reload(out)


@pytest.mark.parametrize("model", ["roberta-base", "bert-base-uncased"])
def test_lowrank_head_counts_as_head(model):
    """hidden -> k -> hidden (the first factor without bias), tanh, output layer: 2 x 768 x 32 + 768 + 3,076."""
    cfg = config(model, {"r": 8}, {"type": "lowrank", "rank": 32})
    built = planned_breakdown(cfg, 4)
    head = {g: n for g, n in built.groups.items() if g.startswith("head")}
    assert sum(head.values()) == 2 * 768 * 32 + 768 + 768 * 4 + 4 == 52_996
    if model == "bert-base-uncased":  # the pooler's place, BERT's own classifier behind it
        assert head == {"head (classifier)": 3_076, "head (pooler)": 49_920}
    assert arithmetic(cfg, planner.model_shape(model, 4)).groups == dict(built.groups)


def test_building_adapters_warns_about_nothing_the_user_can_act_on(tiny_roberta):
    """peft reads a deprecated transformers attribute on every build; that FutureWarning is silenced (only it)."""
    import warnings

    from lorabudget.model.backbone import load_pretrained

    cfg = config(str(tiny_roberta), {"r": 4, "target_modules": ["query", "value"]})
    model = load_pretrained(str(tiny_roberta), ["a", "b", "c", "d"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add_adapters(model, cfg.adapter, cfg.head)
    assert not [w for w in caught if "gradient_checkpointing" in str(w.message)], [str(w.message) for w in caught]
