"""Token noise (data.token_drop, data.token_swap): garbled training rows, untouched evaluation, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_config

from lorabudget.cli import main
from lorabudget.config import build_config
from lorabudget.errors import ConfigError
from lorabudget.runtime.augment import TokenNoise


def _rows(n: int = 40, length: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.concatenate([[0], rng.integers(10, 99, length), [2]]) for _ in range(n)]


def test_noise_keeps_the_special_tokens_and_never_empties_a_text():
    rows = _rows()
    out = TokenNoise(drop=0.5, swap=0.3, seed=1).rows(rows, np.arange(len(rows)))
    assert all(r[0] == 0 and r[-1] == 2 and len(r) >= 3 for r in out)
    dropped = 1 - sum(len(r) - 2 for r in out) / sum(len(r) - 2 for r in rows)
    assert 0.4 < dropped < 0.6
    short = _rows(200, length=3)
    every = TokenNoise(drop=0.99, swap=0.0, seed=1).rows(short, np.arange(len(short)))
    assert all(len(r) >= 3 for r in every) and sum(len(r) == 3 for r in every) > 180  # never emptied


def test_swaps_reorder_without_losing_tokens():
    rows = _rows()
    out = TokenNoise(drop=0.0, swap=0.5, seed=3).rows(rows, np.arange(len(rows)))
    assert all(sorted(a.tolist()) == sorted(b.tolist()) for a, b in zip(rows, out))
    assert sum(not np.array_equal(a, b) for a, b in zip(rows, out)) > 30


def test_noise_is_a_function_of_seed_and_rows():
    rows, index = _rows(), np.arange(40)
    a = TokenNoise(0.2, 0.2, seed=5).rows(rows, index)
    b = TokenNoise(0.2, 0.2, seed=5).rows(rows, index)
    c = TokenNoise(0.2, 0.2, seed=6).rows(rows, index)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("field,value", [("token_drop", 1.0), ("token_swap", -0.1)])
def test_bad_rates_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        build_config({"data": {field: value}})


def test_a_noised_run_trains_evaluates_clean_and_resumes_exactly(tiny_roberta, easy_csv, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from test_methods import _stop_after

    from lorabudget.serve.evaluate import evaluate

    def config(out, **noise):
        cfg = tiny_config(tiny_roberta, easy_csv, out, optim={"max_steps": 16}, eval={"every_steps": 4})
        cfg["data"].update(noise)
        return str(write_config(tmp_path / f"{out.name}.yaml", cfg))

    plain, noised = tmp_path / "plain", tmp_path / "noised"
    assert main(["train", "-c", config(plain)]) == 0
    assert main(["train", "-c", config(noised, token_drop=0.2, token_swap=0.1)]) == 0

    def losses(run):
        return [r["train_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if "train_loss" in r]
    assert losses(plain) != losses(noised)  # the training rows really changed
    summary = json.loads((noised / "summary.json").read_text())
    scores, _ = evaluate(str(noised), progress=False)  # evaluation reads the texts as they are
    assert scores["accuracy"] == pytest.approx(summary["best"]["accuracy"], abs=1e-9)

    stopped = tmp_path / "stopped"
    step = _stop_after(monkeypatch, 6)
    assert main(["train", "-c", config(stopped, token_drop=0.2, token_swap=0.1)]) == 143
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    assert main(["train", "--resume", str(stopped)]) == 0
    again = json.loads((stopped / "summary.json").read_text())
    assert (again["best"], again["final"]) == (summary["best"], summary["final"])
    a, b = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (noised, stopped))
    assert all(torch.equal(a[k], b[k]) for k in a)
