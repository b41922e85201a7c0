"""docs/extending.md kept honest: its worked examples (a head and an adapter method, one table entry each) run as
written, and everything that reads the tables (config, planner, budget, the build) then knows them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHECK = textwrap.dedent("""
    import json, sys
    from lorabudget.config import build_config
    from lorabudget.model.adapters import add_adapters
    from lorabudget.model.backbone import load_pretrained
    from lorabudget.model.budget import count_trainable
    from lorabudget.model.build import planned_breakdown
    from lorabudget.tools import planner

    model = sys.argv[1]
    cfg = build_config({"model": {"name": model}, "head": {"type": "tiny"}, "budget": 100000,
                        "adapter": {"method": "loha", "r": 8, "target_modules": ["query", "value"]}})
    shape = planner.model_shape(model, 4)
    counts = planner.count_allocation(shape, planner.allocation_from_config(cfg, shape))
    meta = planned_breakdown(cfg, 4)
    peft_model, head, _ = add_adapters(load_pretrained(model, ["a", "b", "c", "d"]), cfg.adapter, cfg.head)
    real = count_trainable(peft_model)
    import torch
    logits = peft_model(input_ids=torch.tensor([[0, 5, 6, 2]])).logits
    print(json.dumps({"arithmetic": [counts.total, counts.groups, counts.layers],
                      "meta": [meta.total, dict(meta.groups), {str(k): v for k, v in meta.layers.items()}],
                      "real": real.total, "logits": list(logits.shape), "stock_loadable": head.stock_loadable}))
""")


def doc_blocks() -> list[str]:
    text = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_worked_examples_are_one_entry_each_and_everything_reads_them(tiny_roberta):
    blocks = doc_blocks()
    assert len(blocks) == 2 and 'HEADS["tiny"]' in blocks[0] and 'METHODS["loha"]' in blocks[1]
    script = "\n\n".join(blocks) + CHECK
    done = subprocess.run([sys.executable, "-c", script, str(tiny_roberta)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    total, groups, layers = out["arithmetic"]
    hidden, labels, r = 32, 4, 8  # the tiny model's width, the classes, LoHa's rank
    per_layer = 2 * r * (hidden + hidden)  # two rank-r factor pairs of a hidden x hidden layer; 2 layers
    assert groups == {"head (classifier)": hidden * 16 + 16 + 16 * labels + labels,
                      "loha attention.self.query": 2 * per_layer, "loha attention.self.value": 2 * per_layer}
    assert out["meta"] == [total, groups, {str(k): v for k, v in layers.items()}]  # arithmetic == the built shape
    assert out["real"] == total  # and the real model agrees
    assert out["logits"] == [1, labels]
    assert out["stock_loadable"] is False


def test_every_reader_is_a_data_format_of_the_config():
    from lorabudget.config import DataConfig
    from lorabudget.data import READERS

    formats = set(typing.get_args(DataConfig.model_fields["format"].annotation))
    assert formats == {"auto", "hub", *READERS}
