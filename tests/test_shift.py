"""`lorabudget shift`: on a target with a shift built here (half its rows rewritten in words the training data
never uses), it finds the shift and ranks the rewritten rows as the most foreign; on a target drawn like the
training data, it finds none."""

from __future__ import annotations

import csv
import json
import random

import pytest
from conftest import make_texts, write_csv

from lorabudget.cli import main

MADE_UP = "zorb quix plenth vammo drisk obulon trenna kasp yurl weft".split()


def _rewritten(text: str, rng: random.Random) -> str:
    """The class's keywords kept, every other word replaced by a word the training data never uses, with curly
    quotes: another kind of text about the same topic."""
    from conftest import KEYWORDS

    keywords = {w for ws in KEYWORDS.values() for w in ws}
    words = [w if w in keywords else rng.choice(MADE_UP) for w in text.split()]
    return "\u201c" + " ".join(words) + "\u201d"


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("targets")
    rng = random.Random(5)
    rows = make_texts(240, seed=31)
    shifted = [(_rewritten(t, rng) if i % 2 == 0 else t, label) for i, (t, label) in enumerate(rows)]
    return {"shifted": write_csv(folder / "shifted.csv", shifted),
            "alike": write_csv(folder / "alike.csv", make_texts(240, seed=32))}


def test_shift_finds_the_rewritten_half_and_ranks_it_first(trained_run, targets, tmp_path, capsys):
    out = tmp_path / "shift"
    assert main(["shift", str(trained_run), "--target", str(targets["shifted"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "shift.json").read_text())
    assert summary["domain"]["auc"] >= 0.7, summary["domain"]
    assert 0.35 <= summary["domain"]["unlike_share"] <= 0.6, summary["domain"]
    # the word classifier finds the rewritten half too: their words are ones train never uses
    assert summary["domain_words"]["auc"] >= 0.7 and 0.35 <= summary["domain_words"]["unlike_share"] <= 0.6
    assert summary["verdict"].startswith("shifted") and "verdict   shifted" in printed
    assert "one on words (TF-IDF)" in printed
    # words: the made-up words never occur in train; validation's words all do
    assert summary["vocabulary"]["target"]["unseen"] > 0.2 > summary["vocabulary"]["validation"]["unseen"]
    assert summary["artefacts"]["target"]["curly quotes"] == pytest.approx(0.5)
    assert summary["artefacts"]["train"]["curly quotes"] == 0
    # the rows it finds most foreign are the rewritten ones (even IDs: written with the row index as ID)
    with open(out / "target_scores.csv", newline="") as f:
        ranked = list(csv.DictReader(f))
    assert len(ranked) == 240
    top = ranked[:120]
    assert sum(int(r["ID"]) % 2 == 0 for r in top) / len(top) >= 0.9
    # the rows the words flag are rewritten ones, as predict --match-shares would correct them
    flagged = [int(r["ID"]) for r in ranked if r["unlike_train_words"] == "1"]
    assert len(flagged) >= 80 and sum(i % 2 == 0 for i in flagged) / len(flagged) >= 0.95
    assert (out / "shift.png").stat().st_size > 10_000


def test_shift_finds_nothing_on_a_target_drawn_like_the_training_data(trained_run, targets, tmp_path):
    out = tmp_path / "shift"
    assert main(["shift", str(trained_run), "--target", str(targets["alike"]), "--out", str(out)]) == 0
    summary = json.loads((out / "shift.json").read_text())
    assert summary["domain"]["auc"] < 0.65 and summary["domain"]["unlike_share"] <= 0.08, summary["domain"]
    words = summary["domain_words"]
    assert words["auc"] < 0.65 and words["unlike_share"] <= 0.08, words
    assert summary["verdict"].startswith("no shift")
    assert summary["vocabulary"]["target"]["unseen"] == 0


def test_the_report_shows_the_diagnosis_of_a_run(trained_run, targets, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["shift", str(run), "--target", str(targets["shifted"])]) == 0  # into RUN/shift/shifted/
    assert (run / "shift" / "shifted" / "shift.json").is_file()
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.md").read_text()
    assert "## Shift of the target" in page and "| run | shifted.csv |" in page
    assert "words: AUC, unlike" in page
    assert "figures/shift-run-shifted.png" in page
    assert (tmp_path / "report" / "figures" / "shift-run-shifted.png").is_file()


@pytest.mark.parametrize("kind", ["datasets.Dataset", "pandas.DataFrame"])
def test_a_pickled_target_as_handed_out_gives_a_submission_the_competition_accepts(kind, trained_run, tmp_path,
                                                                                   capsys):
    """One `text` column, no ID column, pickled: IDs are the row index 0..n-1, labels 0..3; reading it needs the
    explicit opt-in."""
    import pickle

    texts = [t for t, _ in make_texts(50, seed=61)]
    if kind == "datasets.Dataset":
        import datasets

        obj = datasets.Dataset.from_dict({"text": texts})
    else:
        import pandas

        obj = pandas.DataFrame({"text": texts})
    path = tmp_path / "test_unlabelled.pkl"
    path.write_bytes(pickle.dumps(obj))
    out = tmp_path / "submission.csv"
    assert main(["predict", str(trained_run), "--data", str(path), "--out", str(out)]) == 2
    assert "--allow-pickle" in capsys.readouterr().err and not out.exists()
    with pytest.warns(UserWarning, match="unpickling"):  # the warning comes with the opt-in
        assert main(["predict", str(trained_run), "--data", str(path), "--out", str(out), "--allow-pickle"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ID", "Label"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(50)]
    assert {r[1] for r in rows[1:]} <= {"0", "1", "2", "3"}
