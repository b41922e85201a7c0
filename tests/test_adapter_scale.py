"""--adapter-scale: the LoRA update scaled towards the pretrained encoder (WiSE-FT) before merging, the same in
evaluate, predict, export (merged and adapter) and lorabudget.load; refused outside [0, 1] and for adapters
without LoRA layers."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_benchmark, make_texts, tiny_config, write_config, write_csv

from lorabudget import load
from lorabudget.cli import main


@pytest.fixture(scope="module")
def texts():
    return [t for t, _ in make_texts(24, seed=8)]


def _logits(clf, texts) -> torch.Tensor:
    return torch.from_numpy(clf.logits(clf.tokenize(texts)))


def test_scale_zero_is_the_pretrained_encoder_with_the_trained_head(trained_run, texts):
    from lorabudget.config import load_config
    from lorabudget.data import LabelSpace
    from lorabudget.serve.api import load_peft_model

    cfg = load_config(trained_run / "config.yaml")
    labels = LabelSpace.from_json(json.loads((trained_run / "labels.json").read_text()))
    peft_model = load_peft_model(cfg, labels, trained_run / "adapter").eval()
    clf = load(trained_run, adapter_scale=0.0, precision="fp32")
    enc = clf.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # no update left: the pretrained encoder, the head as trained
                p.zero_()
        expected = peft_model(**enc).logits
    assert torch.allclose(_logits(clf, texts), expected, atol=1e-5)
    full = _logits(load(trained_run, precision="fp32"), texts)
    half = _logits(load(trained_run, adapter_scale=0.5, precision="fp32"), texts)
    assert not torch.allclose(half, full, atol=1e-4) and not torch.allclose(half, expected, atol=1e-4)


def test_every_reader_scales_alike(trained_run, texts, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    half = _logits(load(trained_run, adapter_scale=0.5, precision="fp32"), texts)
    assert main(["export", str(trained_run), "--merged", str(tmp_path / "merged"), "--adapter",
                 str(tmp_path / "adapter"), "--adapter-scale", "0.5"]) == 0
    clf = load(trained_run)  # for its tokenizer
    enc = clf.tokenizer(texts, padding=True, return_tensors="pt")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForSequenceClassification.from_pretrained(
        json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"],
        num_labels=len(clf.class_names))
    adapter = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(merged(**enc).logits, half, atol=1e-4)
        assert torch.allclose(adapter(**enc).logits, half, atol=1e-4)
    # evaluate and predict: the scaled model's predictions, recorded apart from the unscaled ones
    data = write_csv(tmp_path / "rows.csv", [(t, 0) for t in texts])
    assert main(["evaluate", str(trained_run), "--data", str(data), "--adapter-scale", "0.5"]) == 0
    assert "LoRA update scaled by 0.5" in capsys.readouterr().out
    scores = json.loads(next((trained_run / "eval").glob("*-scale0.5/metrics.json")).read_text())
    assert scores["adapter_scale"] == 0.5
    # several scales: each scored as alone, into its own folder, and a table to choose from
    assert main(["evaluate", "--adapter-scale", "0.5,0,1,0.5", str(trained_run), "--data", str(data),
                 "--out", str(tmp_path / "scales")]) == 0
    printed = capsys.readouterr().out
    table = [line.split() for line in printed.split("scale  accuracy")[1].splitlines()[1:4]]
    assert [float(row[0]) for row in table] == [0.5, 0.0, 1.0]
    again = json.loads((tmp_path / "scales" / "scale0.5" / "metrics.json").read_text())
    assert again["accuracy"] == scores["accuracy"] == pytest.approx(float(table[0][1]), abs=5e-5)
    assert sum(row[-1] == "best" for row in table) == 1
    assert main(["predict", str(trained_run), "--data", str(data), "--out", str(tmp_path / "p.csv"),
                 "--adapter-scale", "0.5"]) == 0
    predicted = [int(line.split(",")[1]) for line in (tmp_path / "p.csv").read_text().splitlines()[1:]]
    assert predicted == half.argmax(dim=1).tolist()


@pytest.mark.parametrize("scale", ["1.5", "-0.1"])
def test_a_scale_outside_0_1_is_refused(trained_run, tmp_path, scale, capsys):
    assert main(["export", str(trained_run), "--merged", str(tmp_path / "m"), "--adapter-scale", scale]) == 2
    assert "must lie in [0, 1]" in capsys.readouterr().err and not (tmp_path / "m").exists()
    # not numbers: argparse's usage error, exit 2
    for bad in ("", "0.5,x"):
        with pytest.raises(SystemExit) as stopped:
            main(["evaluate", str(trained_run), "--adapter-scale", bad])
        assert stopped.value.code == 2 and "comma-separated numbers" in capsys.readouterr().err
    # several scales: all are checked before the first is scored
    assert main(["evaluate", str(trained_run), "--adapter-scale", f"0.5,{scale}", "--out", str(tmp_path / "e")]) == 2
    assert "must lie in [0, 1]" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_an_adapter_without_lora_layers_is_refused(tiny_roberta, easy_csv, tmp_path, capsys):
    run = tmp_path / "ia3"
    cfg = tiny_config(tiny_roberta, easy_csv, run, adapter={"method": "ia3", "target_modules": ["key", "value"]},
                      optim={"max_steps": 2})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    assert main(["evaluate", str(run), "--adapter-scale", "0.5"]) == 2
    assert "LoRA-family" in capsys.readouterr().err
    assert main(["export", str(run), "--adapter", str(tmp_path / "a"), "--adapter-scale", "0.5"]) == 2
    assert "LoRA-family" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_a_run_with_an_inference_scale_is_scored_exported_and_loaded_at_it(tiny_roberta, easy_csv, tmp_path):
    """adapter.inference_scale: the evaluations during training score the scaled update (the best checkpoint is
    chosen at it), every reader uses it unless told otherwise, the saved weights stay unscaled."""
    from safetensors.torch import load_file

    from lorabudget.serve.evaluate import evaluate

    run = tmp_path / "run"
    cfg = tiny_config(tiny_roberta, easy_csv, run, adapter={"inference_scale": 0.5}, optim={"max_steps": 8},
                      eval={"every_steps": 4})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    summary = json.loads((run / "summary.json").read_text())
    scores, out = evaluate(str(run), progress=False)
    assert scores["adapter_scale"] == 0.5 and out.name.endswith("-scale0.5")
    assert scores["accuracy"] == pytest.approx(summary["best"]["accuracy"], abs=1e-9)
    unscaled, _ = evaluate(str(run), progress=False, adapter_scale=1.0)
    assert "adapter_scale" not in unscaled
    texts = [t for t, _ in make_texts(24, seed=8)]
    assert torch.equal(_logits(load(run), texts), _logits(load(run, adapter_scale=0.5), texts))
    assert main(["export", str(run), "--adapter", str(tmp_path / "adapter")]) == 0
    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    exported = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    b = [k for k in saved if ".lora_B." in k]
    assert b and all(torch.equal(exported[k], saved[k] * 0.5) for k in b)
    assert all(torch.equal(exported[k], saved[k]) for k in saved if k not in b)


def test_an_inference_scale_is_refused_where_the_method_has_no_lora_layers(tiny_roberta, easy_csv, tmp_path,
                                                                            capsys):
    cfg = tiny_config(tiny_roberta, easy_csv, tmp_path / "run", adapter={"method": "vera", "inference_scale": 0.5})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 2
    assert "inference_scale" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_layernorms_trained_in_full_are_interpolated_with_the_update(tiny_roberta, easy_csv, tmp_path, capsys):
    """adapter.train_layernorms: a scale moves the trained LayerNorms towards their pretrained values as it
    moves the LoRA update (0 is the pretrained encoder), evaluations during training restore them after, and an
    adapter-only export, which lacks the pretrained values, is refused at a scale below 1."""
    from transformers import AutoModel

    from lorabudget.model.adapters import scaled_update, trained_norms

    run = tmp_path / "run"
    cfg = tiny_config(tiny_roberta, easy_csv, run, adapter={"train_layernorms": True},
                      optim={"max_steps": 6, "lr": 0.05})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    pretrained = {n: p for n, p in AutoModel.from_pretrained(tiny_roberta).named_parameters() if "LayerNorm" in n
                  and ".layer." in n}

    def norms(scale):
        model = load(run, adapter_scale=scale, precision="fp32").model
        return {n.split("roberta.", 1)[1]: p.detach() for n, p in model.named_parameters()
                if "LayerNorm" in n and ".layer." in n}

    full, zero, half = norms(1.0), norms(0.0), norms(0.5)
    assert pretrained.keys() == full.keys() and pretrained
    assert any(not torch.allclose(full[n], pretrained[n]) for n in full)  # training moved them
    assert all(torch.allclose(zero[n], pretrained[n]) for n in zero)
    assert all(torch.allclose(half[n], (full[n] + pretrained[n]) / 2, atol=1e-6) for n in half)

    from lorabudget.config import load_config
    from lorabudget.data import LabelSpace
    from lorabudget.serve.api import load_peft_model

    labels = LabelSpace.from_json(json.loads((run / "labels.json").read_text()))
    peft_model = load_peft_model(load_config(run / "config.yaml"), labels, run / "adapter")
    pairs = trained_norms(peft_model)
    before = [p.detach().clone() for _, t in pairs for p in t.parameters()]
    with scaled_update(peft_model, 0.0):
        assert all(torch.equal(p, p0) for o, t in pairs for p0, p in zip(o.parameters(), t.parameters()))
    assert all(torch.equal(p, b) for p, b in zip((p for _, t in pairs for p in t.parameters()), before))

    assert main(["export", str(run), "--adapter", str(tmp_path / "a"), "--adapter-scale", "0.5"]) == 2
    assert "train_layernorms" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_the_wise_benchmark_scores_each_runs_own_split_and_keeps_other_entries(trained_run, easy_csv, tmp_path):
    """benchmarks/wise.py: `held_out` re-derives each run's validation rows (at scale 1 they score what the run
    recorded), several runs go in one call, and --json keeps the entries already in the file."""

    wise = load_benchmark("wise")
    results = tmp_path / "wise.json"
    results.write_text(json.dumps({"note": "kept", "runs": {"earlier": {"1.0": {"val": 0.5}}}}))
    assert wise.main([str(trained_run), str(trained_run), "--data", "val=held_out", "--data",
                      f"other={easy_csv}", "--scales", "1", "0.5", "--json", str(results)]) == 0
    kept = json.loads(results.read_text())
    assert kept["note"] == "kept" and kept["runs"]["earlier"] == {"1.0": {"val": 0.5}}
    scores = kept["runs"][str(trained_run)]
    assert set(scores) == {"1.0", "0.5"} and set(scores["1.0"]) == {"val", "other"}
    best = json.loads((trained_run / "summary.json").read_text())["best"]["accuracy"]
    assert scores["1.0"]["val"] == pytest.approx(best, abs=1e-9)
    # the trade-off picture, drawn from the file alone: the runs under a prefix, the earlier entry left out
    picture = tmp_path / "tradeoff.png"
    assert wise.main(["--data", "val=held_out", "--data", "other=x", "--json", str(results), "--figure",
                      str(picture), "--figure-prefix", str(trained_run.parent), "--goal", "90"]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):  # nothing to score and nothing to draw from
        wise.main(["--data", "val=held_out", "--data", "other=x"])
