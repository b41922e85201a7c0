"""Data parallel on CPU: two processes (gloo) under torchrun train one run; only the main process writes it."""

from __future__ import annotations

import json

from conftest import tiny_config, torchrun_train, write_config


def test_two_processes_train_to_a_finished_run(tiny_roberta, easy_csv, tmp_path):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tiny_roberta, easy_csv, out, eval={"every_steps": 6}))
    torchrun_train(cfg, tmp_path, max_steps=12)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["steps"] == 12
    # each optimizer step consumed one batch of 16 on each of the two processes
    assert summary["train_samples"] == 12 * 16 * 2
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    # the main process alone wrote the metrics: one validation record per evaluation, not one per process
    val = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_accuracy" in r]
    assert [r["step"] for r in val] == [6, 12]
