"""Scaling a trained adapter's update back towards the pretrained model (WiSE-FT's interpolation, #19).

    python benchmarks/wise.py RUN [RUN ...] --data NAME=FILE [--data NAME=FILE ...] [--scales 0 0.25 0.5 0.75 1]
                              [--json PATH]

WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022) averages the fine-tuned weights
with the pretrained ones and reports large gains under distribution shift at little cost in distribution. For a
LoRA adapter that average is the update scaled: W + s x (alpha / r) B A, s in [0, 1] (s scales the product once;
scaling A and B both would give s^2), LayerNorms trained in full interpolated alike. The head is kept as
trained. Nothing trains and nothing is added: each scale is the run loaded with `lorabudget.load(RUN,
adapter_scale=S)` (its LoRA layers scaled, then merged), and scored on every `--data` set (labelled; the first is
the in-distribution yardstick; `NAME=held_out` is each run's own validation split, so runs with different splits
can be scored in one call). A table of accuracy per scale and set is printed for each run and, with --json, kept.

On the course's target the labelled generated rows peak after one epoch while in-distribution accuracy keeps
rising (docs/shift.md): if a smaller update keeps what the early model had, s < 1 shows it here in minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HELD_OUT = "held_out"  # as in data.validation_source: the run's own validation split


def score_run(run: str, sets: dict[str, str], scales: list[float], match: dict | None = None) -> dict[str, dict]:
    """Accuracy on each labelled set (`held_out`: the run's own validation rows, re-derived and checked against
    the hash it recorded) at each scale: {scale: {set: accuracy}}. With `match` ({shares, rows, target}), also
    each set's accuracy with class shares matched as `predict --match-shares` does (serve.shares), fitted on
    the target's texts at that scale, under '<set>+shares'."""
    from lorabudget import load
    from lorabudget.config import DataConfig
    from lorabudget.data import evaluation_examples, load_source
    from lorabudget.serve.evaluate import evaluation_rows
    from lorabudget.serve.shares import fit_share_match, parse_shares

    results, tokenized, target, detector = {}, None, None, None
    flags: dict[str, np.ndarray] = {}  # which rows of each set the offsets are for: the detector reads texts only,
    # so one answer serves every scale
    for scale in scales:
        started = time.perf_counter()
        clf = load(run, adapter_scale=scale)  # the update scaled, then merged, as `predict` does
        if tokenized is None:  # the same rows for every scale, coded in the run's label space
            cfg = DataConfig(**{**clf.config.data.model_dump(), "validation_source": []})
            tokenized = {}
            for name, source in sets.items():
                rows = (evaluation_rows(clf, None, clf.config.data)[0] if source == HELD_OUT
                        else evaluation_examples(cfg, source, clf.labels))
                tokenized[name] = (clf.tokenize(rows.texts, rows.labels), np.asarray(rows.labels), rows.texts)
            if match:
                dataset = load_source(cfg, match["target"], labels=clf.labels, require_labels=False)
                target = dataset.splits["test" if "test" in dataset.splits else "train"].texts
        scores, share_match = {}, None
        if match:
            share_match = fit_share_match(clf, target, parse_shares(match["shares"], clf.class_names),
                                          match["rows"], detector=detector)
            detector = share_match.detector
        for name, (data, labels, texts) in tokenized.items():
            logits = clf.logits(data, batch_size=clf.config.eval.batch_size)
            scores[name] = float((logits.argmax(axis=1) == labels).mean()) if len(labels) else None
            if share_match is not None:
                if name not in flags:
                    flags[name] = share_match.applies_to(texts)
                matched = share_match.offset(logits, flags[name]).argmax(axis=1)
                scores[f"{name}+shares"] = float((matched == labels).mean()) if len(labels) else None
        results[str(scale)] = scores
        cells = "  ".join(f"{name} {100 * v:6.2f}" for name, v in scores.items())
        print(f"scale {scale:5.2f}  {cells}  ({time.perf_counter() - started:.0f} s)", flush=True)
    return results


