"""`lorabudget report`, its sections and the whole document: a Markdown and a self-contained HTML report from
run directories and Optuna studies.

Everything comes from what training left behind (config.yaml, summary.json, metrics.jsonl) and from the
study's storage; nothing is retrained. What differs between runs is found by diffing their configs, so the
report needs no description of the experiment: the hyperparameters that vary get one accuracy-curve figure
each, and runs whose configs differ only by `seed` are one leaderboard row with mean and standard deviation.

    OUT/report.md        tables + figures/*.png beside it
    OUT/report.html      the same, pictures embedded as base64 data URIs: one file that opens offline
    OUT/figures/         the PNGs
    OUT/best-run/        the best run re-scored on its validation split (metrics.json, confusion_matrix.png)
"""

from __future__ import annotations

import time
from pathlib import Path

from ...errors import LorabudgetError, RunDirError
from ...rundir import atomic_write_text
from .collect import Collection, Run, collect
from .document import Figure, Heading, Table, Text, render_html, render_markdown
from .figures import plot_accuracy_vs_params, plot_curves_by, plot_study, slug
from .groups import Group, describe, fmt_seconds, group_by_seed, short_keys, varied_keys


def group_label(names: list[str]) -> str:
    """A short name for runs that differ only by seed, for labels on a plot: their shared folder when they sit in
    one ('study/recipe/seed-1', 'study/recipe/seed-2' -> 'study/recipe (2 seeds)'), else the names themselves."""
    if len(names) > 1 and all("/" in n for n in names):
        parents = {n.rsplit("/", 1)[0] for n in names}
        if len(parents) == 1:
            return f"{parents.pop()} ({len(names)} seeds)"
    return ", ".join(names) if len(names) <= 3 else f"{names[0]} +{len(names) - 1}"


def leaderboard(groups: list[Group], keys: list[str]) -> tuple[Table, list[str]]:
    short = short_keys(keys)
    rows, names = [], []
    for i, g in enumerate(groups, 1):
        first = g.runs[0]
        name = ", ".join(r.name for r in g.runs)
        if len(g.runs) > 1:
            name += " (seeds " + ", ".join(str(r.seed) for r in g.runs) + ")"
            acc = f"{g.mean:.4f} ± {g.std:.4f} (n={len(g.runs)})"
        else:
            acc = f"{g.mean:.4f}"
        names.append(group_label([r.name for r in g.runs]))
        notes = sorted({r.note for r in g.runs if r.note})
        trainable = f"{first.summary.get('trainable_params', 0):,}"
        rows.append([str(i), name, describe(first, keys, short), trainable, acc, f"{g.mean_of('steps'):.0f}",
                     fmt_seconds(g.mean_of("train_seconds")), "; ".join(notes)])
    header = ["#", "run(s)", "config (what varies)", "trainable", "best val. accuracy", "steps", "train time",
              "note"]
    return Table(header, rows, numeric=(0, 3, 4, 5, 6)), names


def best_run_section(best: Run, out: Path) -> list:
    """The best run re-scored on its own validation split: confusion matrix and per-class scores."""
    from ...serve.evaluate import evaluate

    blocks: list = [Heading(f"Best run: {best.name}")]
    try:
        scores, folder = evaluate(str(best.path), None, str(out / "best-run"), progress=False)
    except LorabudgetError as exc:  # its data is not on this machine, say
        return blocks + [Text(f"Could not re-score {best.path} on its validation split: {exc}")]
    blocks.append(Text(f"{best.path}: validation accuracy {scores['accuracy']:.4f}, macro-F1 "
                       f"{scores['macro_f1']:.4f} on {scores['rows']:,} rows (re-scored from the run's "
                       "adapter)."))
    rows = [[name, f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}", f"{s['support']:,}"]
            for name, s in scores["per_class"].items()]
    blocks.append(Table(["class", "precision", "recall", "F1", "support"], rows, numeric=(1, 2, 3, 4)))
    blocks.append(Figure(folder / "confusion_matrix.png",
                         f"Confusion matrix of {best.name} (validation split)"))
    return blocks


