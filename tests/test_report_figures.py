"""Which figures the report draws, and what it says instead: no curve figure for runs evaluated once, one figure for
settings that split the runs alike, full dotted keys in titles, legends and the leaderboard, Optuna importances
only from enough complete trials, a parallel-coordinate plot whose labels do not overlap and whose lines all show
on white. Built from Run objects and in-memory Optuna studies: nothing trains."""

from __future__ import annotations

import math
import random

import pytest

from lorabudget.tools.report.collect import Run
from lorabudget.tools.report.document import Figure, Text


def _run(tmp_path, name: str, config: dict, points: list[tuple[int, float]], **summary) -> Run:
    metrics = [{"step": s, "val_accuracy": a} for s, a in points]
    best = max(points, key=lambda p: p[1])
    summary = {"best": {"step": best[0], "metric": "accuracy", "accuracy": best[1]}, "trainable_params": 1000,
               "steps": points[-1][0], "train_seconds": 1.0, **summary}
    return Run(tmp_path / name, name, config, 0, summary, metrics)


def _saved(monkeypatch) -> dict:
    """Filled as the report saves a figure: file name -> what its first axes show."""
    from lorabudget.tools.report import figures

    saved, real = {}, figures.save_figure

    def save(fig, path):
        ax, legend = fig.axes[0], fig.axes[0].get_legend()
        saved[path.name] = {"title": ax.get_title(), "xlim": ax.get_xlim(), "xticks": list(ax.get_xticks()),
                            "legend": legend.get_title().get_text() if legend else None,
                            "entries": [t.get_text() for t in legend.get_texts()] if legend else [],
                            "colorbar": [a.get_ylabel() for a in fig.axes[1:]]}
        return real(fig, path)

    monkeypatch.setattr(figures, "save_figure", save)
    return saved


def _contrast_with_white(rgba) -> float:
    """WCAG contrast ratio of a colour against white: 1 is invisible, 21 is black."""
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    return 1.05 / (0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2] + 0.05)


def test_runs_evaluated_once_get_no_curve_figure(tmp_path, monkeypatch):
    """Eight runs evaluated once each at step 10 drew eight one-point 'curves' on an x-axis from 9.6 to 10.4."""
    from lorabudget.tools.report.sections import curves_section

    saved = _saved(monkeypatch)
    runs = [_run(tmp_path, f"trial-{i}", {"optim.lr": 1e-3 * (i + 1), "adapter.r": 2 + 2 * (i % 2)},
                 [(10, 0.3 + 0.01 * i)]) for i in range(8)]
    blocks = curves_section(runs, ["adapter.r", "optim.lr"], tmp_path / "figures")
    assert not [b for b in blocks if isinstance(b, Figure)] and not saved
    text = " ".join(b.text for b in blocks if isinstance(b, Text))
    assert "evaluated once (at step 10)" in text and "eval.every_steps" in text


def test_settings_that_split_runs_alike_share_one_figure_named_in_full(tmp_path, monkeypatch):
    """Two runs differ in every varied setting: colouring by each drew the same two lines three times, titled
    'by r', 'by rank', 'by lr'. One figure, every setting by its full dotted name, each line named by its run."""
    from lorabudget.tools.report.sections import curves_section

    saved = _saved(monkeypatch)
    runs = [_run(tmp_path, "trial-0", {"adapter.r": 2, "head.rank": 8, "optim.lr": 0.02, "seed": 0},
                 [(4, 0.4), (8, 0.7), (12, 0.9)]),
            _run(tmp_path, "trial-1", {"adapter.r": 4, "head.rank": 4, "optim.lr": 0.006, "seed": 0},
                 [(4, 0.3), (8, 0.4), (12, 0.5)])]
    blocks = curves_section(runs, ["adapter.r", "head.rank", "optim.lr"], tmp_path / "figures")
    figures = [b for b in blocks if isinstance(b, Figure)]
    assert len(figures) == 1 and len(saved) == 1
    (shown,) = saved.values()
    assert shown["title"] == "Validation accuracy by adapter.r, head.rank, optim.lr"
    assert shown["legend"] == "adapter.r, head.rank, optim.lr"
    assert shown["entries"] == ["2, 8, 0.02 (trial-0)", "4, 4, 0.006 (trial-1)"]
    assert "vary together" in figures[0].caption and "adapter.r, head.rank, optim.lr" in figures[0].caption
    assert shown["xticks"] == [4, 8, 12]  # a tick at each evaluation


