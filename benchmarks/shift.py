"""Shift benchmark: which recipe does best on the shifted target, without losing in-distribution accuracy?

    python benchmarks/shift.py [--recipes today normalize selftrain normalize+selftrain mean-pooling] [--seeds 1 2 3]
                               [--jobs 2] [--threads N] [--out runs/bench-shift] [--set KEY=VALUE ...]
                               [--results benchmarks/results/shift.json] [--record-only] [--continue-from today]

The MiniLM proxy's recommended recipe (configs/recommended-minilm.yaml, budget 180,000) and its variants, each
trained on ../shared's AG News with the preset's 1,000 validation rows held out (stratified, split_seed 0, the
same rows as the preset's own split) and scored at every evaluation on two sets: that validation split (which
decides the best checkpoint) and the 487 labelled rows of the course's hidden test (kaggle_target's
ood_dev_labels.csv joined to its texts). For each recipe it prints, mean ± std over seeds: validation accuracy,
OOD dev accuracy, and OOD dev accuracy with prior adaptation (predict --adapt-priors over the dev rows).

The data files are built under OUT/data (never in the repository: they hold the shared rows). Runs go through
benchmarks/recipes.py (one thread per job, two jobs at once by default), so a stopped benchmark continues.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipes  # noqa: E402  (benchmarks/recipes.py: trains configs x seeds, skipping finished runs)

SHARED = ROOT.parent / "shared" / "data"
BASE = ROOT / "configs" / "recommended-minilm.yaml"
RECIPES = {  # name -> overrides of the recommended recipe; TARGET stands for the target's texts
    "today": [],
    "normalize": ["data.normalize=news"],
    "selftrain": ["data.target_source=TARGET", "selftrain.rounds=1"],
    "normalize+selftrain": ["data.normalize=news", "data.target_source=TARGET", "selftrain.rounds=1"],
    "mean-pooling": ["head.type=linear", "head.pooling=mean"],  # the sentence encoder's own pooling (#21)
    "lp-ft": ["optim.probe_epochs=1"],  # the head fitted to the frozen features first (Kumar et al. 2022)
    "ema": ["optim.ema_decay=0.999"],  # weight averaging, known to help out of distribution (SWAD, EoA)
    "garble": ["data.token_drop=0.1", "data.token_swap=0.1"],  # training texts that read like the generated half
}
AG_NEWS_ORDER = ["World", "Sports", "Business", "Sci/Tech"]  # ood_dev_labels' 0..3


def build_data(out: Path) -> dict[str, Path]:
    """train.csv / val.csv (the preset's split of the shared AG News), ood_dev.csv (dev labels joined to the
    hidden test's texts), target.csv (the 8,000 texts)."""
    from lorabudget.config import load_config
    from lorabudget.data import load_source, split_train_validation

    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / f"{name}.csv" for name in ("train", "val", "ood_dev", "target")}
    if all(f.is_file() for f in files.values()):
        return files
    cfg = load_config(BASE, [f"data.source={SHARED / 'ag_news' / 'train_subset.csv.gz'}"]).data
    dataset = load_source(cfg)
    split = split_train_validation(dataset.splits["train"], cfg, cfg.source)
    names = dataset.labels.names
    for name, part in (("train", split.train), ("val", split.validation)):
        _write(files[name], ["text", "label"], [[t, names[y]] for t, y in zip(part.texts, part.labels)])
    with gzip.open(SHARED / "kaggle_target" / "test_unlabelled.csv.gz", "rt", encoding="utf-8") as f:
        texts = {row["ID"]: row["text"] for row in csv.DictReader(f)}
    _write(files["target"], ["ID", "text"], [[i, t] for i, t in texts.items()])
    with open(SHARED / "kaggle_target" / "ood_dev_labels.csv", encoding="utf-8") as f:
        dev = [[row["ID"], texts[row["ID"]], AG_NEWS_ORDER[int(row["Label"])]] for row in csv.DictReader(f)]
    _write(files["ood_dev"], ["ID", "text", "label"], dev)
    return files


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def recipe_files(out: Path, names: list[str], data: dict[str, Path]) -> list[Path]:
    """One config per recipe (its file name is the recipe's name in the run folders)."""
    from lorabudget.config import dump_config, load_config

    folder = out / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        overrides = [o.replace("TARGET", str(data["target"])) for o in RECIPES[name]]
        cfg = load_config(BASE, [*overrides, f"data.validation_source=[{data['val']}, {data['ood_dev']}]",
                                 f"data.label_names=[{', '.join(AG_NEWS_ORDER)}]"])
        path = folder / f"{name}.yaml"
        path.write_text(dump_config(cfg))
        paths.append(path)
    return paths


