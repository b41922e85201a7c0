"""`lorabudget sweep`: a killed sweep resumes to exactly N trials, over-budget candidates never train,
pruning stops a trial through the engine's hook, the grid stops when it is exhausted, the space file is
checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import slow_cli, tiny_config, write_config

# The CLI with every optimizer step slowed down, so that the test can kill the sweep in the middle of a trial.
SLOW_CLI = slow_cli(0.05)



BUDGET = 4000  # tiny roberta: head 1,188 + LoRA q,v on 2 layers 256 x r: r=2, 4 fit; r=64 (17,572) does not
SPACE = {"params": {
    "adapter.r": {"type": "categorical", "choices": [2, 4, 64]},
    "adapter.alpha": {"type": "categorical", "choices": [1, 2], "per": "adapter.r"},
    "optim.lr": {"type": "loguniform", "low": 3e-3, "high": 3e-2},
}}


def _base(tiny_roberta, easy_csv, tmp_path, max_steps=40, every=10):
    cfg = tiny_config(tiny_roberta, easy_csv, tmp_path / "unused", budget=BUDGET, eval={"every_steps": every},
                      optim={"max_steps": max_steps, "epochs": 1})
    return write_config(tmp_path / "base.yaml", cfg)


def _study(out: Path):
    import optuna

    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")


def _unfinished_trial_with_checkpoint(out: Path):
    for run in sorted((out / "trials").glob("trial-*")) if (out / "trials").is_dir() else []:
        state = run / "checkpoints" / "last" / "state.json"
        if state.is_file() and not (run / "summary.json").exists():
            try:
                if json.loads(state.read_text())["step"] >= 10:
                    return run
            except (ValueError, KeyError):  # being written
                continue
    return None


def test_killed_sweep_resumes_to_exactly_n_trials(tiny_roberta, easy_csv, tmp_path):
    from optuna.trial import TrialState

    from lorabudget.cli import main
    from lorabudget.tools.report import write_report

    base = _base(tiny_roberta, easy_csv, tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    over = tmp_path / "over.yaml"  # enqueued first, so that an over-budget candidate certainly comes up
    over.write_text(yaml.safe_dump({"adapter": {"r": 64, "alpha": 64}}))
    out = tmp_path / "sweep"
    args = ["sweep", "-c", str(base), "--space", str(space), "--trials", "3", "--out", str(out),
            "--enqueue", str(over), "--heartbeat", "1", "--sampler-seed", "0"]

    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline, killed = time.time() + 180, None
    while time.time() < deadline and killed is None:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        killed = _unfinished_trial_with_checkpoint(out)
        time.sleep(0.05)
    assert killed is not None, "no trial reached a checkpoint in time"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "status.json").read_text())["state"] == "running"

    # the same command again: the dead worker's trial is found stale, marked FAIL, and retried once
    assert main(args) == 0

    study = _study(out)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 3
    for t in done:
        assert t.user_attrs["trainable_params"] <= BUDGET
        if t.state == TrialState.COMPLETE:
            run = Path(t.user_attrs["run_dir"])
            assert json.loads((run / "status.json").read_text())["state"] == "finished"
            assert json.loads((run / "summary.json").read_text())["trainable_params"] == t.user_attrs[
                "trainable_params"]

    killed_trial = next(t for t in trials if t.user_attrs.get("run_dir") == str(killed.resolve()))
    assert killed_trial.state == TrialState.FAIL and "skipped" not in killed_trial.user_attrs
    assert json.loads((killed / "status.json").read_text())["state"] == "failed"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed_trial.number]
    assert len(retries) == 1 and retries[0].params == killed_trial.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)

    # over budget: marked, counted exactly, never trained (no run dir, no run of that size anywhere)
    skipped = [t for t in trials if t.user_attrs.get("skipped") == "over budget"]
    assert skipped and skipped[0].params["adapter.r"] == 64
    for t in skipped:
        assert t.state == TrialState.FAIL and t.user_attrs["trainable_params"] > BUDGET
        assert "run_dir" not in t.user_attrs and not (out / "trials" / f"trial-{t.number:04d}").exists()
    for summary in (out / "trials").glob("*/summary.json"):
        assert json.loads(summary.read_text())["trainable_params"] <= BUDGET

    # the report leaves the killed trial's run out and says why
    md, _ = write_report([str(out)], tmp_path / "report", progress=False)
    text = md.read_text()
    board = text.split("## Left out")[0]
    assert killed.name not in board
    assert f"trial {killed_trial.number} ({killed.name})" in text
    assert f"retried as trial {retries[0].number}" in text
    assert "never trained: over budget" in text
    for t in done:
        assert Path(t.user_attrs["run_dir"]).name in board


def test_pruned_trials_and_exhausted_grid(tiny_roberta, easy_csv, tmp_path):
    import optuna
    from optuna.trial import TrialState

    from lorabudget.config import load_config
    from lorabudget.tools.sweep import Space, run_sweep

    base = load_config(_base(tiny_roberta, easy_csv, tmp_path, max_steps=20, every=5))
    space = Space.parse({"params": {"adapter.r": {"type": "categorical", "choices": [2, 4, 64]}}})
    # prunes every trial at its first evaluation (accuracy below 0.99): the run stops and finishes, PRUNED
    result = run_sweep(base, space, tmp_path / "grid", trials=5, sampler="grid", progress=False,
                       pruner=optuna.pruners.ThresholdPruner(lower=0.99), log=lambda s: None)
    trials = optuna.load_study(study_name="grid", storage=result.storage).get_trials(deepcopy=False)
    assert sorted(t.params["adapter.r"] for t in trials) == [2, 4, 64]  # each grid point once, then it stops
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert sorted(t.params["adapter.r"] for t in pruned) == [2, 4] and result.done == 2
    for t in pruned:
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["stopped_by"] == "callback" and summary["steps"] == 5 == t.user_attrs["pruned_at_step"]
    assert [t.user_attrs["skipped"] for t in trials if t.state == TrialState.FAIL] == ["over budget"]


def test_space_file_is_checked():
    from lorabudget.errors import ConfigError
    from lorabudget.tools.sweep import Space

    with pytest.raises(ConfigError, match="adapter.rank: not a config field"):
        Space.parse({"params": {"adapter.rank": {"choices": [4]}}})
    with pytest.raises(ConfigError, match="sampled after it"):
        Space.parse({"params": {"adapter.alpha": {"choices": [1, 2], "per": "adapter.r"},
                                "adapter.r": {"choices": [4, 8]}}})
    with pytest.raises(ConfigError, match="low > 0"):
        Space.parse({"params": {"optim.lr": {"type": "loguniform", "low": 0, "high": 1}}})
    with pytest.raises(ConfigError, match="grid needs a finite set"):
        Space.parse({"params": {"optim.lr": {"type": "float", "low": 0.1, "high": 1}}}).grid()

    space = Space.parse({"params": {
        "adapter.r": {"choices": [4, 8]},
        "adapter.alpha": {"choices": [1, 2], "per": "adapter.r"},
        "adapter.target_modules": {"choices": [["query", "value"], ["value"]]},
        "head.type": {"choices": ["default", "lowrank"]},
        "head.rank": {"type": "int", "low": 8, "high": 32, "step": 8, "when": {"head.type": "lowrank"}},
    }})
    assert space.grid()["head.rank"] == [8, 16, 24, 32]
    # a config (a `plan --write` candidate, say) maps back to the space's parameters, lists and ratios too
    raw = {"adapter": {"r": 8, "alpha": 16, "target_modules": ["value"]},
           "head": {"type": "default", "rank": 32}}
    assert space.params_of(raw) == {"adapter.r": 8, "adapter.alpha/adapter.r": 2,
                                    "adapter.target_modules": "[value]", "head.type": "default"}
    with pytest.raises(ConfigError, match="not among the space's choices"):
        space.params_of({**raw, "adapter": {"r": 16, "alpha": 16, "target_modules": ["value"]}})


def test_enqueued_config_reads_layers_as_the_config_does(tmp_path):
    """`layers: all` in an enqueued file is every layer: the space's null choice (or its 'all', the same)."""
    from lorabudget.config import Config
    from lorabudget.errors import ConfigError
    from lorabudget.tools.sweep import Space, _enqueue

    class Study:
        def __init__(self):
            self.enqueued = []

        def enqueue_trial(self, params, user_attrs, skip_if_exists):
            self.enqueued.append(params)

    every, top = tmp_path / "every.yaml", tmp_path / "top.yaml"
    every.write_text("adapter: {layers: all}\n")
    top.write_text("adapter: {layers: top-half}\n")
    base = Config().model_dump(mode="json")
    for choices in ([None, "top-half"], ["all", "top-half"]):
        study = Study()
        space = Space.parse({"params": {"adapter.layers": {"choices": choices}}})
        _enqueue(study, space, base, [str(every), str(top)])
        assert study.enqueued == [{"adapter.layers": None}, {"adapter.layers": "top-half"}]
    with pytest.raises(ConfigError, match="choices repeat"):
        Space.parse({"params": {"adapter.layers": {"choices": [None, "all"]}}})