def test_each_setting_that_splits_runs_its_own_way_gets_a_figure_titled_by_its_full_key(tmp_path, monkeypatch):
    from lorabudget.tools.report.groups import describe
    from lorabudget.tools.report.sections import curves_section

    saved = _saved(monkeypatch)
    runs = [_run(tmp_path, f"run-{r}-{rank}", {"adapter.r": r, "head.rank": rank},
                 [(5, 0.3 + 0.01 * r), (10, 0.5 + 0.01 * rank)]) for r in (2, 4) for rank in (4, 8)]
    runs.append(_run(tmp_path, "pruned", {"adapter.r": 2, "head.rank": 4}, [(5, 0.2)]))  # pruned at its first
    blocks = curves_section(runs, ["adapter.r", "head.rank"], tmp_path / "figures")
    titles = sorted(s["title"] for s in saved.values())
    assert titles == ["Validation accuracy by adapter.r", "Validation accuracy by head.rank"]
    assert sorted(s["legend"] for s in saved.values()) == ["adapter.r", "head.rank"]
    for shown in saved.values():
        assert shown["xlim"][1] - shown["xlim"][0] >= 5  # spans the steps evaluated, not one step's neighbourhood
    assert all("A run evaluated once is a dot." in b.caption for b in blocks if isinstance(b, Figure))
    # the leaderboard's config column names them in full too: 'r=2, rank=4' read alike
    assert describe(runs[0], ["adapter.r", "head.rank"]) == "adapter.r=2, head.rank=4"


def test_a_sampled_number_is_a_colour_scale_visible_at_both_ends(tmp_path, monkeypatch):
    from lorabudget.tools.report.figures import plot_curves_by, visible_cmap

    saved = _saved(monkeypatch)
    runs = [_run(tmp_path, f"t{i}", {"optim.lr": 1e-4 * 2 ** i}, [(5, 0.3), (10, 0.3 + 0.05 * i)]) for i in range(8)]
    plot_curves_by(runs, ["optim.lr"], tmp_path / "curves.png")
    (shown,) = saved.values()
    assert shown["colorbar"] == ["optim.lr"] and shown["title"] == "Validation accuracy by optim.lr"
    import matplotlib as mpl

    assert _contrast_with_white(mpl.colormaps["Blues"](0.0)) < 1.2  # the map the parallel plot had: white
    assert _contrast_with_white(mpl.colormaps["viridis"](1.0)) < 1.3  # the curves' map: yellow on white
    assert min(_contrast_with_white(visible_cmap()(x)) for x in (0.0, 0.5, 1.0)) >= 2


def test_run_accuracy_is_that_of_the_adapter_it_saved(tmp_path):
    """With eval.metric loss the saved adapter is the lowest-loss evaluation's, not the most accurate one's: the
    run's one figure is the saved adapter's accuracy, which the best-run section re-scores."""
    run = _run(tmp_path, "a", {}, [(4, 0.5), (8, 0.6)])
    run.summary["best"] = {"step": 4, "metric": "loss", "accuracy": 0.5, "loss": 0.9}
    assert run.accuracy == 0.5
    del run.summary["best"]  # a summary without scores: the best seen
    assert run.accuracy == 0.6


