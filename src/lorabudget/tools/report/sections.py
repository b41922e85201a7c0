"""`lorabudget report`, its sections and the whole document: a Markdown and a self-contained HTML report from
run directories and Optuna studies.

Everything comes from what training left behind (config.yaml, summary.json, metrics.jsonl) and from the
study's storage; nothing is retrained. What differs between runs is found by diffing their configs, so the
report needs no description of the experiment: the hyperparameters that vary colour the accuracy curves (one
figure per way they split the runs), and runs whose configs differ only by `seed` are one leaderboard row with
mean and standard deviation. Each run has one validation accuracy, training's score of the adapter it saved; a
figure is drawn only where it shows something the tables do not, and the page says why one is left out.

    OUT/report.md        tables + figures/*.png beside it
    OUT/report.html      the same, pictures embedded as base64 data URIs: one file that opens offline
    OUT/figures/         the PNGs
    OUT/best-run/        the best run re-scored on its validation split (metrics.json, confusion_matrix.png)
"""

from __future__ import annotations

import time
from pathlib import Path

from ...errors import RunDirError
from ...rundir import atomic_write_text
from .best_run import best_run_section
from .collect import Collection, Run, collect
from .document import Figure, Heading, Table, Text, render_html, render_markdown
from .figures import plot_accuracy_vs_params, plot_curves_by, plot_importances, plot_parallel, slug
from .groups import Group, colourings, describe, fmt_seconds, group_by_seed, varied_keys
from .parallel import parallel_data
from .shift_section import evaluation_sets_section, shift_section


def group_label(names: list[str]) -> str:
    """A short name for runs that differ only by seed, for labels on a plot: their shared folder when they sit in
    one ('study/recipe/seed-1', 'study/recipe/seed-2' -> 'study/recipe (2 seeds)'), else the names themselves."""
    if len(names) > 1 and all("/" in n for n in names):
        parents = {n.rsplit("/", 1)[0] for n in names}
        if len(parents) == 1:
            return f"{parents.pop()} ({len(names)} seeds)"
    return ", ".join(names) if len(names) <= 3 else f"{names[0]} +{len(names) - 1}"


MIN_TRIALS_IMPORTANCES = 10  # Optuna's importances fit a model to the complete trials: from fewer, it fits noise
MIN_TRIALS_PARALLEL = 5  # fewer lines than this the leaderboard shows better, settings and score side by side


def leaderboard(groups: list[Group], keys: list[str]) -> tuple[Table, list[str]]:
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
        rows.append([str(i), name, describe(first, keys), trainable, acc, f"{g.mean_of('steps'):.0f}",
                     fmt_seconds(g.mean_of("train_seconds")), "; ".join(notes)])
    header = ["#", "run(s)", "config (what varies)", "trainable", "val. accuracy", "steps", "train time", "note"]
    return Table(header, rows, numeric=(0, 3, 4, 5, 6)), names


def curves_section(runs: list[Run], keys: list[str], figures: Path) -> list:
    """One figure per way of colouring the runs (`groups.colourings`); none where no run has a curve."""
    blocks: list = [Heading("Validation accuracy during training")]
    if all(r.evaluations <= 1 for r in runs):
        steps = sorted({s for r in runs for s in r.curve[0]})
        at = f" (at step {', '.join(map(str, steps))})" if steps else ""
        return blocks + [Text(f"No curves: every run was evaluated once{at}, so each curve would be a single "
                              "point; the leaderboard lists those scores. Set eval.every_steps to see curves.")]
    dots = " A run evaluated once is a dot." if any(r.evaluations == 1 for r in runs) else ""
    for group in colourings(runs, keys) or [[]]:
        name = slug(group[0] + (f"-and-{len(group) - 1}-more" if len(group) > 1 else "")) if group else "runs"
        if len(group) > 1:
            caption = (f"Validation accuracy against step, coloured by {', '.join(group)}: in these runs they vary "
                       "together, so one figure shows them all.")
        else:
            caption = f"Validation accuracy against step, coloured by {group[0] if group else 'run'}."
        blocks.append(Figure(plot_curves_by(runs, group, figures / f"curves-{name}.png"), caption + dots))
    return blocks


def study_section(study, figures: Path) -> list:
    from collections import Counter

    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    skipped = sum(1 for t in trials if t.user_attrs.get("skipped") == "over budget")
    text = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    if counts.get("FAIL"):
        text += (f"; {skipped} of the failed {'was' if skipped == 1 else 'were'} over budget and never trained"
                 if skipped else "")
    blocks: list = [Heading(f"Study {study.study_name}"), Text(text + ".")]
    complete = counts.get("COMPLETE", 0)
    name = slug(study.study_name)
    if complete >= MIN_TRIALS_IMPORTANCES:
        caption = f"Parameter importances (Optuna's fANOVA over the {complete} complete trials)"
        try:
            blocks.append(Figure(plot_importances(study, complete, figures / f"study-{name}-importances.png"), caption))
        except (ValueError, RuntimeError) as exc:  # e.g. no parameter varied among the complete trials
            blocks.append(Text(f"{caption}: not drawn ({exc})."))
    else:
        blocks.append(Text(f"Parameter importances are left out: Optuna estimates them by fitting a model to the "
                           f"complete trials, and {_trials(complete)} (fewer than {MIN_TRIALS_IMPORTANCES}) are "
                           "too few for the estimate to say anything about the parameters."))
    if complete < MIN_TRIALS_PARALLEL:
        return blocks + [Text(f"The parallel-coordinate plot is left out: {_trials(complete)} would be as many "
                              "lines, which the leaderboard above shows better, settings and score side by side.")]
    data = parallel_data(study)
    if len(data.axes) < 2:
        return blocks + [Text("The parallel-coordinate plot is left out: no parameter varied among the complete "
                              "trials.")]
    caption = f"Parallel coordinates of the {complete} complete trials, coloured by their {data.axes[0].name}"
    if data.constant:
        caption += "; the same in all of them: " + ", ".join(f"{k}={v}" for k, v in data.constant.items())
    keys = [f"{a.name}: {'; '.join(a.key)}" for a in data.axes if a.key]
    caption += "." + (" Values written as letters: " + " | ".join(keys) + "." if keys else "")
    path = plot_parallel(data.axes, data.objective, data.higher_is_better, figures / f"study-{name}-parallel.png")
    return blocks + [Figure(path, caption)]


def _trials(n: int) -> str:
    return f"{n} complete trial" + ("" if n == 1 else "s")


def build(col: Collection, out: Path, progress: bool = True) -> list:
    from tqdm.auto import tqdm

    runs = sorted(col.runs.values(), key=lambda r: r.name)
    figures = out / "figures"
    blocks: list = [Heading("lorabudget report", 1),
                    Text(f"{len(runs)} finished runs, {len(col.left_out)} left out; generated "
                         f"{time.strftime('%Y-%m-%d %H:%M')}. A run's validation accuracy is that of the adapter it "
                         "saved (its best evaluation by eval.metric), as training measured it; train time excludes "
                         "evaluation.")]
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

    bar = tqdm(total=3 + len(col.studies), desc="report", unit="section", disable=not progress)
    blocks += curves_section(runs, keys, figures)
    bar.update()
    blocks += [Heading("Accuracy against trainable parameters"),
               Figure(plot_accuracy_vs_params(groups, names, figures / "accuracy-vs-params.png"),
                      "Validation accuracy against trainable parameters")]
    bar.update()
    blocks += evaluation_sets_section(runs) + shift_section(runs, figures)
    best = max(runs, key=lambda r: r.accuracy)
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

