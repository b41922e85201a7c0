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


def test_a_loss_that_becomes_nan_stops_the_run_and_keeps_the_last_checkpoint(tiny_roberta, easy_csv, tmp_path,
                                                                              capsys):
    out = tmp_path / "run"
    # a learning rate this absurd overflows the attention within two steps; a checkpoint follows every step
    cfg = tiny_config(tiny_roberta, easy_csv, out, optim={"max_steps": 60, "lr": 1e30, "warmup_ratio": 0.0,
                                                          "max_grad_norm": None, "weight_decay": 0.0},
                      eval={"every_steps": 1})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert "the training loss became" in err and "Traceback" not in err
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "loss became" in status["reason"]
    assert not (out / "summary.json").exists()
    last = json.loads((out / "checkpoints" / "last" / "state.json").read_text())
    assert 1 <= last["step"] == status["step"]  # the last good step: the failing one was never saved