def _study(n: int, seed: int = 0):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(seed)
    study = optuna.create_study(study_name=f"study-{n}", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    study.set_user_attr("base_config", {"eval": {"metric": "accuracy"}})

    def objective(trial):
        r = trial.suggest_categorical("adapter.r", [2, 4, 8])
        lr = trial.suggest_float("optim.lr", 1e-4, 3e-2, log=True)
        trial.suggest_categorical("adapter.target_modules", [
            "[query, value]", "[query, key, value, attention.output.dense]",
            "[query, key, value, attention.output.dense, intermediate.dense, output.dense]"])
        if trial.suggest_categorical("head.type", ["default", "lowrank"]) == "lowrank":
            trial.suggest_categorical("head.rank", [8, 16, 32])
        trial.suggest_categorical("adapter.dropout", [0.0, 0.1] if trial.number > 100 else [0.1])  # never varies
        return 0.4 + 0.2 * math.log10(lr / 1e-4) / 2.5 + 0.01 * r + 0.05 * rng.random()

    study.optimize(objective, n_trials=n)
    return study


@pytest.mark.parametrize(("trials", "drawn"), [(2, set()), (6, {"parallel"}), (12, {"importances", "parallel"})])
def test_study_figures_only_from_enough_trials_and_the_page_says_why(tmp_path, trials, drawn):
    """Importances from 2 trials were drawn with no caveat. Below 10 complete trials the page says why they are
    left out; below 5 the parallel-coordinate plot too (the leaderboard shows those few trials better)."""
    from lorabudget.tools.report.sections import study_section

    blocks = study_section(_study(trials), tmp_path)
    figures = {b.path.stem.rsplit("-", 1)[1] for b in blocks if isinstance(b, Figure)}
    assert figures == drawn
    assert all(b.path.is_file() for b in blocks if isinstance(b, Figure))
    text = " ".join(b.text for b in blocks if isinstance(b, Text))
    assert ("importances are left out" in text) == ("importances" not in drawn)
    assert ("parallel-coordinate plot is left out" in text) == ("parallel" not in drawn)
    if "importances" not in drawn:
        assert f"{trials} complete trials (fewer than 10)" in text
    if "importances" in drawn:
        caption = next(b.caption for b in blocks if isinstance(b, Figure) and "importances" in b.path.name)
        assert f"{trials} complete trials" in caption


def test_parallel_coordinates_labels_fit_between_axes_and_every_line_shows(tmp_path, monkeypatch):
    """Optuna's plot wrote long values over the next axis, tilted names into each other, and drew the worst
    trials in a white-ended colour map. Here: every name whole, no text over another or over the next axis, long
    values as letters spelt out in the caption, a setting no trial varied left off, every line visible on white."""
    from matplotlib.collections import LineCollection

    from lorabudget.tools.report import figures
    from lorabudget.tools.report.parallel import MAX_TICK_CHARS, NOT_SAMPLED, parallel_data
    from lorabudget.tools.report.sections import study_section

    drawn = {}
    real = figures.save_figure

    def save(fig, path):
        if "parallel" in path.name:
            renderer, ax = fig.canvas.get_renderer(), fig.axes[0]
            drawn["texts"] = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts]
            drawn["axes_x"] = [ax.transData.transform((line.get_xdata()[0], 0))[0] for line in ax.lines]
            drawn["colors"] = [c for coll in ax.collections if isinstance(coll, LineCollection)
                               for c in coll.get_colors()]
        return real(fig, path)

    monkeypatch.setattr(figures, "save_figure", save)
    study = _study(14)
    data = parallel_data(study)
    assert [a.name for a in data.axes] == ["validation accuracy", "adapter.r", "adapter.target_modules",
                                           "head.rank", "head.type", "optim.lr"]
    assert data.constant == {"adapter.dropout": 0.1}
    modules = data.axes[2]
    assert [t for _, t in modules.ticks] == ["A", "B", "C"] and modules.key[0] == "A = [query, value]"
    assert NOT_SAMPLED in [t for _, t in data.axes[3].ticks]  # head.rank where the head had no rank
    assert all(len(t) <= MAX_TICK_CHARS or t == NOT_SAMPLED for a in data.axes for _, t in a.ticks)

    blocks = study_section(study, tmp_path)
    caption = next(b.caption for b in blocks if isinstance(b, Figure) and "parallel" in b.path.name)
    assert "adapter.dropout=0.1" in caption and "adapter.target_modules: A = [query, value]" in caption
    texts, axes_x = drawn["texts"], sorted(drawn["axes_x"])
    names = {t.replace("\n", "") for t, _ in texts} & {a.name for a in data.axes}
    assert names == {a.name for a in data.axes}  # every axis named in full (wrapped at a dot at most)
    for i, (text, box) in enumerate(texts):
        assert not any(box.overlaps(other) for _, other in texts[i + 1:]), text
        own = min(axes_x, key=lambda x: min(abs(x - box.x0), abs(x - (box.x0 + box.x1) / 2)))
        assert not any(box.x0 < x < box.x1 for x in axes_x if x != own), text  # clear of the other axes
    assert len(drawn["colors"]) == 14
    assert min(_contrast_with_white(c) for c in drawn["colors"]) >= 2
