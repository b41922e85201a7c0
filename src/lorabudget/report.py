"""`lorabudget report`: a Markdown and a self-contained HTML report from run directories and Optuna studies.

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

import base64
import html
import json
import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import LorabudgetError, RunDirError
from .rundir import RunDir, atomic_write_text

# Keys that say where a run went and how it logged, not what it learnt: never a difference worth a figure.
IGNORED = ("output_dir", "logging.")
SEED = "seed"
MAX_SEARCH_DEPTH = 3  # folders searched below an input for run directories


# ---- reading runs and studies ------------------------------------------------------------------------------

def flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _ignored(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in IGNORED)


def _same(value: Any) -> str:
    """A comparable form of a config value (lists and tuples alike)."""
    return json.dumps(value, sort_keys=True)


@dataclass
class Run:
    path: Path
    name: str
    config: dict[str, Any]  # flattened config.yaml
    summary: dict
    metrics: list[dict]
    trial: int | None = None  # Optuna trial number, for runs of a study

    @property
    def curve(self) -> tuple[list[int], list[float]]:
        val = [r for r in self.metrics if "val_accuracy" in r]
        return [r["step"] for r in val], [r["val_accuracy"] for r in val]

    @property
    def best_accuracy(self) -> float:
        """The best validation accuracy seen (with eval.metric accuracy, the score of the shipped adapter)."""
        _, acc = self.curve
        return max(acc) if acc else float(self.summary.get("best", {}).get("accuracy", float("nan")))

    @property
    def note(self) -> str:
        stopped = self.summary.get("stopped_by")
        if stopped == "callback":
            return f"pruned at step {self.summary.get('steps')}"
        return "stopped early" if stopped else ""


@dataclass
class Collection:
    runs: dict[Path, Run] = field(default_factory=dict)  # by resolved path: an input given twice counts once
    left_out: dict[str, str] = field(default_factory=dict)  # name -> why
    studies: list = field(default_factory=list)  # optuna Study objects
    notes: list[str] = field(default_factory=list)

    def add_run_dir(self, path: Path, trial: int | None = None) -> None:
        run = RunDir(path)
        key = path.resolve()
        if key in self.runs:
            return
        if not run.is_finished():
            status = run.status() or {}
            why = status.get("reason") or f"state {status.get('state', 'unknown')}"
            self.left_out[str(path)] = f"not finished ({why})"
            return
        summary = run.summary()
        config = with_defaults(yaml.safe_load(run.config.read_text(encoding="utf-8")) or {},
                               summary.get("encoder_layers"), summary.get("precision"))
        self.runs[key] = Run(path, path.name, flatten(config), summary, run.read_metrics(), trial)


def with_defaults(raw: dict, n_layers: int | None = None, precision: str | None = None) -> dict:
    """A run's config with every field present: a run written before a field existed trained as if it held the
    field's default, so it must not look different from a newer run that writes the default out. Fields without
    effect (epochs under max_steps, say) are blanked, so a changed default there does not split a seed group, and
    with the model's layer count the adapted layers are written one way, with the precision the run resolved
    `model.precision` is what it trained in (`auto` is bf16 on one machine, fp32 on another). A config this
    version cannot read is compared as written."""
    from .config import Config, effective_settings

    try:
        return effective_settings(Config.model_validate(raw), n_layers, precision)
    except ValueError:
        return raw


def _find_run_dirs(folder: Path, depth: int = 0) -> list[Path]:
    """Run directories (and sweep folders) under `folder`; a run directory's insides are not searched."""
    if (folder / "config.yaml").is_file() or (folder / "sweep.yaml").is_file():
        return [folder]
    if depth >= MAX_SEARCH_DEPTH:
        return []
    found = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found.extend(_find_run_dirs(child, depth + 1))
    return found


