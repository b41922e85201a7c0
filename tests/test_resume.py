"""A run killed with SIGKILL after a checkpoint resumes to the same result as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import slow_cli, tiny_config, write_config

# The CLI with every optimizer step slowed down, so that the test can kill it mid-run.
SLOW_TRAIN = slow_cli(0.03)


def _cfg(tiny_roberta, easy_csv, out):
    return tiny_config(tiny_roberta, easy_csv, out, adapter={"dropout": 0.1}, eval={"every_steps": 10},
                       optim={"max_steps": 80, "epochs": 1}, logging={"every_steps": 5, "progress": False})


def _final(run):
    s = json.loads((run / "summary.json").read_text())
    return s["best"], s["final"], s["steps"]


def test_sigkill_then_resume_matches_uninterrupted(tiny_roberta, easy_csv, tmp_path):
    from lorabudget.cli import main

    straight = tmp_path / "straight"
    assert main(["train", "-c", str(write_config(tmp_path / "a.yaml", _cfg(tiny_roberta, easy_csv, straight)))]) == 0

    killed = tmp_path / "killed"
    cfg = write_config(tmp_path / "b.yaml", _cfg(tiny_roberta, easy_csv, killed))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, "train", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = killed / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if state.is_file() and json.loads(state.read_text())["step"] >= 30:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "status.json").read_text())["state"] == "running"
    assert not (killed / "summary.json").exists()
    killed_at = json.loads(state.read_text())["step"]
    assert 30 <= killed_at < 80

    # an unfinished run is not mistaken for a finished one
    assert main(["evaluate", str(killed)]) == 2

    assert main(["train", "--resume", str(killed)]) == 0
    assert _final(killed) == _final(straight)
    # the metrics log holds each step once, as if the run had never stopped
    def records(run):
        return [{k: v for k, v in r.items()} for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    a, b = records(straight), records(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("val_accuracy", "val_loss", "lr"):
            if key in ra:
                assert abs(ra[key] - rb[key]) < 1e-6, (key, ra, rb)
