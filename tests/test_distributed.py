"""Data parallel on CPU: two processes (gloo) under torchrun train one run; only the main process writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import tiny_config, write_config


def test_two_processes_train_to_a_finished_run(tiny_roberta, easy_csv, tmp_path):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tiny_roberta, easy_csv, out, eval={"every_steps": 6}))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                          "2", "-m", "lorabudget.cli", "train", "-c", str(cfg), "--max-steps", "12"],
                         capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["steps"] == 12
    # each optimizer step consumed one batch of 16 on each of the two processes
    assert summary["train_samples"] == 12 * 16 * 2
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    # the main process alone wrote the metrics: one validation record per evaluation, not one per process
    val = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_accuracy" in r]
    assert [r["step"] for r in val] == [6, 12]
