"""LP-FT (optim.probe_epochs): the head trains alone first, then everything; a run with it trains, resumes and
records it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, write_config

from lorabudget.cli import main
from lorabudget.config import AdapterConfig, HeadConfig, OptimConfig
from lorabudget.errors import ConfigError
from lorabudget.model.adapters import add_adapters
from lorabudget.model.backbone import load_pretrained
from lorabudget.train.optim import is_head_parameter, make_optimizer, plan_schedule


def _lora_b(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_B" in n])


def _head(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for n, p in model.named_parameters()
                      if p.requires_grad and is_head_parameter(n)])


def test_the_adapters_wait_for_the_probe(tiny_roberta):
    torch.manual_seed(0)
    model, _, _ = add_adapters(load_pretrained(str(tiny_roberta), list("abcd")), AdapterConfig(r=2),
                               HeadConfig(type="linear"))
    o = OptimConfig(lr=1e-2, epochs=4, warmup_ratio=0.05, probe_epochs=1)
    schedule = plan_schedule(o, micro_per_epoch=10, rows=320, world=1)
    assert schedule.probe == 10 and schedule.total_steps == 40
    optimizer, scheduler = make_optimizer(model, o, schedule)
    assert sum(g.get("head", False) for g in optimizer.param_groups) == 2
    ids = torch.randint(5, 40, (8, 12))
    labels = torch.randint(0, 4, (8,))
    b0, head0 = _lora_b(model), _head(model)
    for step in range(14):
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        if step == schedule.probe - 1:  # the probe's last step: LoRA's B is still its zero init, the head moved
            assert torch.equal(_lora_b(model), b0) and not torch.equal(_head(model), head0)
    assert not torch.equal(_lora_b(model), b0)  # then the adapters train


def test_a_probe_that_leaves_no_room_is_refused():
    with pytest.raises(ConfigError, match="probe_epochs"):
        plan_schedule(OptimConfig(epochs=2, probe_epochs=2), micro_per_epoch=10, rows=320, world=1)


def test_a_probed_run_resumes_exactly_from_inside_the_probe(tiny_roberta, easy_csv, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from test_methods import _stop_after

    def config(out):
        cfg = tiny_config(tiny_roberta, easy_csv, out, head={"type": "linear"}, adapter={"dropout": 0.1},
                          optim={"epochs": 3, "probe_epochs": 1, "warmup_ratio": 0.05}, eval={"every_steps": 4})
        return str(write_config(tmp_path / f"{out.name}.yaml", cfg))

    straight = tmp_path / "straight"
    assert main(["train", "-c", config(straight)]) == 0
    summary = json.loads((straight / "summary.json").read_text())
    assert "probe_epochs: 1" in (straight / "config.yaml").read_text()
    logged = [r for r in map(json.loads, (straight / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    assert any(r["epoch"] < 1 for r in logged)  # steps inside the probe were logged ...
    assert all(r["lr"] > 0 for r in logged[:-1])  # ... with the head's rate, not the idle adapters' 0

    stopped = tmp_path / "stopped"
    step = _stop_after(monkeypatch, 3)  # inside the probe (an epoch is more than 3 steps here)
    assert main(["train", "-c", config(stopped)]) == 143
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    assert main(["train", "--resume", str(stopped)]) == 0
    again = json.loads((stopped / "summary.json").read_text())
    assert (again["best"], again["final"], again["steps"]) == (summary["best"], summary["final"], summary["steps"])
    a, b = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (straight, stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
