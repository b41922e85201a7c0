"""Submissions, exports and their round trips on a tiny trained run."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
import torch
from conftest import CLASSES, make_texts, tiny_config, write_config

import lorabudget
from lorabudget.cli import main


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "test.csv"
    rows = make_texts(30, seed=11)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "text"])
        for i, (text, _) in enumerate(rows):
            w.writerow([1000 + i, text])
    return path, rows


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("fmt", ["id", "name", "source"])
def test_submission_rows(trained_run, unlabelled, tmp_path, fmt):
    path, rows = unlabelled
    names = lorabudget.load(trained_run).class_names  # inferred from the data's label names, sorted
    assert sorted(names) == sorted(CLASSES)

    def expected(k):  # the conftest's class k, as the submission should write it
        return str(names.index(CLASSES[k])) if fmt == "id" else CLASSES[k]

    out = tmp_path / "submission.csv"
    assert main(["predict", str(trained_run), "--data", str(path), "--out", str(out), "--label-format", fmt]) == 0
    got = read_csv(out)
    assert list(got[0]) == ["ID", "Label"]
    assert [r["ID"] for r in got] == [str(1000 + i) for i in range(len(rows))]
    truth = [expected(label) for _, label in rows]
    assert np.mean([r["Label"] == t for r, t in zip(got, truth)]) > 0.8


def test_submission_with_probabilities_and_row_index_ids(trained_run, tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in make_texts(12, seed=3)))
    out = tmp_path / "s.csv"
    assert main(["predict", str(trained_run), "--data", str(path), "--out", str(out), "--proba"]) == 0
    got = read_csv(out)
    assert [r["ID"] for r in got] == [str(i) for i in range(12)]
    names = lorabudget.load(trained_run).class_names
    probs = np.array([[float(r[f"p_{c}"]) for c in names] for r in got])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert [int(r["Label"]) for r in got] == probs.argmax(1).tolist()


def test_pickled_dataset_needs_the_flag(trained_run, tmp_path, capsys):
    from datasets import Dataset

    texts = [t for t, _ in make_texts(8, seed=4)]
    path = tmp_path / "test_unlabelled.pkl"
    with open(path, "wb") as f:
        pickle.dump(Dataset.from_dict({"text": texts}), f)
    out = tmp_path / "s.csv"
    assert main(["predict", str(trained_run), "--data", str(path), "--out", str(out)]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert not out.exists()
    with pytest.warns(UserWarning, match="runs code"):
        assert main(["predict", str(trained_run), "--data", str(path), "--out", str(out), "--allow-pickle"]) == 0
    assert len(read_csv(out)) == 8


def test_merged_export_predicts_what_the_run_predicts(trained_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "merged"
    assert main(["export", str(trained_run), "--merged", str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    texts = [t for t, _ in make_texts(24, seed=8)]
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        exported = [model.config.id2label[i] for i in model(**enc).logits.argmax(-1).tolist()]
    assert exported == lorabudget.load(trained_run).predict(texts)


def test_adapter_export_loads_with_peft(trained_run, tmp_path):
    out = tmp_path / "adapter"
    assert main(["export", str(trained_run), "--adapter", str(out)]) == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and "classifier" in cfg["modules_to_save"]


def test_linear_head_cannot_become_a_stock_model(tiny_roberta, easy_csv, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tiny_roberta, easy_csv, out, head={"type": "linear"},
                                                          optim={"max_steps": 3}))
    assert main(["train", "-c", str(cfg)]) == 0
    assert main(["export", str(out), "--merged", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "linear" in err and "--adapter" in err and "--custom-code" in err
    assert not (tmp_path / "m").exists()
    # its own loader still works, and reloads the trained head
    texts = [t for t, _ in make_texts(6, seed=1)]
    assert len(lorabudget.load(out).predict(texts)) == 6


@pytest.mark.parametrize("family,head,pooling", [("roberta", "linear", "cls"), ("roberta", "lowrank", "mean"),
                                                 ("bert", "linear", "mean"), ("bert", "lowrank", "cls")])
def test_custom_code_export_predicts_what_the_run_predicts(family, head, pooling, tiny_roberta, tiny_bert, easy_csv,
                                                            tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "run"
    model_dir = tiny_roberta if family == "roberta" else tiny_bert
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(model_dir, easy_csv, out, head={"type": head, "rank": 6,
                                                                                      "pooling": pooling},
                                                          optim={"max_steps": 12}))
    assert main(["train", "-c", str(cfg)]) == 0
    merged = tmp_path / "merged"
    assert main(["export", str(out), "--merged", str(merged), "--custom-code"]) == 0
    assert (merged / "modeling_lorabudget.py").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(merged, trust_remote_code=True).eval()
    assert type(model).__name__.startswith("Lorabudget")
    tok = AutoTokenizer.from_pretrained(merged)
    texts = [t for t, _ in make_texts(24, seed=8)]
    with torch.no_grad():
        probs = torch.softmax(model(**tok(texts, padding=True, return_tensors="pt")).logits, -1).numpy()
    np.testing.assert_allclose(probs, lorabudget.load(out).predict_proba(texts), atol=1e-5)