def load_study(storage: str, study_name: str | None = None):
    import optuna
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    from .sweep import quiet_optuna, safe_url, with_driver

    quiet_optuna()
    url = with_driver(storage)
    try:
        database = make_url(url).database
    except sqlalchemy.exc.ArgumentError:
        raise LorabudgetError(f"{storage!r} is not a database URL") from None
    if url.startswith("sqlite") and database and not Path(database).is_file():
        # SQLite would create an empty database for a mistyped path; a report only reads
        raise LorabudgetError(f"no study database at {database}")
    try:
        names = optuna.get_all_study_names(url)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:  # unreachable server, missing driver
        raise LorabudgetError(f"cannot read studies from {safe_url(storage)}: {exc}") from None
    if study_name is None:
        if len(names) != 1:
            raise LorabudgetError(f"{safe_url(storage)} holds {len(names)} studies "
                                  f"({', '.join(names) or 'none'}); name one with --study")
        study_name = names[0]
    if study_name not in names:
        raise LorabudgetError(f"{safe_url(storage)} holds no study {study_name!r} (it has: "
                              f"{', '.join(names)})")
    return optuna.load_study(study_name=study_name, storage=url)


def _why_not(trial) -> str | None:
    """Why a trial has no run to report; None for COMPLETE and PRUNED ones."""
    state, a = trial.state.name, trial.user_attrs
    if state in ("COMPLETE", "PRUNED"):
        return None
    if state == "FAIL" and a.get("skipped") == "over budget":
        return f"never trained: over budget ({a.get('trainable_params', 0):,} trainable)"
    if state == "FAIL" and a.get("skipped"):
        return f"never trained: {a['skipped']}"
    if state == "FAIL":
        return a.get("error") or ("interrupted" if a.get("interrupted")
                                  else "failed: its worker stopped (killed?)")
    return state.lower()


def add_study(col: Collection, study, sweep_dir: Path | None = None) -> None:
    col.studies.append(study)
    retried = {}
    for t in study.get_trials(deepcopy=False):
        for n in t.system_attrs.get("retry_history", []):
            retried[n] = t.number
    for t in study.get_trials(deepcopy=False):
        why = _why_not(t)
        run_dir = t.user_attrs.get("run_dir")
        if why is None:
            path = Path(run_dir) if run_dir else None
            if path is not None and not path.is_dir() and sweep_dir is not None:  # the sweep folder was moved
                path = sweep_dir / "trials" / Path(run_dir).name
            if path is None or not path.is_dir():
                col.left_out[f"trial {t.number}"] = f"run dir not on this machine ({run_dir})"
            else:
                col.add_run_dir(path, t.number)
        elif t.state.name != "WAITING":
            if t.number in retried:
                why += f"; retried as trial {retried[t.number]}"
            col.left_out[f"trial {t.number}" + (f" ({Path(run_dir).name})" if run_dir else "")] = why


def collect(inputs: list[str], study_name: str | None = None) -> Collection:
    col = Collection()
    for item in inputs:
        if "://" in item:
            add_study(col, load_study(item, study_name))
            continue
        path = Path(item)
        if not path.is_dir():
            raise RunDirError(f"{item}: no such folder (give run directories, folders of them, sweep "
                              "folders, or a study's storage URL)")
        found = _find_run_dirs(path)
        if not found:
            raise RunDirError(f"{item} holds no run directory (config.yaml) and no sweep (sweep.yaml)")
        for folder in found:
            if (folder / "sweep.yaml").is_file():
                _add_sweep(col, folder, study_name)
            else:
                col.add_run_dir(folder)
    # two runs named alike (runs/a/x, runs/b/x): name them by their parent too
    names = [r.name for r in col.runs.values()]
    for r in col.runs.values():
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.name}/{r.path.name}"
    return col


def _add_sweep(col: Collection, folder: Path, study_name: str | None) -> None:
    info = yaml.safe_load((folder / "sweep.yaml").read_text(encoding="utf-8")) or {}
    storage = str(info.get("storage", ""))
    if "***" in storage:  # the URL's password is not on disk: read the runs, and say how to get the rest
        col.notes.append(f"{folder}: the study's storage needs a password; pass its URL to include the study")
    else:
        try:
            add_study(col, load_study(storage, study_name or info.get("study")), folder)
            return
        except LorabudgetError as exc:
            col.notes.append(f"{folder}: {exc}; reporting its run directories only")
    trials = folder / "trials"
    for run in sorted(trials.iterdir()) if trials.is_dir() else []:
        col.add_run_dir(run)


# ---- grouping and diffing ----------------------------------------------------------------------------------

