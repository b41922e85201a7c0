"""benchmarks/ceiling.py (full fine-tuning on a study's rows) and the results file it shares with the study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from conftest import BENCHMARKS, load_benchmark


def run_ceiling(args: list[str]) -> subprocess.CompletedProcess:
    """A process of its own, as the benchmark runs: the Trainer sets accelerate's process-wide state (its mixed
    precision), which lorabudget's own trainings in this test process must not inherit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(BENCHMARKS / "ceiling.py"), *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_the_ceiling_trains_every_weight_on_the_rows_a_study_run_trains_on(tiny_roberta, easy_csv, trained_run,
                                                                          tmp_path):
    from transformers import AutoModelForSequenceClassification

    results = tmp_path / "results.json"
    args = ["--seeds", "3", "--epochs", "2", "--lr", "1e-3", "--model", str(tiny_roberta), "--data", str(easy_csv),
            "--validation-size", "0.2", "--max-length", "32", "--batch-size", "16", "--out", str(tmp_path / "out"),
            "--results", str(results), "--control", "none"]
    first = run_ceiling(args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "seed 3: epoch 2" in first.stdout  # progress: a line per evaluation
    run = json.loads(results.read_text())["runs"]["full-finetune/seed-3"]
    # the validation rows of a lorabudget run with the same data settings (trained_run: 0.2, split_seed 0)
    study = json.loads((trained_run / "summary.json").read_text())["data"]
    assert run["validation_hash"] == study["validation_hash"]
    # every weight of the encoder and its head trains
    built = AutoModelForSequenceClassification.from_pretrained(tiny_roberta, num_labels=4)
    assert run["trainable"] == sum(p.numel() for p in built.parameters())
    assert [c["step"] for c in run["curve"]] == [run["steps"] // 2, run["steps"]]  # one evaluation per epoch
    assert run["validation"] == max(c["validation"] for c in run["curve"])
    assert run["validation"] > 0.5  # it learned: four classes, a chance of a quarter
    assert run["recipe"] == "full-finetune" and run["seed"] == 3 and run["threads"] == 1
    # a seed the results file holds is not trained again
    again = run_ceiling(args)
    assert again.returncode == 0 and "seed 3: in" in again.stdout and "epoch" not in again.stdout
    assert json.loads(results.read_text())["runs"]["full-finetune/seed-3"] == run


def test_the_ceiling_refuses_a_missing_data_file(tmp_path, capsys):
    ceiling = load_benchmark("ceiling")
    assert ceiling.main(["--data", str(tmp_path / "nope.csv"), "--results", str(tmp_path / "r.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_a_results_file_waits_for_its_other_writer(tmp_path):
    """Two lanes of a study finish together: the second waits for the first's write instead of writing back what
    it read before it, which would drop the first's run."""
    recipes = load_benchmark("recipes")
    results = tmp_path / "round.json"
    recipes.add_results(results, {"a/seed-1": {"recipe": "a", "seed": 1}})
    done = threading.Event()

    def second_lane():
        recipes.add_results(results, {"b/seed-1": {"recipe": "b", "seed": 1}})
        done.set()

    with recipes.results_lock(results):
        lane = threading.Thread(target=second_lane)
        lane.start()
        time.sleep(0.3)
        assert not done.is_set()  # blocked while the first writer holds the file
        data = recipes.load_results(results)
        data["runs"]["c/seed-1"] = {"recipe": "c", "seed": 1}
        recipes._write_results(results, data)
    lane.join(10)
    assert set(recipes.load_results(results)["runs"]) == {"a/seed-1", "b/seed-1", "c/seed-1"}
    # a key held already keeps its record
    recipes.add_results(results, {"a/seed-1": {"recipe": "a", "seed": 99}})
    assert recipes.load_results(results)["runs"]["a/seed-1"]["seed"] == 1