def study_section(study, figures: Path) -> list:
    from collections import Counter

    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    skipped = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("skipped") == "over budget")
    blocks: list = [Heading(f"Study {study.study_name}"),
                    Text(", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) +
                         f"; {skipped} of the failed were over budget and never trained.")]
    complete = counts.get("COMPLETE", 0)
    if complete < 2:
        return blocks + [Text("Parameter importances and the parallel-coordinate plot need two complete "
                              "trials.")]
    name = slug(study.study_name)
    for kind, caption in (("importances", "Parameter importances (Optuna, complete trials)"),
                          ("parallel", "Parallel coordinates of the complete trials (Optuna)")):
        try:
            blocks.append(Figure(plot_study(study, kind, figures / f"study-{name}-{kind}.png"), caption))
        except (ValueError, RuntimeError) as exc:  # e.g. no parameter varied among the complete trials
            blocks.append(Text(f"{caption}: not drawn ({exc})."))
    return blocks


def build(col: Collection, out: Path, progress: bool = True) -> list:
    from tqdm.auto import tqdm

    runs = sorted(col.runs.values(), key=lambda r: r.name)
    figures = out / "figures"
    blocks: list = [Heading("lorabudget report", 1),
                    Text(f"{len(runs)} finished runs, {len(col.left_out)} left out; generated "
                         f"{time.strftime('%Y-%m-%d %H:%M')}. Best validation accuracy is the best score "
                         "seen on the run's validation split; train time excludes evaluation.")]
    blocks += [Text(n) for n in col.notes]
    if not runs:
        raise RunDirError("no finished run to report" + (f" (left out: {', '.join(col.left_out)})"
                                                         if col.left_out else ""))
    keys = varied_keys(runs)
    groups = group_by_seed(runs)
    table, names = leaderboard(groups, keys)
    blocks += [Heading("Leaderboard"), table]
    if any(len(g.runs) > 1 for g in groups):
        blocks.append(Text("Rows with several runs differ only by seed: mean ± standard deviation."))
    if col.left_out:
        blocks += [Heading("Left out"),
                   Table(["run or trial", "why"], [[k, v] for k, v in col.left_out.items()])]

    short = short_keys(keys)
    tasks = [(k, short[k]) for k in keys] or [(None, "run")]
    bar = tqdm(total=len(tasks) + 2 + len(col.studies), desc="report", unit="figure", disable=not progress)
    blocks.append(Heading("Validation accuracy during training"))
    for key, label in tasks:
        path = plot_curves_by(runs, key, label, figures / f"curves-{slug(key or 'runs')}.png")
        blocks.append(Figure(path, f"Validation accuracy against step, coloured by {key or 'run'}"))
        bar.update()
    blocks += [Heading("Accuracy against trainable parameters"),
               Figure(plot_accuracy_vs_params(groups, names, figures / "accuracy-vs-params.png"),
                      "Best validation accuracy against trainable parameters")]
    bar.update()
    best = max(runs, key=lambda r: r.best_accuracy)
    blocks += best_run_section(best, out)
    bar.update()
    for study in col.studies:
        blocks += study_section(study, figures)
        bar.update()
    bar.close()
    return blocks


def write_report(inputs: list[str], out: str | Path, study_name: str | None = None,
                 progress: bool = True) -> tuple[Path, Path]:
    """Write OUT/report.md and OUT/report.html; returns their paths."""
    out = Path(out)
    col = collect(inputs, study_name)
    blocks = build(col, out, progress=progress)
    md, page = out / "report.md", out / "report.html"
    atomic_write_text(md, render_markdown(blocks, out))
    atomic_write_text(page, render_html(blocks, f"lorabudget report: {', '.join(map(str, inputs))}"))
    _remove_stale_figures(out, blocks)
    return md, page


def _remove_stale_figures(out: Path, blocks: list) -> None:
    """A figure from an earlier report of other runs would linger beside report.md: remove what it no longer
    shows (only PNGs in the report's own figures folder)."""
    used = {b.path.resolve() for b in blocks if isinstance(b, Figure)}
    folder = out / "figures"
    for png in folder.glob("*.png") if folder.is_dir() else []:
        if png.resolve() not in used:
            png.unlink()

