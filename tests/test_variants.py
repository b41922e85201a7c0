"""Each head and adapter variant trains, counts what it trains, and reloads (merged) to the same predictions.

The check: `lorabudget evaluate` on the run's validation rows, through a fresh load with adapters merged into the
weights, reproduces the validation accuracy the run measured during training with unmerged adapters. PiSSA and
OLoRA rewrite the base weights at init; peft redoes that at load, and this is where a mismatch would show.
"""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config, write_config

from lorabudget.cli import main
from lorabudget.serve.evaluate import evaluate

VARIANTS = {
    "roberta-default-pissa": ("roberta", {"type": "default"}, {"init": "pissa"}),
    "roberta-linear-olora": ("roberta", {"type": "linear"}, {"init": "olora"}),
    "roberta-dora-rslora-gaussian": ("roberta", {"type": "default"}, {"use_dora": True, "use_rslora": True,
                                                                       "init": "gaussian"}),
    "roberta-bias-all-layer1": ("roberta", {"type": "default"}, {"bias": "all", "layers": [1]}),
    "roberta-lora-only-bias-ffn": ("roberta", {"type": "default"}, {"bias": "lora_only",
                                                                     "target_modules": ["intermediate.dense",
                                                                                        "output.dense"]}),
    "roberta-lowrank-mean": ("roberta", {"type": "lowrank", "rank": 4, "pooling": "mean"}, {}),
    "bert-default": ("bert", {"type": "default"}, {}),
    "bert-linear-mean": ("bert", {"type": "linear", "pooling": "mean"}, {}),
    "bert-pooler": ("bert", {"type": "pooler"}, {"rank_pattern": {"value": 8}}),
    "bert-linear": ("bert", {"type": "linear"}, {"target_modules": ["query", "key", "value",
                                                                     "attention.output.dense"]}),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains_counts_and_reloads(name, tiny_roberta, tiny_bert, easy_csv, tmp_path):
    family, head, adapter = VARIANTS[name]
    model = tiny_roberta if family == "roberta" else tiny_bert
    out = tmp_path / "run"
    cfg = tiny_config(model, easy_csv, out, head=head, adapter=adapter, optim={"max_steps": 24},
                      eval={"every_steps": 12})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    summary = json.loads((out / "summary.json").read_text())
    groups = summary["breakdown"]["groups"]
    assert summary["trainable_params"] == sum(groups.values())
    if adapter.get("use_dora"):
        assert any(g.startswith("dora magnitude") for g in groups)
    if head["type"] == "pooler":
        assert groups["head (pooler)"] == 32 * 32 + 32
    if head["type"] == "linear":
        assert groups["head (classifier)"] == 32 * 4 + 4
    if adapter.get("layers") == [1]:
        assert set(summary["breakdown"]["layers"]) == {"0", "1"}  # biases train in both; LoRA only in layer 1
    scores, _ = evaluate(str(out), progress=False)
    assert scores["accuracy"] == pytest.approx(summary["best"]["accuracy"], abs=1e-9)


def test_tensorboard_logging(tiny_roberta, easy_csv, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_roberta, easy_csv, out, optim={"max_steps": 6}, logging={"tensorboard": True,
                                                                                   "every_steps": 2,
                                                                                   "progress": False})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
