"""The run directory is replaced only by a run that got past its checks."""

from __future__ import annotations

import json

from conftest import tiny_config, write_config

from lorabudget.cli import main


def test_failed_overwrite_keeps_the_finished_run(tiny_roberta, easy_csv, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tiny_roberta, easy_csv, out, optim={"max_steps": 2}))
    assert main(["train", "-c", str(cfg)]) == 0
    before = (out / "summary.json").read_text()

    # over budget: fails in setup, after the run dir checks passed
    assert main(["train", "-c", str(cfg), "--overwrite", "--set", "budget=10"]) == 2
    assert "over the budget" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before
    assert json.loads((out / "status.json").read_text())["state"] == "finished"

    # a bad data source: same
    assert main(["train", "-c", str(cfg), "--overwrite", "--data", str(tmp_path / "missing.csv")]) == 2
    assert (out / "summary.json").read_text() == before

    # a good one replaces it
    assert main(["train", "-c", str(cfg), "--overwrite", "--max-steps", "3"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