def test_trials_share_the_frozen_layers_states_and_score_as_alone(tiny_roberta, easy_csv, tmp_path, monkeypatch,
                                                                  capsys):
    """Two trials that cache the same frozen layer over the same texts compute the states once; the second trial
    scores exactly what the same config scores when trained alone."""
    import lorabudget.runtime.prefix as prefix
    from lorabudget.cli import main

    calls = []
    compute = prefix.compute_states
    monkeypatch.setattr(prefix, "compute_states", lambda *a, **k: calls.append(1) or compute(*a, **k))
    cfg = tiny_config(tiny_roberta, easy_csv, tmp_path / "unused", budget=BUDGET, eval={"every_steps": 10},
                      optim={"max_steps": 20, "epochs": 1}, adapter={"layers": [1]})
    base = write_config(tmp_path / "base.yaml", cfg)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"optim.lr": {"type": "categorical", "choices": [3e-3, 2e-2]}}}))
    out = tmp_path / "sweep"
    assert main(["sweep", "-c", str(base), "--space", str(space), "--trials", "2", "--out", str(out),
                 "--sampler", "grid", "--pruner", "none"]) == 0
    printed = capsys.readouterr()
    assert len(calls) == 2  # train and validation, once, for both trials
    assert "reused the states of frozen layers 0-0" in printed.out + printed.err
    second = out / "trials" / "trial-0001"
    alone = tmp_path / "alone"
    assert main(["train", "-c", str(second / "config.yaml"), "--output-dir", str(alone)]) == 0
    assert len(calls) == 4  # outside a sweep nothing is shared
    a, b = (json.loads((run / "summary.json").read_text()) for run in (second, alone))
    assert a["best"] == b["best"] and a["final"] == b["final"]
