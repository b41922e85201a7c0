"""`lorabudget report`: a leaderboard sorted by validation accuracy, seed repeats as mean ± std, every
figure a PNG embedded in one self-contained HTML file, unfinished runs left out."""

from __future__ import annotations

import base64
import json
import re
import statistics

import pytest
from conftest import tiny_config, write_config

PNG = b"\x89PNG\r\n\x1a\n"



def _train(tiny_roberta, easy_csv, tmp_path, name, **sections):
    from lorabudget.cli import main

    sections["optim"] = {"max_steps": 12, "epochs": 1, **sections.get("optim", {})}
    cfg = tiny_config(tiny_roberta, easy_csv, tmp_path / "runs" / name, eval={"every_steps": 4}, **sections)
    assert main(["train", "-c", str(write_config(tmp_path / f"{name}.yaml", cfg))]) == 0
    return tmp_path / "runs" / name


def _best(run) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return max(r["val_accuracy"] for r in records if "val_accuracy" in r)


def test_report_from_runs(tiny_roberta, easy_csv, tmp_path):
    from lorabudget.cli import main

    a = _train(tiny_roberta, easy_csv, tmp_path, "a", seed=0)
    b = _train(tiny_roberta, easy_csv, tmp_path, "b", seed=1)  # a and b differ only by seed: one row
    # b as an older lorabudget wrote it, before `speed.compile` existed: it trained at the default all the same
    import yaml

    old = yaml.safe_load((b / "config.yaml").read_text())
    assert old["speed"].pop("compile") is False
    # and with another default for fields that had no effect on it (epochs under max_steps; where cached states
    # live, whose default was 'memory' before 'auto')
    old["optim"]["epochs"] = 3.0
    old["speed"]["prefix_cache_storage"] = "memory"
    # and its adapted layers spelt out: every layer of the 2 the summary records, as 'all' says for a
    assert old["adapter"]["layers"] is None and json.loads((b / "summary.json").read_text())["encoder_layers"] == 2
    old["adapter"]["layers"] = [0, 1]
    (b / "config.yaml").write_text(yaml.safe_dump(old))
    _train(tiny_roberta, easy_csv, tmp_path, "c", adapter={"r": 2})
    _train(tiny_roberta, easy_csv, tmp_path, "d", optim={"lr": 3e-3})
    # a run killed before it finished: listed as left out, not reported
    killed = tmp_path / "runs" / "e"
    killed.mkdir()
    (killed / "config.yaml").write_text((a / "config.yaml").read_text())
    (killed / "status.json").write_text(json.dumps({"state": "running"}))

    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()

    # every picture is embedded as a PNG data URI: nothing outside the file is referenced
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4  # curves by adapter.r and by optim.lr, accuracy vs parameters, confusion matrix
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG)
    assert "href=" not in page and "http" not in " ".join(sources)
    assert md.count("](figures/") == 3 and "](best-run/confusion_matrix.png)" in md

    # the leaderboard: one row per config, best mean validation accuracy first
    board = md.split("## Leaderboard")[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in board.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 3
    accuracies = [float(r[4].split()[0]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    # the seed group: mean ± sample standard deviation of its runs' best validation accuracies
    group = next(r for r in rows if r[1].startswith("a, b"))
    assert "(seeds 0, 1)" in group[1]
    scores = [_best(a), _best(b)]
    assert group[4] == f"{statistics.fmean(scores):.4f} ± {statistics.stdev(scores):.4f} (n=2)"
    assert "r=2" in md and "lr=0.003" in md  # the config column names what varies

    left_out = md.split("## Left out")[1].split("\n## ")[0]
    assert str(killed) in left_out and "not finished" in left_out
    assert "e" not in [r[1] for r in rows]
    assert "## Best run:" in md and "| class | precision | recall | F1 | support |" in md
    # re-scored on this machine as training scored it (fp32, CPU): one number, said once
    assert "gives the same accuracy" in md.split("## Best run:")[1]


def test_best_run_shows_the_leaderboards_number_and_says_why_a_rescore_differs(tiny_roberta, easy_csv, tmp_path):
    """The leaderboard gave a trial 0.3970 and the best-run section, which re-scores the adapter, 0.3980, with
    nothing said. Training measures the unmerged adapter under its own precision (bf16 autocast on a GPU, cached
    frozen layers); the re-score merges it and runs as `evaluate` does: rounding can flip a row. Made here by
    recording one row fewer right than training's score. The run has one number, the leaderboard's, in both places;
    the re-score, which the per-class table and the confusion matrix come from, is named as such beside them, with
    why the two differ."""
    from lorabudget.cli import main

    run = _train(tiny_roberta, easy_csv, tmp_path, "a")
    summary = json.loads((run / "summary.json").read_text())
    rows = summary["data"]["validation_rows"]
    measured = summary["best"]["accuracy"] - 1 / rows  # as training, under other rounding, might have scored it
    summary["best"]["accuracy"] = measured
    (run / "summary.json").write_text(json.dumps(summary))

    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    rescored = json.loads((out / "best-run" / "metrics.json").read_text())["accuracy"]
    assert round(rescored * rows) - round(measured * rows) == 1

    board = md.split("## Leaderboard")[1].split("\n## ")[0]
    assert f"| {measured:.4f} |" in board
    best = md.split("## Best run:")[1].split("\n## ")[0]
    headline = best.split("\n\n")[1]
    assert f"validation accuracy {measured:.4f}, the leaderboard's figure" in headline
    assert f"gives {rescored:.4f} (1 row more right" in headline  # the re-score, named, and by how much
    assert "the re-score merged the adapter into the weights, where training scored it unmerged" in headline
    assert "table and the confusion matrix below come from re-scoring" in headline
    assert f"re-scored: {rescored:.4f}, against training's {measured:.4f}" in best  # the figure's caption


def test_seed_groups_are_labelled_by_their_folder():
    from lorabudget.tools.report import group_label

    assert group_label(["recipes/a/seed-1", "recipes/a/seed-2", "recipes/a/seed-3"]) == "recipes/a (3 seeds)"
    assert group_label(["a/seed-1", "b/seed-2"]) == "a/seed-1, b/seed-2"  # two folders: both named
    assert group_label(["x"]) == "x"
    assert group_label(["r1", "r2", "r3", "r4"]) == "r1 +3"


def _crowded_groups(n_groups: int):
    """Groups as a study makes them: several recipes of one trainable count, a column of close accuracies."""
    from types import SimpleNamespace

    return [SimpleNamespace(runs=[SimpleNamespace(summary={"trainable_params": 1000 + 10 * (i % 4), "budget": 2000})],
                            mean=0.8 + (i * 7919 % n_groups) / n_groups / 10, std=0.01) for i in range(n_groups)]


def _drawn_labels(monkeypatch) -> dict:
    """Filled, when the accuracy picture is saved, with its names (annotation, box of its words on the canvas), the
    axes' box and the data-to-canvas transform."""
    from matplotlib.text import Text

    from lorabudget.tools.report import figures as report

    drawn = {"labels": []}
    real_save = report.save_figure

    def save(fig, path):
        renderer, ax = fig.canvas.get_renderer(), fig.axes[0]
        for t in ax.texts:
            if t.get_text():
                t.update_positions(renderer)
                drawn["labels"].append((t, Text.get_window_extent(t, renderer)))
        drawn["frame"], drawn["to_px"] = ax.get_window_extent(renderer), ax.transData.frozen()
        return real_save(fig, path)

    monkeypatch.setattr(report, "save_figure", save)
    return drawn


@pytest.mark.parametrize(("n_groups", "named"), [(15, 15), (16, 10), (40, 10)])
def test_accuracy_vs_params_names_every_point_or_the_ten_best(tmp_path, monkeypatch, n_groups, named):
    """Past 15 groups, labels on every point would overlap into a smudge: only the 10 best are named."""
    from lorabudget.tools.report import figures as report

    drawn = _drawn_labels(monkeypatch)
    groups = _crowded_groups(n_groups)
    names = [f"g{i}" for i in range(n_groups)]
    assert report.plot_accuracy_vs_params(groups, names, tmp_path / "a.png").is_file()
    best = sorted(range(n_groups), key=lambda i: -groups[i].mean)[:named]
    labels = [t.get_text() for t, _ in drawn["labels"]]
    assert sorted(labels) == sorted(f"g{i}" for i in best)


@pytest.mark.parametrize("n_groups", [6, 12])
def test_accuracy_vs_params_labels_cover_no_name_point_or_line(tmp_path, monkeypatch, n_groups):
    """Recipes of one trainable count stack in a column, and a neighbour sits where a name would go: the names are
    moved apart, each tied to its point by a line when it left its row, and none covers another name, another
    point, or another name's line, or leaves the axes."""
    from types import SimpleNamespace

    from matplotlib.transforms import Bbox

    from lorabudget.tools.report import figures as report

    def group(params, mean):
        return SimpleNamespace(runs=[SimpleNamespace(summary={"trainable_params": params, "budget": 2000})],
                               mean=mean, std=0.005)

    # a column of close accuracies, a neighbour just right of its top, and one recipe far off that sets the scale
    groups = ([group(1000, 0.90 + 0.001 * i) for i in range(n_groups - 2)]
              + [group(1040, 0.90 + 0.001 * (n_groups - 3)), group(1500, 0.7)])
    names = [f"recipe-with-a-long-name-{i} (3 seeds)" for i in range(n_groups)]
    drawn = _drawn_labels(monkeypatch)
    report.plot_accuracy_vs_params(groups, names, tmp_path / "a.png")
    labels, frame, to_px = drawn["labels"], drawn["frame"], drawn["to_px"]
    assert len(labels) == n_groups
    points = {t.get_text(): tuple(to_px.transform(t.xy)) for t, _ in labels}
    lines = [(points[t.get_text()], ((b.x0 if t.get_horizontalalignment() == "left" else b.x1), (b.y0 + b.y1) / 2))
             for t, b in labels if t.xyann[1] != 0]
    for i, (text, box) in enumerate(labels):
        name = text.get_text()
        assert frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1), name
        assert not any(box.overlaps(other) for _, other in labels[i + 1:]), name
        assert not any(box.overlaps(Bbox.from_bounds(at[0] - 2, at[1] - 2, 4, 4))  # a marker's middle
                       for other, at in points.items() if other != name), name
        assert not any(box.contains(a[0] + (b[0] - a[0]) * k / 20, a[1] + (b[1] - a[1]) * k / 20)
                       for a, b in lines if a != points[name] for k in range(1, 20)), name
    moved = [t for t, _ in labels if t.xyann[1] != 0]
    assert moved and all(t.arrow_patch is not None for t in moved)  # the column forces moves, each with its line
