"""Self-training (data.target_source, selftrain.*): rounds of pseudo-labelling the unlabelled target follow the
supervised phase within the same run, are recorded, keep the budget, and a run stopped in a round resumes to the
same result."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from conftest import load_benchmark, make_texts, one_torch_thread, slow_cli, tiny_config, write_config

from lorabudget.cli import main
from lorabudget.train.selftrain import select_pseudo_labels


def test_selection_by_threshold_and_class_balanced_share():
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.2, 0.8], [0.1, 0.9], [0.97, 0.03], [0.45, 0.55]])
    assert select_pseudo_labels(probs, 0.9, None).tolist() == [0, 3, 4]
    # over 0.5: class 0 rows 0, 1, 4 and class 1 rows 2, 3, 5; the top third of each by confidence
    assert select_pseudo_labels(probs, 0.5, 1 / 3).tolist() == [3, 4]
    assert select_pseudo_labels(probs, 0.99, 0.5).tolist() == []


def _target(tmp_path):
    path = tmp_path / "target.csv"
    path.write_text("text\n" + "\n".join(t for t, _ in make_texts(120, seed=51)) + "\n")
    return path


def _cfg(tiny_roberta, easy_csv, tmp_path, out):
    cfg = tiny_config(tiny_roberta, easy_csv, out, optim={"max_steps": 24, "epochs": 1}, eval={"every_steps": 8},
                      adapter={"dropout": 0.1}, logging={"every_steps": 4, "progress": False})
    cfg["data"]["target_source"] = str(_target(tmp_path))
    cfg["selftrain"] = {"rounds": 2, "threshold": 0.5, "epochs": 1.0, "top_share": 0.8}
    return cfg


@pytest.fixture(scope="module")
def selftrained(tiny_roberta, easy_csv, tmp_path_factory):
    folder = tmp_path_factory.mktemp("selftrain")
    out = folder / "run"
    cfg = write_config(folder / "c.yaml", _cfg(tiny_roberta, easy_csv, folder, out))
    with one_torch_thread():  # compared bit for bit with a run resumed at one thread
        assert main(["train", "-c", str(cfg)]) == 0
    return out


def test_rounds_follow_the_supervised_phase_and_are_recorded(selftrained):
    summary = json.loads((selftrained / "summary.json").read_text())
    rounds = summary["selftrain"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        record = json.loads((selftrained / "selftrain" / f"round-{r['round']}.json").read_text())
        assert 0 < r["rows"] == len(record["indices"]) == len(record["labels"]) <= 120
        assert sum(r["label_counts"].values()) == r["rows"]
    # the steps go on past the supervised 24: one epoch of labelled + pseudo-labelled rows per round
    steps = [m["step"] for m in map(json.loads, (selftrained / "metrics.jsonl").read_text().splitlines())]
    assert steps == sorted(steps) and summary["steps"] > 24 + 2 * 24  # 384 labelled rows alone make 24 steps
    assert summary["trainable_params"] <= summary["budget"]
    assert summary["best"]["step"] in {m["step"] for m in map(json.loads, (selftrained / "metrics.jsonl")
                                                               .read_text().splitlines()) if "val_accuracy" in m}


def test_a_run_stopped_in_a_round_resumes_to_the_same_result(selftrained, tiny_roberta, easy_csv, tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", _cfg(tiny_roberta, easy_csv, tmp_path, out))
    proc = subprocess.Popen([sys.executable, "-c", slow_cli(0.03), "train", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = out / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline:  # into the second round
        try:
            if json.loads(state.read_text())["round"] == 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert json.loads(state.read_text())["round"] == 2 and not (out / "summary.json").exists()
    assert main(["train", "--resume", str(out)]) == 0
    a, b = (json.loads((run / "summary.json").read_text()) for run in (selftrained, out))
    assert a["best"] == b["best"] and a["final"] == b["final"] and a["steps"] == b["steps"]
    assert a["selftrain"] == b["selftrain"]


def test_pseudo_labels_come_from_the_model_as_shipped(tiny_roberta, easy_csv, tmp_path):
    """With adapter.inference_scale < 1 the rounds pseudo-label with the scaled update (WiSE-FT), as predict does."""
    from test_regularisers import _train

    from lorabudget import load
    from lorabudget.train.selftrain import pseudo_label

    cfg = _cfg(tiny_roberta, easy_csv, tmp_path, tmp_path / "run")
    cfg["optim"]["max_steps"] = 8
    cfg["adapter"]["inference_scale"] = 0.0  # the pretrained encoder under the trained head: far from the full model
    cfg["selftrain"] = {"rounds": 1, "threshold": 0.0, "epochs": 0.05}
    _, recipe = _train(cfg, tmp_path)
    texts = [t for t, _ in make_texts(120, seed=51)]
    record = pseudo_label(recipe, 9)  # the run's best weights, every target row (threshold 0)
    shipped, full = (load(tmp_path / "run", adapter_scale=s, precision="fp32") for s in (None, 1.0))
    scaled_logits = shipped.logits(shipped.tokenize(texts))
    top2 = np.sort(scaled_logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # merged and unmerged weights may order a near-tie apart
    assert record["indices"] == list(range(120))
    assert (np.asarray(record["labels"])[clear] == scaled_logits.argmax(1)[clear]).all()
    assert (scaled_logits.argmax(1) != full.logits(full.tokenize(texts)).argmax(1)).any()  # the scale matters


def test_the_shift_benchmark_continues_a_finished_run_into_its_self_training_round(trained_run, tmp_path):
    """benchmarks/shift.py --continue-from today: the self-training recipe starts from today's finished run of the
    same seed (same config and seed: the same supervised phase), copied with the round switched on, and resumes
    into the round instead of training the supervised phase again; the finished run is left as it was."""
    import shutil
    from pathlib import Path

    shift = load_benchmark("shift")
    out = tmp_path / "bench"
    base = out / "today" / "seed-1"
    shutil.copytree(trained_run, base, ignore=shutil.ignore_patterns(".lock", "eval", "shift"))
    (out / "data").mkdir()
    target = Path(shutil.copy(_target(tmp_path), out / "data" / "target.csv"))
    last_step = json.loads((base / "summary.json").read_text())["steps"]

    assert not shift.continue_finished(out, "normalize", "today", 1, target)  # not today with rounds added
    assert not shift.continue_finished(out, "today", "today", 1, target)  # the base itself adds no rounds
    assert shift.continue_finished(out, "selftrain", "today", 1, target)
    run = out / "selftrain" / "seed-1"
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"
    assert not (run / "summary.json").exists()
    assert not shift.continue_finished(out, "selftrain", "today", 1, target)  # there already: left alone
    from lorabudget.config import load_config

    cfg = load_config(run / "config.yaml")
    assert cfg.selftrain.rounds == 1 and Path(cfg.data.target_source) == out / "data" / "target.csv"

    with one_torch_thread():
        assert main(["train", "--resume", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selftrain"][0]["round"] == 1 and summary["selftrain"][0]["target_rows"] == 120
    assert summary["steps"] > last_step  # the round trained on from where the finished run stopped
    assert json.loads((base / "status.json").read_text())["state"] == "finished"
    assert json.loads((base / "summary.json").read_text())["steps"] == last_step
