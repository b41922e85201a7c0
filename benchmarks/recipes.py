"""Recipe study: train each recipe config with several seeds, then `lorabudget report` over all the runs.

    python benchmarks/recipes.py configs/recipes/*.yaml [--seeds 1 2 3] [--jobs 2] [--out runs/recipes]
                                 [--data ../shared/data/ag_news/train_subset.csv.gz] [--set KEY=VALUE ...]
                                 [--report docs/recipes-report] [--results benchmarks/results/NAME.json]
                                 [--control RECIPE] [--figure docs/recipes/NAME.png] [--goal POINTS]

Each (recipe, seed) trains with `lorabudget train` into OUT/<recipe>/seed-<n>/. Rerunning the command skips the
finished runs and resumes the killed ones, so a long study can be stopped and continued. At the end it prints the
table of every finished run under OUT (mean ± std over seeds) and the issue's criterion: the recommended recipe
(--recommended, default configs/recommended-minilm.yaml) against every published one with 2 seeds or more.
Without recipes it only prints those. With --results, every finished run is also kept in a JSON file across
sessions, and its table is printed; --control RECIPE adds each recipe's paired difference from that recipe (on the
seeds both ran) and whether it is beyond the noise (a one-sided paired t-test, p < 0.05, on three seeds or more).

Why processes in parallel: on a small CPU, two training processes with one thread each get more done than one
process with two threads (about 40 against 32 samples/s for MiniLM on 2 cores): at batch 32 and ~50 tokens the
matmuls are too small for two threads to keep busy. So `--jobs J` runs J trainings at once, each with
cores / J threads. Wall times in the report are then those of single-thread runs (the run's summary says so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "ag_news" / "train_subset.csv.gz"
LORABUDGET = [sys.executable, "-m", "lorabudget.cli"]


def run_state(run: Path) -> str | None:
    from lorabudget.rundir import RunDir

    return (RunDir(run).status() or {}).get("state")


def stale(run: Path, recipe: Path, seed: int, overrides: list[str]) -> list[str]:
    """The config sections in which a finished run differs from what the recipe would train now (the run's folder
    names its seed; config.recipe_settings is what makes two runs one recipe)."""
    from lorabudget.config import load_config, recipe_settings

    ran = recipe_settings(load_config(run / "config.yaml"))
    wanted = recipe_settings(load_config(recipe, [*overrides, f"seed={seed}"]))
    return [key for key in sorted(set(ran) | set(wanted)) if ran.get(key) != wanted.get(key)]


def train_one(recipe: Path, seed: int, args, threads: int) -> tuple[str, int, float]:
    run = args.out / recipe.stem / f"seed-{seed}"
    state = run_state(run)
    if state == "finished":
        differs = stale(run, recipe, seed, args.set)
        if differs:
            return (f"{recipe.stem} seed {seed}: {run} was trained with other {', '.join(differs)} settings than "
                    "the recipe now asks; use another --out", 1, 0.0)
        return f"{recipe.stem} seed {seed}: finished before", 0, 0.0
    if state is not None:  # killed or failed mid-run: continue from its last checkpoint
        cmd = [*LORABUDGET, "train", "--resume", str(run)]
    else:
        cmd = [*LORABUDGET, "train", "-c", str(recipe), "--data", str(args.data), "--output-dir", str(run),
               "--set", f"seed={seed}", "--set", "logging.progress=false"]
        for override in args.set:
            cmd += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    run.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(run.parent / f"seed-{seed}.log", "a", encoding="utf-8") as log:
        rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return f"{recipe.stem} seed {seed}", rc, time.perf_counter() - started


def finished_groups(out: Path) -> list[tuple[str, dict, list[dict]]]:
    """The finished runs under `out`, grouped when they differ only by seed (as `lorabudget report` groups them):
    one recipe may have runs in two folders (an exploration run and the recommended preset's, say). Each group:
    its folder names joined by ' = ', its settings, and its runs' summaries."""
    from lorabudget.config import load_config, recipe_settings

    groups: dict[str, tuple[list[str], dict, list[dict]]] = {}
    for run in sorted(out.glob("*/seed-*")):
        if run_state(run) != "finished":
            continue
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        settings = recipe_settings(load_config(run / "config.yaml"), summary)
        names, _, summaries = groups.setdefault(json.dumps(settings, sort_keys=True), ([], settings, []))
        names.append(run.parent.name)
        summaries.append(summary)
    return [(" = ".join(dict.fromkeys(names)), settings, summaries) for names, settings, summaries in groups.values()]


def _accuracies(summaries: list[dict]) -> list[float]:
    return [100 * s["best"]["accuracy"] for s in summaries]


def summary_table(out: Path) -> str:
    """Markdown: best validation accuracy as mean and sample std over seeds, for each group of finished runs."""
    import statistics

    rows = []
    for names, _, runs in finished_groups(out):
        accs = _accuracies(runs)
        std = f"{statistics.stdev(accs):.2f}" if len(accs) > 1 else "-"
        minutes = statistics.mean(s["train_seconds"] for s in runs) / 60
        rows.append((statistics.mean(accs), f"| {names} | {runs[0]['trainable_params']:,} | "
                     f"{statistics.mean(accs):.2f} ± {std} | {len(accs)} | "
                     f"{' / '.join(f'{a:.1f}' for a in accs)} | {minutes:.1f} min |"))
    head = ("| recipe | trainable | best val. accuracy % (mean ± std) | seeds | per seed | train time (1 thread) |\n"
            "|---|---:|---:|---:|---|---:|")
    return "\n".join([head, *(line for _, line in sorted(rows, reverse=True))])


def criterion(out: Path, recommended: Path) -> str:
    """The issue's test, from the run directories: the recommended recipe's mean over seeds beats each published
    recipe's mean (every group with 'published' in a folder name and at least 2 seeds) by more than twice the
    larger of the two standard deviations. The recommended group is the one trained with `recommended`'s
    settings, whatever its folder is called. Verdicts are given apart for the published runs of the same length
    (optimizer steps) as the recommended ones, the fair comparison, and for those of another length. Runs in
    another precision (an `auto` preset trains in bf16 on one machine and fp32 on another) are another
    comparison: one block per precision the recommended recipe has runs in."""
    from lorabudget.config import load_config, recipe_settings

    groups = finished_groups(out)
    if not groups:
        return f"criterion: no finished runs under {out}"
    preset = load_config(recommended)
    blocks = []
    for names, settings, runs in groups:
        # the preset as this group ran it: on its model's depth, its data, and (for `auto`) its precision
        ran = {"encoder_layers": runs[0].get("encoder_layers"), "data": runs[0].get("data"),
               "precision": runs[0].get("precision") if preset.model.precision == "auto" else None}
        if settings != recipe_settings(preset, ran) or len(runs) < 2:
            continue
        precision = settings["model"]["precision"]
        peers = [(other, other_runs) for other, other_settings, other_runs in groups
                 if "published" in other and other_settings["model"]["precision"] == precision]
        blocks.append(_criterion_block(recommended.name, names, runs, peers))
    return "\n".join(blocks) or f"criterion: fewer than 2 finished runs of {recommended.name} under {out}"


def _criterion_block(preset: str, names: str, runs: list[dict], published: list[tuple[str, list[dict]]]) -> str:
    import statistics

    accs = _accuracies(runs)
    mean, std = statistics.mean(accs), statistics.stdev(accs)
    steps = runs[0]["total_steps"]
    precision = runs[0].get("precision", "precision not recorded")
    lines = [f"{preset} ({names}, {steps} steps, {precision}): {mean:.2f} ± {std:.2f} (n={len(accs)})"]
    held: dict[bool, list[bool]] = {True: [], False: []}  # same length as the recommended runs or not: verdicts
    for other, other_runs in sorted(published, key=lambda g: -statistics.mean(_accuracies(g[1]))):
        theirs = _accuracies(other_runs)
        if len(theirs) < 2:
            continue
        margin, needed = mean - statistics.mean(theirs), 2 * max(std, statistics.stdev(theirs))
        their_steps = other_runs[0]["total_steps"]
        held[their_steps == steps].append(margin > needed)
        lines.append(f"  against {other} ({their_steps} steps, n={len(theirs)}, {statistics.mean(theirs):.2f} ± "
                     f"{statistics.stdev(theirs):.2f}): margin {margin:.2f} points, needed > {needed:.2f}: "
                     f"{'met' if margin > needed else 'NOT met'}")
    for same, verdicts in held.items():
        if verdicts:
            where = "at the same length" if same else "at other lengths"
            lines.append(f"{where}: met against {sum(verdicts)} of {len(verdicts)} published recipes: the "
                         f"criterion {'holds' if all(verdicts) else 'does NOT hold'}")
    return "\n".join(lines)


@contextmanager
def results_lock(results: Path):
    """Held while a results file is read, changed and written back: two study lanes (or a lane and
    benchmarks/ceiling.py) that finish together would otherwise each write back what they read, and one run would
    be lost. The lock file sits beside the results file (ignored by git)."""
    import fcntl

    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results.parent / f".{results.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_results(results: Path) -> dict:
    return json.loads(results.read_text()) if results.is_file() else {"runs": {}}


def _write_results(results: Path, data: dict) -> None:
    from lorabudget.rundir import atomic_write_text  # a reader beside it never sees half a file

    atomic_write_text(results, json.dumps(data, indent=1, sort_keys=True) + "\n")


def add_results(results: Path, runs: dict[str, dict]) -> dict:
    """Add runs (keyed recipe/seed-N, in record's format) to the results file; keys it holds already are kept."""
    with results_lock(results):
        data = load_results(results)
        for key, run in runs.items():
            data["runs"].setdefault(key, run)
        _write_results(results, data)
    return data


def record(results: Path, out: Path) -> dict:
    """Add every finished run under OUT to the results file (kept in the repository, keyed by recipe folder and
    seed: run folders do not outlive a working session here, the figures do)."""
    bf16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    with results_lock(results):
        data = load_results(results)
        for run in sorted(out.glob("*/seed-*")):
            if run_state(run) != "finished" or f"{run.parent.name}/{run.name}" in data["runs"]:
                continue
            s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
            curve = [{"step": r["step"], "validation": r["val_accuracy"]}
                     for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                     if "val_accuracy" in r]
            data["runs"][f"{run.parent.name}/{run.name}"] = {
                "recipe": run.parent.name, "seed": int(run.name.split("-")[1]), "trainable": s["trainable_params"],
                "validation": s["best"]["accuracy"], "best_step": s["best"]["step"], "steps": s.get("total_steps"),
                "train_seconds": s.get("train_seconds"), "threads": s.get("threads"),
                "precision": s.get("precision"), "cpu_avx512_bf16": bf16, "curve": curve}
        _write_results(results, data)
    return data


def runs_by_recipe(data: dict) -> dict[str, list[dict]]:
    """The results file's runs, grouped by recipe folder."""
    by_recipe: dict[str, list[dict]] = {}
    for r in data["runs"].values():
        by_recipe.setdefault(r["recipe"], []).append(r)
    return by_recipe


def paired_against(runs: list[dict], control_runs: list[dict]) -> tuple[float, float | None, float | None, int]:
    """A recipe against the control on the seeds both ran: the mean of the per-seed differences in points, its
    standard error and the one-sided p-value of a paired t-test that the recipe is better (both None below two
    seeds), and the number of seeds. Paired, because a seed draws the same initialisation and batch order for
    both recipes, so much of the seed noise cancels in the difference; a t-test, because a standard error from
    three differences is itself a rough estimate, which a plain two-standard-error rule would trust too far."""
    import statistics

    from scipy.stats import ttest_1samp

    control = {r["seed"]: r["validation"] for r in control_runs}
    diffs = [100 * (r["validation"] - control[r["seed"]]) for r in runs if r["seed"] in control]
    if len(diffs) < 2:
        return (diffs[0] if diffs else 0.0), None, None, len(diffs)
    mean, se = statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5
    p = float(ttest_1samp(diffs, 0.0, alternative="greater").pvalue) if se > 0 else float(mean <= 0)
    return mean, se, p, len(diffs)


# The rule that moves a default (docs/recipes.md): a recipe beats the control beyond the noise when, on at least
# three seeds, a one-sided paired t-test of its per-seed differences gives p < 0.05.
BEYOND_NOISE_SEEDS, BEYOND_NOISE_P = 3, 0.05


def paired_verdict(mean: float, se: float | None, p: float | None, n: int) -> str:
    if n < BEYOND_NOISE_SEEDS or p is None:  # se and p are None together
        return f"{mean:+.2f} ({n} seed{'s' * (n != 1)}): too few seeds"
    beyond = p < BEYOND_NOISE_P
    return f"{mean:+.2f} ± {se:.2f}, p {p:.3f} ({n} seeds): {'beyond' if beyond else 'within'} the noise"


def results_table(data: dict, control: str | None = None) -> str:
    """Markdown from the results file: mean ± std of best validation accuracy and train time per recipe; with a
    control, each recipe's paired difference from it (mean ± standard error over the seeds both ran)."""
    import statistics

    by_recipe = runs_by_recipe(data)
    against = control in by_recipe
    rows = ["| recipe | trainable | seeds | validation % | train time (min) |" + " against the control |" * against,
            "| --- | ---: | ---: | ---: | ---: |" + " ---: |" * against]
    for name, runs in sorted(by_recipe.items(), key=lambda kv: -statistics.mean(r["validation"] for r in kv[1])):
        accs = [100 * r["validation"] for r in runs]
        std = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        minutes = statistics.mean(r["train_seconds"] or 0 for r in runs) / 60
        paired = ""
        if against:
            paired = " (the control) |" if name == control else \
                f" {paired_verdict(*paired_against(runs, by_recipe[control]))} |"
        rows.append(f"| {name} | {runs[0]['trainable']:,} | {len(runs)} | {statistics.mean(accs):.2f}{std} | "
                    f"{minutes:.1f} |{paired}")
    return "\n".join(rows)


def results_figure(data: dict, path: Path, control: str | None = None, goal: float | None = None) -> Path:
    """A picture of the results file: left, best validation accuracy per recipe (a dot per seed, the mean and its
    sample std), best first, with the control's mean as a line (and the goal, `goal` points above it, as another)
    and each recipe's paired difference from it (and the one-sided p from two seeds on) beside it; right, each
    recipe's validation curve (the mean over its seeds at each evaluation)."""
    import statistics

    from lorabudget.plots import plt, save_figure

    by_recipe = runs_by_recipe(data)
    means = {name: statistics.mean(100 * r["validation"] for r in runs) for name, runs in by_recipe.items()}
    names = sorted(by_recipe, key=lambda n: means[n])  # best at the top
    minutes = {name: statistics.mean(r["train_seconds"] or 0 for r in runs) / 60 for name, runs in by_recipe.items()}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.45 * len(names) + 2.5),
                                      gridspec_kw={"width_ratios": [1.1, 1]})
    for y, name in enumerate(names):
        accs = [100 * r["validation"] for r in by_recipe[name]]
        left.scatter(accs, [y] * len(accs), color="tab:blue", alpha=0.5, s=22, zorder=3)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        left.errorbar(means[name], y, xerr=std, fmt="D", color="black", markersize=5, capsize=3, zorder=4)
        runs = by_recipe[name]
        paired = ""
        if control in by_recipe and name != control:  # the seed-by-seed difference, as in results_table
            diff, _, p, _ = paired_against(runs, by_recipe[control])
            paired = f", {diff:+.2f}" + (f" (p {p:.2f})" if p is not None else "")
        left.annotate(f"{runs[0]['trainable']:,} trainable, {len(runs)} seed{'s' * (len(runs) > 1)}, "
                      f"{minutes[name]:.0f} min{paired}", (1.0, y), xycoords=("axes fraction", "data"),
                      xytext=(6, -3), textcoords="offset points", fontsize=8, annotation_clip=False)
    if control in means:
        left.axvline(means[control], color="tab:red", lw=1, ls="--", label=f"{control} (mean)")
        if goal is not None:
            left.axvline(means[control] + goal, color="tab:green", lw=1, ls=":",
                         label=f"the goal: {goal:+.1f} over {control}")
        left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    low, high = left.get_xlim()
    if high - low < 1.0:  # means close together must not look far apart: at least a point across
        middle = (low + high) / 2
        left.set_xlim(middle - 0.5, middle + 0.5)
    left.set_yticks(range(len(names)), names, fontsize=9)
    left.set_xlabel("best validation accuracy % (dots: seeds; diamond: mean +- std)")
    left.grid(axis="x", alpha=0.3)
    colours = plt.get_cmap("tab20").colors  # one colour per recipe: the default cycle repeats after ten
    for k, name in enumerate(reversed(names)):
        steps: dict[int, list[float]] = {}
        for r in by_recipe[name]:
            for point in r.get("curve", []):
                steps.setdefault(point["step"], []).append(100 * point["validation"])
        xs = sorted(steps)
        right.plot(xs, [statistics.mean(steps[x]) for x in xs], marker="o", markersize=3, color=colours[k % 20],
                   lw=2 if name == control else 1.2, ls="--" if name == control else "-", label=name)
    right.set_xlabel("optimizer step")
    right.set_ylabel("validation accuracy % (mean over seeds)")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    low = min(means.values())
    right.set_ylim(max(low - 6, 0), max(means.values()) + 1)
    fig.suptitle(f"{len(data['runs'])} runs, {len(names)} recipes", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", type=Path, help="recipe configs (YAML); none: only print the table")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "recipes")
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every recipe, e.g. optim.max_steps=300")
    parser.add_argument("--report", type=Path, default=None, help="write `lorabudget report` here at the end")
    parser.add_argument("--results", type=Path, default=None, help="keep every finished run's figures in this "
                        "JSON file (e.g. benchmarks/results/round2.json) and print the table of all it holds")
    parser.add_argument("--figure", type=Path, default=None, help="with --results: draw every run it holds here "
                        "(PNG; e.g. docs/recipes/round2.png)")
    parser.add_argument("--control", default=None, help="with --results: the recipe folder the others are "
                        "compared with, seed by seed, in the table, and drawn as the line to beat in --figure "
                        "(e.g. round2-baseline)")
    parser.add_argument("--goal", type=float, default=None, help="with --control and --figure: draw the line this "
                        "many points above the control's mean (e.g. 1.0, #22's goal)")
    parser.add_argument("--threads", type=int, help="threads per training (default: the cores / --jobs); 1 lets "
                        "another benchmark share a 2-core machine")
    parser.add_argument("--recommended", type=Path, default=ROOT / "configs" / "recommended-minilm.yaml",
                        help="the recipe the criterion tests against the published ones")
    args = parser.parse_args(argv)
    # the trainings run in the project root: paths given relative to the caller's folder are resolved first
    args.recipes = [r.resolve() for r in args.recipes]
    args.out, args.data = args.out.resolve(), args.data.resolve()
    missing = [str(r) for r in args.recipes if not r.is_file()]
    if missing or not args.data.exists():
        parser.error(f"not found: {', '.join(missing) or args.data}")
    if args.figure and not args.results:
        parser.error("--figure draws the runs of --results: give both")
    if args.control and not args.results:
        parser.error("--control compares the runs of --results with one recipe: give both")
    if args.goal is not None and not (args.control and args.figure):
        parser.error("--goal draws a line above the control in the figure: give --control and --figure")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    # Seeds outermost: after the first pass every recipe has one run, so a stopped study is still comparable.
    work = [(recipe, seed) for seed in args.seeds for recipe in args.recipes]
    if args.results:  # recorded in an earlier session, whose run folders are gone
        done = load_results(args.results)["runs"]
        work = [(recipe, seed) for recipe, seed in work if f"{recipe.stem}/seed-{seed}" not in done]
    failed = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, rc, seconds in pool.map(lambda w: train_one(*w, args, threads), work):
            failed += rc != 0
            print(f"{name}: {'ok' if rc == 0 else f'exit {rc}'} ({seconds / 60:.1f} min)", flush=True)
            if args.results:
                record(args.results, args.out)
    print(summary_table(args.out))
    if args.results:
        data = record(args.results, args.out)
        if args.control and data["runs"] and args.control not in runs_by_recipe(data):
            print(f"error: --control {args.control}: no run of that recipe in {args.results}", file=sys.stderr)
            return 1
        print(f"\nevery run recorded in {args.results}:\n{results_table(data, args.control)}")
        if args.figure and data["runs"]:
            print(f"figure: {results_figure(data, args.figure.resolve(), args.control, args.goal)}")
    print(criterion(args.out, args.recommended.resolve()))
    if args.report:
        rc = subprocess.call([*LORABUDGET, "report", str(args.out), "--out", str(args.report)], cwd=ROOT)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