def varied_keys(runs: list[Run]) -> list[str]:
    """Config fields whose value differs between runs, seed excluded (seeds make groups, not figures)."""
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if not _ignored(k) and k != SEED
            and len({_same(r.config.get(k)) for r in runs}) > 1]


@dataclass
class Group:
    runs: list[Run]  # configs equal but for the seed

    @property
    def accuracies(self) -> list[float]:
        return [r.best_accuracy for r in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.runs) > 1 else 0.0

    def mean_of(self, key: str) -> float:
        return statistics.fmean(float(r.summary.get(key, 0)) for r in self.runs)


def group_by_seed(runs: list[Run]) -> list[Group]:
    """Runs whose configs match in every field but the seed (and where they wrote) are repeats of one
    experiment: one leaderboard row, best first."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        key = _same({k: v for k, v in r.config.items() if not _ignored(k) and k != SEED})
        groups.setdefault(key, []).append(r)
    out = [Group(sorted(g, key=lambda r: (r.config.get(SEED, 0), r.name))) for g in groups.values()]
    return sorted(out, key=lambda g: (-g.mean, g.runs[0].summary.get("trainable_params", 0), g.runs[0].name))


def short_keys(keys: list[str]) -> dict[str, str]:
    """'optim.lr' -> 'lr' where the last part is unambiguous among `keys`."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def describe(run: Run, keys: list[str], short: dict[str, str]) -> str:
    return ", ".join(f"{short[k]}={fmt_value(run.config.get(k))}" for k in keys) or "(one config)"


def fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{int(s // 60)} min {int(s % 60):02d} s"


# ---- figures -----------------------------------------------------------------------------------------------

def _plt():
    from .plots import plt  # the package's headless matplotlib (Agg)

    return plt


def _save(fig, path: Path) -> Path:
    from .plots import _save as save  # atomic: a kill leaves the old picture or the new one

    return save(fig, path)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _value_order(text: str):
    """Numbers in numeric order, then everything else by its text."""
    value = json.loads(text)
    return (0, value, "") if _numeric([value]) else (1, 0, text)


def plot_curves_by(runs: list[Run], key: str | None, label: str, path: Path) -> Path:
    """Validation accuracy against step, one line per run, coloured by the value of `key` (None: by run)."""
    plt = _plt()
    import matplotlib as mpl

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    values = [r.config.get(key) if key else r.name for r in runs]
    distinct = sorted({_same(v) for v in values}, key=_value_order)
    continuous = _numeric([json.loads(s) for s in distinct]) and len(distinct) > 6
    if continuous:  # many numbers (a sampled learning rate): a colour scale, log where the range is wide
        nums = [float(json.loads(s)) for s in distinct]
        wide = min(nums) > 0 and max(nums) / min(nums) > 20
        norm = (mpl.colors.LogNorm if wide else mpl.colors.Normalize)(min(nums), max(nums))
        cmap = mpl.colormaps["viridis"]
    palette = mpl.colormaps["tab10"]
    labelled = set()
    # runs drawn in value order, so that the legend lists the values in order
    order = sorted(range(len(runs)), key=lambda i: (distinct.index(_same(values[i])), runs[i].name))
    for run, value in ((runs[i], values[i]) for i in order):
        steps, acc = run.curve
        s = _same(value)
        color = cmap(norm(float(value))) if continuous else palette(distinct.index(s) % 10)
        text = None if continuous or s in labelled else f"{label}={fmt_value(value)}" if key else run.name
        labelled.add(s)
        ax.plot(steps, acc, "o-", color=color, lw=1.4, ms=3, alpha=0.85, label=text)
    if continuous:
        fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label)
    else:
        ax.legend(fontsize=8, loc="lower right", ncol=1 + len(distinct) // 8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"Validation accuracy by {label}" if key else "Validation accuracy")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _segment_hits(a: tuple[float, float], b: tuple[float, float], box) -> bool:
    """Whether the straight line from a to b (canvas pixels) passes through `box`, tested at 32 points along it:
    fine enough for 7-point text and lines a few dozen points long."""
    return any(box.contains(a[0] + (b[0] - a[0]) * t / 32, a[1] + (b[1] - a[1]) * t / 32) for t in range(1, 32))


def _place_labels(ax, named: list[tuple[float, float, str]], marks: list[tuple[float, float, float]]) -> list:
    """Name points so that no name covers another name, a marker or its error bar, the legend, or a line drawn to
    another name, and none leaves the axes. Each name, in the order given (the most important first), takes the first
    free place among a few around its point (right, then left, level with it, then stepping up and down), or where
    none is free the one that covers least. A name moved
    off its row gets a thin line to its point, which must not cross another name (it may cross markers: in a column
    of close points it has to). `marks` are every point drawn, named or not: (x, y, error bar half-height).
    Written here because matplotlib does not place labels, and adjustText's force layout moves every label and is
    not repeatable across versions; a handful of candidate boxes is enough for a study's dozen names."""
    from matplotlib import rcParams
    from matplotlib.text import Text as MplText  # report.Text is a block of the report
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    to_px = ax.transData.transform
    steps = [0] + [sign * 9 * k for k in range(1, 11) for sign in (1, -1)]  # up to 90 points off the row
    candidates = [(dx, dy, ha) for dy in steps for dx, ha in ((6, "left"), (-6, "right"))]
    half = renderer.points_to_pixels(rcParams["lines.markersize"] / 2 + 0.5)  # a marker's half width, in pixels
    mark_boxes = []  # (the point's pixel position, the box of its marker and error bar)
    for x, y, err in marks:
        (px, py), (_, low), (_, high) = to_px([(x, y), (x, y - err), (x, y + err)])
        mark_boxes.append(((px, py), Bbox([[px - half, min(py - half, low)], [px + half, max(py + half, high)]])))
    fixed = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
    placed, boxes, lines = [], [], []
    for x, y, name in named:
        anchor = tuple(to_px((x, y)))
        others = [b for at, b in mark_boxes if math.dist(at, anchor) > 0.5]  # every marker but its own
        best = None
        for dx, dy, ha in candidates:
            relpos = (0, 0.5) if ha == "left" else (1, 0.5)  # the line meets the name at its near end
            text = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7, ha=ha,
                               va="center", arrowprops={**_LEADER, "relpos": relpos} if dy else None)
            text.update_positions(renderer)  # the offset is turned into a place on the canvas here
            box = MplText.get_window_extent(text, renderer).padded(1.5)  # the words alone, not the line
            end = (box.x0 if ha == "left" else box.x1, (box.y0 + box.y1) / 2) if dy else anchor
            # what this place would cover; covering a name is worse than covering a marker
            clash = (5 * (not (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)))
                     + 3 * sum(box.overlaps(b) for b in boxes + fixed) + sum(box.overlaps(b) for b in others)
                     + 2 * sum(_segment_hits(a, b, box) for a, b in lines)
                     + 2 * sum(_segment_hits(anchor, end, b) for b in boxes + fixed) * bool(dy))
            if best is None or clash < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clash, text, box, end)
            else:
                text.remove()
            if clash == 0:
                break
        # crowded beyond every candidate: the place that covers least, so the names stay as readable as they can
        _, text, box, end = best
        placed.append(text)
        boxes.append(box)
        if end != anchor:
            lines.append((anchor, end))
    return placed


_LEADER = {"arrowstyle": "-", "color": "0.6", "lw": 0.6, "shrinkA": 0, "shrinkB": 3}


