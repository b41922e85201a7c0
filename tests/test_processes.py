"""speed.processes: `lorabudget train` starts the processes of a data-parallel run itself (gloo on CPU), shares
each batch out over them, stops them together on a signal, and resumes them exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from conftest import tiny_config, write_config
from safetensors.torch import load_file

# Installed as sitecustomize in the processes of the stopped run: every optimizer step slowed down, so that the
# test can signal the run in its middle.
SLOW_STEPS = """
import time, torch
_step = torch.optim.AdamW.step
def _slow(self, *a, **k):
    time.sleep(0.1)
    return _step(self, *a, **k)
torch.optim.AdamW.step = _slow
"""


def _cfg(tiny_roberta, easy_csv, out, processes=2):
    return tiny_config(tiny_roberta, easy_csv, out, adapter={"dropout": 0.1}, speed={"processes": processes},
                       optim={"max_steps": 24, "batch_size": 16}, eval={"every_steps": 8})


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def test_two_processes_share_each_batch_stop_together_and_resume_exactly(tiny_roberta, easy_csv, tmp_path):
    from lorabudget.cli import main

    one = tmp_path / "one"
    assert main(["train", "-c", str(write_config(tmp_path / "one.yaml", _cfg(tiny_roberta, easy_csv, one, 1)))]) == 0
    straight = tmp_path / "straight"
    assert main(["train", "-c", str(write_config(tmp_path / "a.yaml", _cfg(tiny_roberta, easy_csv, straight)))]) == 0
    s1, s2 = _summary(one), _summary(straight)
    assert (s1["num_processes"], s2["num_processes"]) == (1, 2)
    assert (s1["batch_size_per_process"], s2["batch_size_per_process"]) == (16, 8)
    # the same global batch: every optimizer step saw 16 rows, 8 on each process
    assert s1["samples_per_step"] == s2["samples_per_step"] == 16
    assert s1["train_samples"] == s2["train_samples"] == 24 * 16
    assert "processes: 2" in (straight / "config.yaml").read_text()
    assert json.loads((straight / "status.json").read_text())["state"] == "finished"
    val = [r for r in map(json.loads, (straight / "metrics.jsonl").read_text().splitlines()) if "val_accuracy" in r]
    assert [r["step"] for r in val] == [8, 16, 24]  # written by one process

    # SIGTERM to the command: its processes stop at the same step, after a checkpoint, as one process does
    stopped = tmp_path / "stopped"
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_STEPS)
    # MKL_NUM_THREADS outranks OMP_NUM_THREADS in torch: each process must get both, or it takes both cores
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "slow"), "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "lorabudget.cli", "train", "-c",
                             str(write_config(tmp_path / "b.yaml", _cfg(tiny_roberta, easy_csv, stopped)))],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = stopped / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 120
    while not (state.is_file() and json.loads(state.read_text())["step"] >= 8):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert err.count("stopped by SIGTERM") == 1 and "Traceback" not in err, err[-3000:]
    assert "(1 thread(s) each); batch 8 per process, 16 per optimizer step" in out  # threads = 2 cores / 2
    status = json.loads((stopped / "status.json").read_text())
    assert status["state"] == "interrupted" and 8 <= status["step"] < 24
    assert json.loads(state.read_text())["step"] == status["step"]

    # --resume starts the recorded 2 processes and ends where the uninterrupted run ended, bit for bit
    assert main(["train", "--resume", str(stopped)]) == 0
    again = _summary(stopped)
    assert again["num_processes"] == 2
    assert (again["best"], again["final"], again["steps"]) == (s2["best"], s2["final"], s2["steps"])
    a, b = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (straight, stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_process_counts_are_config_errors(tiny_roberta, easy_csv, tmp_path, capsys):
    from lorabudget.cli import main

    for value in ("0", "many", "-1"):
        assert main(["config", "--set", f"speed.processes={value}"]) == 2
        assert "speed.processes: Value error, expected a whole number of processes" in capsys.readouterr().err
    out = tmp_path / "odd"
    cfg = write_config(tmp_path / "c.yaml", _cfg(tiny_roberta, easy_csv, out))
    assert main(["train", "-c", str(cfg), "--set", "optim.batch_size=15"]) == 2
    assert "optim.batch_size=15 does not split evenly over speed.processes=2" in capsys.readouterr().err
    assert not out.exists()


def test_a_failing_worker_is_one_message(tiny_roberta, easy_csv, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tiny_roberta, easy_csv, out)
    cfg["data"]["source"] = str(tmp_path / "missing.csv")
    res = subprocess.run([sys.executable, "-m", "lorabudget.cli", "train", "-c",
                          str(write_config(tmp_path / "c.yaml", cfg))], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.count("error:") == 1 and "missing.csv" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()  # nothing was written: no folder left behind


def test_auto_chooses_two_processes_for_a_small_encoder_on_a_cpu(tiny_roberta, easy_csv, tmp_path, monkeypatch):
    from lorabudget.config import build_config
    from lorabudget.train import launch

    monkeypatch.setattr(launch, "physical_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)

    def auto(**optim):
        cfg = build_config(_cfg(tiny_roberta, easy_csv, tmp_path / "x", "auto") | {"optim": {"batch_size": 32,
                                                                                                **optim}})
        return launch.auto_processes(cfg)[0]

    assert auto() == 2
    defaults = {k: v for k, v in _cfg(tiny_roberta, easy_csv, tmp_path / "x").items() if k != "speed"}
    assert build_config(defaults).speed.processes == "auto"  # the default
    assert auto(batch_size=128) == 1  # big batches keep one process's threads busy
    assert auto(batch_size=31) == 1  # does not split in two
    from lorabudget.model import backbone

    shape = backbone.load_config(str(tiny_roberta), 2)
    with monkeypatch.context() as m:
        m.setattr(backbone, "load_config", lambda *a, **k: shape)
        shape.hidden_size = 768  # roberta-base's width: measured faster on 2 processes
        assert auto() == 2
        shape.hidden_size = 1024  # wider: one process's matmuls keep both threads busy
        assert auto() == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert auto() == 1  # one thread in all: nothing to share out
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(launch, "physical_cores", lambda: 1)
    assert auto() == 1
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = launch.resolve_processes(build_config(_cfg(tiny_roberta, easy_csv, tmp_path / "x", "auto")), say=str)
    assert cfg.speed.processes == 1  # recorded as the number that runs


def test_the_auto_default_keeps_old_meanings(tiny_roberta, easy_csv, tmp_path, monkeypatch):
    """'auto' is the default now: under an outside launcher it means a batch per process, as 1 did; runs record
    the number that trained them; the number is no part of a recipe; DistilBERT's shape is read too."""
    from test_regularisers import _train

    from lorabudget.config import build_config, recipe_settings
    from lorabudget.train import launch

    auto = build_config(_cfg(tiny_roberta, easy_csv, tmp_path / "x", "auto"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    resolved = launch.resolve_processes(auto, say=str)
    assert resolved.speed.processes == 1 and not launch.splits_batch(auto, 2) and launch.splits_batch(
        build_config(_cfg(tiny_roberta, easy_csv, tmp_path / "x", 2)), 2)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")

    two = build_config(_cfg(tiny_roberta, easy_csv, tmp_path / "x", 2))
    assert recipe_settings(auto) == recipe_settings(two)  # 1 or 2 processes: seeds of one recipe

    monkeypatch.setattr(launch, "physical_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(launch, "AUTO_MAX_HIDDEN", 4096)  # so that the memory estimate reads the FFN's width
    distil = build_config(_cfg(tiny_roberta, easy_csv, tmp_path / "x", "auto")
                          | {"model": {"name": "distilbert-base-uncased"}})
    assert launch.auto_processes(distil)[0] in (1, 2)  # its shipped config names the width hidden_dim
    monkeypatch.undo()

    cfg = _cfg(tiny_roberta, easy_csv, tmp_path / "run", "auto")
    cfg["optim"]["max_steps"] = 2
    _train(cfg, tmp_path)  # in this process: 'auto' is never resolved, one process trains
    assert "processes: 1" in (tmp_path / "run" / "config.yaml").read_text()
