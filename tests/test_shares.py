"""Class shares matched on the target (predict/evaluate --match-shares, data.target_shares): offsets that give the
model's stated class balance back on the rows that read unlike training, and only there."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
from conftest import load_benchmark, make_texts, write_csv

from lorabudget.cli import main
from lorabudget.errors import LorabudgetError
from lorabudget.runtime.priors import match_shares
from lorabudget.serve.shares import parse_shares

CLASSES = ["World", "Sports", "Business", "Tech"]
MADE_UP = "zorb quix plenth vammo drisk obulon trenna kasp yurl weft".split()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_matched_offsets_meet_the_shares_and_undo_a_tilt():
    """A model that adds +1.2 to one class's logit on every row of a balanced target (the tilt a shift gives):
    the fitted offsets take it back, the mean probabilities meet the shares, and errors fall."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 8000)
    clean = 2.0 * np.eye(4)[y] + rng.standard_normal((8000, 4))
    tilted = clean + np.array([0.0, 0.0, 0.0, 1.2])
    offsets = match_shares(tilted, np.full(4, 0.25))
    np.testing.assert_allclose(_softmax(tilted + offsets).mean(axis=0), 0.25, atol=1e-4)
    assert offsets.argmin() == 3 and abs(offsets.sum()) < 1e-9
    assert ((tilted + offsets).argmax(1) == y).mean() > (tilted.argmax(1) == y).mean() + 0.05
    # other shares than uniform are met too, in the given order
    wanted = np.array([0.4, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(_softmax(clean + match_shares(clean, wanted)).mean(axis=0), wanted, atol=1e-4)


@pytest.mark.parametrize("value, expected", [
    ("uniform", [0.25, 0.25, 0.25, 0.25]),
    ("UNIFORM", [0.25, 0.25, 0.25, 0.25]),
    ("none", None),
    (None, None),
    ("3,1,1,3", [0.375, 0.125, 0.125, 0.375]),
    ([0.4, 0.2, 0.2, 0.2], [0.4, 0.2, 0.2, 0.2]),
])
def test_shares_are_read_as_said(value, expected):
    got = parse_shares(value, CLASSES)
    assert (got is None) if expected is None else np.allclose(got, expected)


@pytest.mark.parametrize("value, message", [
    ("0.5,0.5", "2 class shares given for 4 classes"),
    ("0.5,0.5,-0.1,0.1", "positive"),
    ("half,a,b,c", "'uniform', 'none' or 4 numbers"),
    ([0.2, 0.2, 0.2, 0.0], "positive"),
])
def test_bad_shares_are_refused_clearly(value, message):
    with pytest.raises(LorabudgetError, match=message):
        parse_shares(value, CLASSES)


@pytest.fixture(scope="module")
def shifted_target(tmp_path_factory):
    """400 rows: the even IDs rewritten in words the training data never uses, with curly quotes (another kind of
    text on the same topics), the odd IDs drawn like the training data."""
    from conftest import KEYWORDS

    keywords = {w for ws in KEYWORDS.values() for w in ws}
    rng = random.Random(7)
    rows = []
    for i, (text, label) in enumerate(make_texts(400, seed=53)):
        if i % 2 == 0:
            text = "\u201c" + " ".join(w if w in keywords else rng.choice(MADE_UP) for w in text.split()) + "\u201d"
        rows.append((text, label))
    return write_csv(tmp_path_factory.mktemp("shares") / "target.csv", rows)


def _probabilities(path) -> dict[int, np.ndarray]:
    """Each row's probabilities, in the run's class order (the file's p_ columns), as --match-shares reads shares."""
    with open(path, newline="") as f:
        rows = csv.reader(f)
        columns = [i for i, name in enumerate(next(rows)) if name.startswith("p_")]
        return {int(r[0]): np.array([float(r[i]) for i in columns]) for r in rows}


def test_predict_matches_shares_on_the_rewritten_rows_and_leaves_the_others(trained_run, shifted_target, tmp_path,
                                                                            capsys):
    plain, matched = tmp_path / "plain.csv", tmp_path / "matched.csv"
    assert main(["predict", str(trained_run), "--data", str(shifted_target), "--out", str(plain), "--proba"]) == 0
    capsys.readouterr()
    wanted = np.array([0.4, 0.2, 0.2, 0.2])
    assert main(["predict", str(trained_run), "--data", str(shifted_target), "--out", str(matched), "--proba",
                 "--match-shares", "0.4,0.2,0.2,0.2"]) == 0
    printed = capsys.readouterr().out
    assert "class shares matched on" in printed and "rows unlike the training data" in printed
    before, after = _probabilities(plain), _probabilities(matched)
    moved = [i for i in before if np.abs(before[i] - after[i]).max() > 1e-5]
    # it moved nearly every rewritten row and few of those drawn like the training data (on 384 training rows,
    # the 99th percentile that decides is rough: about one in ten of those is moved too)
    assert sum(i % 2 == 0 for i in moved) >= 0.9 * 200
    assert sum(i % 2 == 1 for i in moved) <= 0.15 * 200
    # on the rows it moved, the model's mean probability of each class is now the stated share
    np.testing.assert_allclose(np.mean([after[i] for i in moved], axis=0), wanted, atol=2e-3)
    assert not np.allclose(np.mean([before[i] for i in moved], axis=0), wanted, atol=2e-2)


def test_evaluate_scores_rows_as_predict_would_with_the_target_named(trained_run, shifted_target, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained_run), "--data", str(shifted_target), "--out", str(out),
                 "--match-shares", "uniform", "--match-on", str(shifted_target)]) == 0
    assert "applied to" in capsys.readouterr().out
    shares = json.loads((out / "metrics.json").read_text())["shares"]
    assert shares["shares"] == [0.25] * 4 and shares["rows"] == "shifted"
    # the scored rows are the target's own: those it matched on are those it applies to
    assert shares["scored_rows_matched"] == shares["fitted_rows"] >= 160