def plot_accuracy_vs_params(groups: list[Group], names: list[str], path: Path) -> Path:
    plt = _plt()
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(9, 4.8))
    x = [g.runs[0].summary.get("trainable_params", 0) for g in groups]
    ax.errorbar(x, [g.mean for g in groups], yerr=[g.std for g in groups], fmt="o", capsize=3,
                color="tab:blue")
    budgets = {r.summary.get("budget") for g in groups for r in g.runs}
    title = "Accuracy against trainable parameters (mean ± std over seeds)"
    if len(budgets) == 1 and None not in budgets:
        budget = budgets.pop()
        if budget <= 2.5 * max(x):  # drawn where it does not squeeze every run into a corner
            ax.axvline(budget, ls="--", color="tab:red", lw=1, label=f"budget {budget:,}")
            ax.legend(fontsize=8, loc="lower right")
        else:
            title += f"\nbudget {budget:,}, off the scale: every run uses at most {max(x) / budget:.1%} of it"
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("best validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # room for the names: the x range widened by a fifth each side (not below 0 parameters), the y range by a tenth
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    left = x0 - 0.2 * (x1 - x0)
    ax.set_xlim(max(left, 0) if x0 >= 0 else left, x1 + 0.2 * (x1 - x0))
    ax.set_ylim(y0 - 0.1 * (y1 - y0), y1 + 0.1 * (y1 - y0))
    # every point named up to 15 groups; beyond that only the 10 best, so the leaders stay readable. The best are
    # placed first, so they get the positions next to their points. A group without a score is drawn nowhere.
    scored = [i for i, g in enumerate(groups) if math.isfinite(g.mean)]
    order = sorted(scored, key=lambda i: -groups[i].mean)[: len(scored) if len(scored) <= 15 else 10]
    _place_labels(ax, [(x[i], groups[i].mean, names[i]) for i in order],
                  [(x[i], groups[i].mean, groups[i].std if math.isfinite(groups[i].std) else 0) for i in scored])
    return _save(fig, path)


def plot_study(study, kind: str, path: Path) -> Path:
    """Optuna's own matplotlib figures: parameter importances or the parallel-coordinate plot."""
    import matplotlib as mpl
    from optuna.visualization import matplotlib as ovm

    # Optuna switches matplotlib to its ggplot style for good; rc_context puts the package's style back after.
    with warnings.catch_warnings(), mpl.rc_context():
        warnings.simplefilter("ignore")  # both are 'experimental' in Optuna
        plot = ovm.plot_param_importances if kind == "importances" else ovm.plot_parallel_coordinate
        ax = plot(study)
        fig = ax.figure
        fig.set_size_inches(*((9, 4.8) if kind == "importances" else (12, 5.2)))  # room for the axis labels
        return _save(fig, path)


# ---- the document ------------------------------------------------------------------------------------------

@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: tuple[int, ...] = ()  # right-aligned columns


@dataclass
class Figure:
    path: Path
    caption: str


def render_markdown(blocks: list, out: Path) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Text):
            lines += [b.text, ""]
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(cell(h) for h in b.header) + " |")
            rule = ("---:" if i in b.numeric else "---" for i in range(len(b.header)))
            lines.append("|" + "|".join(rule) + "|")
            lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif isinstance(b, Figure):
            lines += [f"![{b.caption}]({b.path.relative_to(out).as_posix()})", "", f"*{b.caption}*", ""]
    return "\n".join(lines)


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f3f5f7; text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
p.note { color: #555; }
"""


def render_html(blocks: list, title: str) -> str:
    e = html.escape
    parts = [(f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
              f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style>"
              "</head><body>")]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            parts.append(f"<p class=\"note\">{e(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            num = ' class="num"'
            body = "".join("<tr>" + "".join(f"<td{num if i in b.numeric else ''}>{e(str(c))}</td>"
                                            for i, c in enumerate(row)) + "</tr>" for row in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")  # embedded: the file opens offline
            parts.append(f"<figure><img alt=\"{e(b.caption)}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{e(b.caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ---- sections ----------------------------------------------------------------------------------------------

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
            name += " (seeds " + ", ".join(str(r.config.get(SEED)) for r in g.runs) + ")"
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
    from .evaluation import evaluate

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
    slug = _slug(study.study_name)
    for kind, caption in (("importances", "Parameter importances (Optuna, complete trials)"),
                          ("parallel", "Parallel coordinates of the complete trials (Optuna)")):
        try:
            blocks.append(Figure(plot_study(study, kind, figures / f"study-{slug}-{kind}.png"), caption))
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
        path = plot_curves_by(runs, key, label, figures / f"curves-{_slug(key or 'runs')}.png")
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
    for path in (md, page):  # atomic writes come out private (0600, mkstemp); a report is made to be shared
        path.chmod(0o666 & ~_umask())
    _remove_stale_figures(out, blocks)
    return md, page


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_figures(out: Path, blocks: list) -> None:
    """A figure from an earlier report of other runs would linger beside report.md: remove what it no longer
    shows (only PNGs in the report's own figures folder)."""
    used = {b.path.resolve() for b in blocks if isinstance(b, Figure)}
    folder = out / "figures"
    for png in folder.glob("*.png") if folder.is_dir() else []:
        if png.resolve() not in used:
            png.unlink()


__all__ = ["collect", "group_by_seed", "varied_keys", "write_report"]