def continue_finished(out: Path, name: str, base: str, seed: int, target: Path) -> bool:
    """Start recipe `name`'s run of `seed` from `base`'s finished run of the same seed, when `name` only adds
    self-training rounds to `base`: the same config and seed train the same supervised phase, so it is copied, its
    config given the rounds, and resumed (train_one then resumes it), instead of trained again (about 40 minutes a
    run at one thread). False when `name` is not `base` with rounds added, there is nothing to continue from, or
    the run exists already. `target`: the target's texts (build_data's), which the rounds read."""
    import shutil

    from lorabudget.config import dump_config, load_config
    from lorabudget.rundir import RunDir, atomic_write_text
    from lorabudget.runlock import LOCK_NAME

    extra = [o for o in RECIPES[name] if o not in RECIPES[base]]
    adds_rounds_only = (set(RECIPES[base]) <= set(RECIPES[name])
                        and any(o.startswith("selftrain.rounds=") for o in extra)
                        and all(o.startswith(("selftrain.", "data.target_source=")) for o in extra))
    source, run = out / base / f"seed-{seed}", out / name / f"seed-{seed}"
    if not adds_rounds_only or run.exists() or not RunDir(source).is_finished():
        return False
    cfg = load_config(source / "config.yaml", [o.replace("TARGET", str(target)) for o in extra])
    tmp = run.with_name(run.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(LOCK_NAME, "summary.json"))
    atomic_write_text(tmp / "config.yaml", dump_config(cfg))
    RunDir(tmp).set_status("interrupted", reason=f"continued from {source} with self-training rounds")
    tmp.rename(run)  # whole or not at all: a half-copied folder never looks like a run
    return True


def _dev_with_priors(run: Path, dev: Path) -> float | None:
    """OOD dev accuracy after prior adaptation (the run's best checkpoint, predict --adapt-priors)."""
    out = run / "eval" / "ood_dev_priors.csv"
    res = subprocess.run([*recipes.LORABUDGET, "predict", str(run), "--data", str(dev), "--out", str(out),
                          "--adapt-priors"], capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in res.stdout.splitlines() if x.startswith("accuracy")), None)
    return float(line.split()[1]) if line else None


def _mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{100 * xs[0]:.2f}"
    return f"{100 * statistics.mean(xs):.2f} ± {100 * statistics.stdev(xs):.2f}"


RESULTS = ROOT / "benchmarks" / "results" / "shift.json"


def record(results: Path, out: Path, names: list[str], dev: Path) -> dict:
    """Add every finished run under OUT to the results file (kept in the repository, keyed by recipe and seed:
    run folders do not outlive a working session here, the figures do), with its curve of both sets."""
    data = json.loads(results.read_text()) if results.is_file() else {"runs": {}}
    bf16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    for name in names:
        for run in sorted(p.parent for p in (out / name).glob("seed-*/summary.json")):
            key = f"{name}/{run.name}"
            if key in data["runs"]:
                continue
            summary = json.loads((run / "summary.json").read_text())
            curve = [{"step": r["step"], "validation": r["val_accuracy"], "ood_dev": r["val_ood_dev_accuracy"]}
                     for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                     if "val_ood_dev_accuracy" in r]
            data["runs"][key] = {
                "recipe": name, "seed": int(run.name.split("-")[1]), "validation": summary["best"]["accuracy"],
                "ood_dev": summary["best"]["sets"]["ood_dev"]["accuracy"], "best_step": summary["best"]["step"],
                "ood_dev_priors": _dev_with_priors(run, dev), "curve": curve,
                "train_seconds": summary.get("train_seconds"), "threads": summary.get("threads"),
                "cpu_avx512_bf16": bf16}
    results.parent.mkdir(parents=True, exist_ok=True)
    from lorabudget.rundir import atomic_write_text  # a reader beside it never sees half a file
    atomic_write_text(results, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def table(data: dict, names: list[str]) -> str:
    rows = ["| recipe | seeds | validation | OOD dev | OOD dev + priors | OOD dev after epoch 1 |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in names:
        runs = [r for r in data["runs"].values() if r["recipe"] == name]
        if not runs:
            continue
        first = [r["curve"][0]["ood_dev"] for r in runs if r["curve"]]
        rows.append(f"| {name} | {len(runs)} | {_mean_std([r['validation'] for r in runs])} | "
                    f"{_mean_std([r['ood_dev'] for r in runs])} | {_mean_std([r['ood_dev_priors'] for r in runs])} "
                    f"| {_mean_std(first)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, help="threads per run (default: 1 when jobs > 1, else 2); one thread "
                    "lets a second benchmark share a 2-core machine")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-shift")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the figures of every finished run, kept")
    ap.add_argument("--record-only", action="store_true", help="train nothing: record the finished runs under "
                    "OUT and print the table")
    ap.add_argument("--continue-from", metavar="RECIPE", choices=list(RECIPES), help="self-training recipes "
                    "continue this recipe's finished run of each seed (e.g. today) instead of training its "
                    "supervised phase again")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    data = build_data(out / "data")
    configs = recipe_files(out, args.recipes, data)
    train_args = argparse.Namespace(out=out, data=data["train"], set=args.set)
    threads = args.threads or (1 if args.jobs > 1 else 2)
    from concurrent.futures import ThreadPoolExecutor

    work = [] if args.record_only else [(config, seed) for seed in args.seeds for config in configs]
    if args.continue_from:
        for config, seed in work:
            if continue_finished(out, config.stem, args.continue_from, seed, data["target"]):
                print(f"{config.stem} seed {seed}: continues {args.continue_from}'s finished run", flush=True)
    failed = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, rc, seconds in pool.map(lambda w: recipes.train_one(*w, train_args, threads), work):
            failed += rc != 0
            print(f"{name}: {'ok' if rc == 0 else f'exit {rc}'} ({seconds / 60:.1f} min)", flush=True)
            record(args.results, out, args.recipes, data["ood_dev"])
    figures = record(args.results, out, args.recipes, data["ood_dev"])
    bf16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    print(f"\nshift benchmark (MiniLM proxy, budget 180,000; CPU {'with' if bf16 else 'without'} AVX512-BF16); "
          f"figures from {args.results}\n")
    print(table(figures, args.recipes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