@pytest.mark.parametrize("extra, message", [
    (["--match-shares", "uniform", "--adapt-priors"], "use one"),
    (["--match-shares", "0.5,0.5"], "2 class shares given for 4 classes"),
])
def test_predict_refuses_contradictory_or_malformed_shares(trained_run, shifted_target, tmp_path, capsys, extra,
                                                           message):
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained_run), "--data", str(shifted_target), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_target_like_the_training_data_has_nothing_to_match(trained_run, tmp_path, capsys):
    alike = write_csv(tmp_path / "alike.csv", make_texts(300, seed=54))
    assert main(["predict", str(trained_run), "--data", str(alike), "--out", str(tmp_path / "p.csv"),
                 "--match-shares", "uniform"]) == 2
    assert "read unlike the training data: too few to match class shares on" in capsys.readouterr().err


def test_evaluate_needs_the_target_to_match_on(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--match-shares", "uniform"]) == 2
    assert "--match-on" in capsys.readouterr().err


def test_a_runs_own_shares_apply_where_its_target_is_known(trained_run, shifted_target, tmp_path, capsys):
    """data.target_shares (here set with --set, as a preset would carry it): predict matches on the rows it is
    given; evaluate without a target scores as trained and says why, rather than failing."""
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained_run), "--out", str(out), "--set", "data.target_shares=uniform"]) == 0
    assert "scored without; pass --match-on FILE" in capsys.readouterr().out
    assert "shares" not in json.loads((out / "metrics.json").read_text())
    assert main(["predict", str(trained_run), "--data", str(shifted_target), "--out", str(tmp_path / "p.csv"),
                 "--set", "data.target_shares=uniform"]) == 0
    assert "class shares matched on" in capsys.readouterr().out


def test_a_runs_own_shares_on_a_target_like_training_predict_without_and_say_why(trained_run, tmp_path, capsys):
    alike = write_csv(tmp_path / "alike.csv", make_texts(300, seed=54))
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained_run), "--data", str(alike), "--out", str(out),
                 "--set", "data.target_shares=uniform"]) == 0
    printed = capsys.readouterr().out
    assert "class shares not matched (the run's data.target_shares)" in printed and "too few" in printed
    assert len(out.read_text().splitlines()) == 301


def test_the_wise_benchmark_scores_each_scale_with_and_without_shares_from_one_detector(
        trained_run, shifted_target, tmp_path, monkeypatch):
    """benchmarks/wise.py --match-shares: every set scored as trained and with the shares matched, at every scale;
    the word classifier, which reads only texts, fitted once per run."""

    from lorabudget.serve import shares

    fitted = []
    original = shares.ShiftedRows.__init__
    monkeypatch.setattr(shares.ShiftedRows, "__init__", lambda self, *a, **k: (fitted.append(1),
                                                                                original(self, *a, **k))[1])
    wise = load_benchmark("wise")
    results = tmp_path / "wise.json"
    assert wise.main([str(trained_run), "--data", "val=held_out", "--data", f"target={shifted_target}",
                      "--scales", "1", "0.5", "--match-shares", "uniform", "--match-on", str(shifted_target),
                      "--json", str(results)]) == 0
    scored = json.loads(results.read_text())["runs"][str(trained_run)]
    assert set(scored) == {"1.0", "0.5"} and len(fitted) == 1
    for scale in scored.values():
        assert set(scale) == {"val", "val+shares", "target", "target+shares"}
    # matching moved some rewritten rows' predictions at one scale or the other
    assert any(s["target+shares"] != s["target"] for s in scored.values())
