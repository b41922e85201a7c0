"""The CLI end to end on a tiny model: train, then evaluate the run directory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import make_texts, write_csv

from lorabudget.cli import main


def test_run_dir_contract(trained_run):
    for name in ["config.yaml", "labels.json", "metrics.jsonl", "summary.json", "status.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "plots/loss.png",
                 "plots/accuracy.png", "checkpoints/last/trainable.safetensors",
                 "checkpoints/best/trainable.safetensors"]:
        assert (trained_run / name).is_file(), name
    status = json.loads((trained_run / "status.json").read_text())
    assert status["state"] == "finished"
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["finished"] is True and summary["num_processes"] == 1
    assert len(summary["data"]["validation_hash"]) == 16
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in r and "lr" in r for r in records)
    evals = [r for r in records if "val_accuracy" in r]
    assert evals and all("val_loss" in r for r in evals)
    # each evaluation records the training time so far (time to accuracy): positive and growing
    seconds = [r["train_seconds"] for r in evals]
    assert seconds[0] > 0 and seconds == sorted(seconds) and seconds[-1] <= summary["train_seconds"] + 1e-6
    for png in (trained_run / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_easy_task_learned_well_above_chance(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    # chance is 0.25 on 4 balanced classes; the keyword task is easy for even a 2-layer encoder
    assert summary["best"]["accuracy"] >= 0.9, summary["best"]


def test_reported_count_equals_built_model(trained_run):
    from lorabudget.config import load_config
    from lorabudget.data import LabelSpace
    from lorabudget.model.build import build_adapted_model

    summary = json.loads((trained_run / "summary.json").read_text())
    cfg = load_config(trained_run / "config.yaml")
    labels = LabelSpace.from_json(json.loads((trained_run / "labels.json").read_text()))
    built = build_adapted_model(cfg, labels)
    really_trains = sum(p.numel() for n, p in built.model.named_parameters()
                        if p.requires_grad and ".original_module." not in n)
    assert summary["trainable_params"] == really_trains == built.breakdown.total
    assert summary["breakdown"]["groups"]["head (classifier)"] == 32 * 32 + 32 + 32 * 4 + 4


def test_evaluate_cli_writes_metrics_and_picture(trained_run, capsys):
    assert main(["evaluate", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "World" in out
    metrics = json.loads((trained_run / "eval" / "validation" / "metrics.json").read_text())
    summary = json.loads((trained_run / "summary.json").read_text())
    # evaluating the best adapter on the run's validation rows reproduces the run's best score
    assert metrics["accuracy"] == pytest.approx(summary["best"]["accuracy"], abs=1e-9)
    cm = np.array(metrics["confusion_matrix"])
    assert cm.sum() == summary["data"]["validation_rows"]
    assert (trained_run / "eval" / "validation" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_on_another_source(trained_run, tmp_path):
    other = write_csv(tmp_path / "other.csv", make_texts(60, seed=9))
    out = tmp_path / "ev"
    assert main(["evaluate", str(trained_run), "--data", str(other), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows"] == 60 and metrics["accuracy"] > 0.8


def test_reload_in_new_process_gives_identical_predictions(trained_run, tmp_path):
    texts = [t for t, _ in make_texts(40, seed=5)]
    import lorabudget

    here = lorabudget.load(trained_run).predict_proba(texts)
    script = textwrap.dedent(f"""
        import json, sys, lorabudget
        texts = json.loads(sys.stdin.read())
        print(json.dumps(lorabudget.load({str(trained_run)!r}).predict_proba(texts).tolist()))
    """)
    res = subprocess.run([sys.executable, "-c", script], input=json.dumps(texts), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    there = np.array(json.loads(res.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(here, there, rtol=0, atol=1e-6)


def test_stock_peft_loads_default_head_adapter(trained_run):
    """PeftModel.from_pretrained on the stock model class, no lorabudget involved, predicts what the run does."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import lorabudget

    cfg = json.loads((trained_run / "summary.json").read_text())
    base_name = __import__("yaml").safe_load((trained_run / "config.yaml").read_text())["model"]["name"]
    base = AutoModelForSequenceClassification.from_pretrained(base_name, num_labels=len(cfg["labels"]))
    model = PeftModel.from_pretrained(base, str(trained_run / "adapter")).eval()
    tok = AutoTokenizer.from_pretrained(trained_run / "adapter")
    texts = [t for t, _ in make_texts(16, seed=7)]
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        stock = model(**enc).logits.argmax(-1).tolist()
    ours = lorabudget.load(trained_run).predict(texts)
    assert [cfg["labels"][i] for i in stock] == ours
