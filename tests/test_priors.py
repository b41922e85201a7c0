"""Prior adaptation (predict --adapt-priors): EM recovers a target's class shares from the model's probabilities
alone, and re-weighting by them makes fewer errors on a target whose classes are not balanced as in training."""

from __future__ import annotations

import json

import numpy as np
from conftest import make_texts, write_csv

from lorabudget.cli import main
from lorabudget.runtime.priors import adapt_priors


def _posteriors(x: np.ndarray, means: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Exact posteriors of a 1-D Gaussian mixture (unit variance) under `priors`: a perfectly calibrated model."""
    like = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2)
    post = like * priors
    return post / post.sum(axis=1, keepdims=True)


def test_em_recovers_the_target_priors_and_reduces_errors():
    rng = np.random.default_rng(0)
    means, train = np.array([-1.5, 0.0, 1.5]), np.full(3, 1 / 3)
    target = np.array([0.6, 0.3, 0.1])
    y = rng.choice(3, size=20_000, p=target)
    x = means[y] + rng.standard_normal(len(y))
    probs = _posteriors(x, means, train)  # what a model trained on balanced classes outputs
    adapted, estimate = adapt_priors(probs, train)
    np.testing.assert_allclose(estimate, target, atol=0.02)
    np.testing.assert_allclose(adapted, _posteriors(x, means, estimate), atol=1e-6)
    assert (adapted.argmax(1) == y).mean() > (probs.argmax(1) == y).mean() + 0.02
    # balanced target: the estimate stays near the training priors
    y = rng.choice(3, size=20_000, p=train)
    _, estimate = adapt_priors(_posteriors(means[y] + rng.standard_normal(len(y)), means, train), train)
    np.testing.assert_allclose(estimate, train, atol=0.02)


def test_em_never_collapses_to_one_class():
    """Near-uniform, slightly biased probabilities (an undertrained model) drive plain EM to put every row in
    one class; the bounded estimate keeps every class within 5x of its training share."""
    rng = np.random.default_rng(1)
    probs = np.full((2000, 4), 0.25) + rng.normal(0, 0.01, (2000, 4))
    probs[:, 1] += 0.02
    probs /= probs.sum(axis=1, keepdims=True)
    _, estimate = adapt_priors(probs, np.full(4, 0.25))
    assert estimate.min() >= 0.25 / 5 - 1e-9 and estimate.max() < 0.9


def test_predict_adapts_priors_and_reports_the_estimate(trained_run, tmp_path, capsys):
    # a target where World (class 0) is most rows
    rows = [(t, label) for t, label in make_texts(400, seed=41) if label == 0 or len(t) % 5 == 0]
    target = write_csv(tmp_path / "skewed.csv", rows)
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained_run), "--data", str(target), "--out", str(out), "--adapt-priors",
                 "--proba"]) == 0
    printed = capsys.readouterr().out
    assert "priors    the target's class shares, estimated by EM" in printed
    split = json.loads((trained_run / "split.json").read_text())
    assert sum(split["train_class_counts"]) == split["train_rows"]
    line = next(x for x in printed.splitlines() if x.startswith("priors"))
    world = float(line.split("World ")[1].split("%")[0]) / 100
    assert world > 0.5  # the estimate sees the skew
    lines = out.read_text().splitlines()
    assert lines[0].startswith("ID,Label,p_") and len(lines) == len(rows) + 1
