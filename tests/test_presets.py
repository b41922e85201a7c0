"""Every preset states its exact trainable count in a comment; the model built from it must agree.

roberta-base and the packaged MiniLM are built on the meta device from their shipped configurations: no weights,
no Hub.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lorabudget.config import load_config
from lorabudget.model.build import planned_breakdown

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# the presets, and the recipe study's configs (configs/recipes/, see docs/recipes.md)
PRESETS = sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("space"))

PUBLISHED = {  # the configurations people already use for roberta-base on AG News, and what trains today
    "roberta-base-qv-r8.yaml": 888_580,
    "roberta-base-qv-r8-bias-all.yaml": 990_724,
    "roberta-base-value-r22.yaml": 999_172,
    "roberta-base-qv-r4-dora.yaml": 759_556,
    "roberta-base-layers-0-1-5-10-11-r12.yaml": 777_988,
}


def stated_count(path: Path) -> int:
    m = re.search(r"^# trainable: ([\d,]+)", path.read_text(), flags=re.M)
    assert m, f"{path.name} has no '# trainable: N' comment"
    return int(m.group(1).replace(",", ""))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_preset_comment_states_the_exact_count(preset):
    cfg = load_config(preset)
    b = planned_breakdown(cfg, 4)
    assert b.total == stated_count(preset)
    assert b.total <= cfg.budget
    assert not b.excluded or all(".original_module." in n for n, _, _ in b.excluded)


@pytest.mark.parametrize("name,count", PUBLISHED.items())
def test_published_configurations(name, count):
    assert planned_breakdown(load_config(CONFIGS / name), 4).total == count


def test_bias_all_counts_each_head_bias_once():
    b = planned_breakdown(load_config(CONFIGS / "roberta-base-qv-r8-bias-all.yaml"), 4)
    assert b.groups["biases"] == 102_144
    assert b.groups["head (classifier)"] == 593_668  # the head's 772 biases are inside it, counted once


def test_dora_magnitudes_are_their_own_group():
    b = planned_breakdown(load_config(CONFIGS / "roberta-base-qv-r4-dora.yaml"), 4)
    assert b.groups["dora magnitude attention.self.query"] == 12 * 768
    assert b.groups["dora magnitude attention.self.value"] == 12 * 768


def test_minilm_preset_fits_its_budget_share():
    cfg = load_config(CONFIGS / "minilm-cpu.yaml")
    assert cfg.budget == 180_000
    assert "minilm" in cfg.model.name


def test_defaults_are_the_recommended_roberta_base_recipe():
    """`lorabudget train` without -c trains configs/recommended-roberta-base.yaml; default.yaml writes it out."""
    from lorabudget.config import Config

    defaults = Config().model_dump()
    for name in ("default.yaml", "recommended-roberta-base.yaml"):
        assert load_config(CONFIGS / name).model_dump() == defaults, name
    assert planned_breakdown(Config(), 4).total == 998_404


def test_the_roberta_default_is_the_minilm_recipe_by_the_stated_rule():
    """docs/recipes.md: the same module types on the same share of the depth (every layer), alpha / r, lr,
    schedule, warmup share and epochs; the cheapest head; the largest rank under the budget."""
    from lorabudget.config import Config, build_config, layer_indices

    minilm, roberta = load_config(CONFIGS / "recommended-minilm.yaml"), Config()
    assert roberta.adapter.layers is minilm.adapter.layers is None  # every layer, as the study ran it
    assert layer_indices(roberta.adapter.layers, 12) == list(range(12))
    assert roberta.adapter.target_modules == minilm.adapter.target_modules
    assert roberta.adapter.alpha / roberta.adapter.r == minilm.adapter.alpha / minilm.adapter.r
    same = ("lr", "scheduler", "warmup_ratio", "epochs", "batch_size", "weight_decay")
    assert {k: getattr(roberta.optim, k) for k in same} == {k: getattr(minilm.optim, k) for k in same}
    raw = roberta.model_dump(mode="json")
    raw["adapter"]["r"] += 1  # the largest rank that fits: one more does not
    assert planned_breakdown(build_config(raw), 4).total > roberta.budget


def test_recommended_minilm_is_the_recipe_the_study_measured():
    """docs/recipes.md: the recommended recipe is the round-2 study's `round2-lr1e-3` (every layer at r=4, lr 1e-3,
    4 epochs), which beat the first study's winner (`explore-all-r4-4ep`, lr 2e-3) on five paired seeds. The study
    ran on 2,000 validation rows with one evaluation per epoch; the preset keeps the first study's 1,000 rows and
    names its evaluation interval. Everything that trains is the same."""
    def what_trains(name: str) -> dict:
        raw = load_config(CONFIGS / name).model_dump()
        del raw["data"], raw["eval"]
        return raw

    preset = what_trains("recommended-minilm.yaml")
    assert preset == what_trains("recipes/round2-lr1e-3.yaml")
    first = what_trains("recipes/explore-all-r4-4ep.yaml")
    first["optim"]["lr"] = 1e-3  # the one change the round-2 study made to the first study's winner
    assert preset == first