def tradeoff_figure(runs: dict[str, dict], sets: tuple[str, str], path: Path, goal: float | None = None) -> Path:
    """The in-distribution / shifted trade-off of scaling: one line per recipe (the runs of a folder's parent, e.g.
    runs/round2/<recipe>/seed-N, averaged over the seeds that have every scale the line draws), a point per scale
    from the full update to the smallest, x the first set's accuracy, y the second's; `goal`: a line at that
    accuracy on the second set."""
    import statistics

    from lorabudget.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(10, 6))
    colours: dict[str, str] = {}
    # each recipe as scored, then (dashed) with class shares matched where its runs were scored so too
    for variant, style in (("", "-"), ("+shares", "--")):
        names = tuple(f"{name}{variant}" for name in sets)
        by_recipe: dict[str, list[dict]] = {}
        for run, scales in runs.items():
            if all(name in v for v in scales.values() for name in names):
                by_recipe.setdefault(Path(run).parent.name or run, []).append(scales)
        for recipe, seeds in sorted(by_recipe.items()):
            shared = sorted(set.intersection(*(set(s) for s in seeds)), key=float, reverse=True)
            xs = [statistics.mean(100 * s[k][names[0]] for s in seeds) for k in shared]
            ys = [statistics.mean(100 * s[k][names[1]] for s in seeds) for k in shared]
            seeds_said = f"{len(seeds)} seed{'s' * (len(seeds) > 1)}"
            label = f"{recipe}{' + class shares matched' if variant else ''} ({seeds_said})"
            line, = ax.plot(xs, ys, style, marker="o", label=label, color=colours.get(recipe))
            colours.setdefault(recipe, line.get_color())
            for k, x, y in zip(shared, xs, ys):
                ax.annotate(f"{float(k):g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                            color=line.get_color())
    if goal is not None:
        ax.axhline(goal, color="tab:red", linestyle="--", linewidth=1, label=f"goal on {sets[1]}: {goal:g}%")
    ax.set_xlabel(f"accuracy on {sets[0]} (%)")
    ax.set_ylabel(f"accuracy on {sets[1]} (%)")
    ax.set_title("scaling the update back: each point a scale, mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", metavar="RUN", help="runs to score (none: only draw --figure from --json)")
    ap.add_argument("--data", action="append", required=True, metavar="NAME=FILE",
                    help=f"a labelled set to score; FILE {HELD_OUT!r}: each run's own validation split")
    ap.add_argument("--scales", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--json", type=Path, help="keep the figures here, under 'runs' by run folder; an existing "
                    "file keeps its other runs (a run scored again replaces its entry)")
    ap.add_argument("--figure", type=Path, help="draw the trade-off of the runs scored here (no RUN: of the runs "
                    "--json holds under --figure-prefix): the first --data set across, the second up")
    ap.add_argument("--figure-prefix", default="", help="with --figure and no RUN: the runs whose folder starts so")
    ap.add_argument("--goal", type=float, help="with --figure: a line at this accuracy (%%) on the second set")
    ap.add_argument("--match-shares", metavar="SHARES", help="also score every set with these class shares matched "
                    "('uniform' or one per class), fitted on --match-on's texts, as predict --match-shares does")
    ap.add_argument("--match-on", metavar="FILE", help="with --match-shares: the target (unlabelled is enough)")
    ap.add_argument("--match-rows", choices=["shifted", "all"], default="shifted")
    args = ap.parse_args(argv)
    if args.figure and len(args.data) < 2:
        ap.error("--figure draws the first --data set against the second: give two")
    if bool(args.match_shares) != bool(args.match_on):
        ap.error("--match-shares and --match-on go together: the shares, and the target they are matched on")
    if not args.runs and not (args.figure and args.json and args.json.is_file()):
        ap.error("give runs to score, or --figure with an existing --json to draw from")
    from lorabudget.rundir import atomic_write_json

    sets = dict(item.split("=", 1) for item in args.data)
    kept = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    kept.setdefault("runs", {})
    for run in args.runs:
        if len(args.runs) > 1:
            print(f"== {run}", flush=True)
        match = args.match_shares and {"shares": args.match_shares, "rows": args.match_rows, "target": args.match_on}
        kept["runs"][run] = score_run(run, sets, args.scales, match)
        if args.json:  # after each run: a stopped call keeps what it scored
            atomic_write_json(args.json, kept)
    if args.figure:
        drawn = {run: kept["runs"][run] for run in args.runs} if args.runs else {
            run: scales for run, scales in kept["runs"].items() if run.startswith(args.figure_prefix)}
        print(f"figure: {tradeoff_figure(drawn, tuple(sets)[:2], args.figure, args.goal)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
