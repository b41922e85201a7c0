"""Processes against threads: where `speed.processes: 2` beats one process on the same cores.

    python benchmarks/processes.py [--quick] [--cases minilm-recommended,roberta-recommended]
                                   [--batch-sizes 16,32,64] [--threads N] [--repeats R] [--json PATH]

For each case (speed.py's: the recommended recipe on the packaged MiniLM, and on roberta-base's shape with random
weights) and each global batch size, the same `lorabudget train` runs twice over the same rows: once as 1 process
with N threads, once as `speed.processes=2`, 2 processes with N/2 threads each, sharing every batch (N: the
physical cores, default). Each run is its own `lorabudget train` command, as a user runs it, so the second
measures the launcher too; the pairs alternate (1 then 2, then 2 then 1 on the next repeat), so that machine noise
hits both alike. Reported: training samples/s (summary.json: training time only, evaluation left out, every step
counted) and the ratio 2 processes / 1 process; a ratio above 1 is where `auto` should choose 2. Run it on an
otherwise idle machine: a training beside it takes cores from one layout more than from the other.

`--model DIR` runs every case on a local model folder instead (a smoke check: tests use the tiny model).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  the cases, data and configs of the speed benchmark

CASES = ["minilm-recommended", "roberta-recommended"]


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def write_case(case: str, batch: int, steps: int, workdir: Path, model: str | None, max_length: int) -> Path:
    """The config (and data file) of one (case, batch): speed.py's lorabudget side, `steps` steps of `batch`."""
    from lorabudget.config import dump_config

    s = {**speed.case_settings(case, quick=True), "batch_size": batch, "eval_rows": 64, "max_length": max_length,
         **({"model": model} if model else {})}
    path = speed.settings_model_path(s, workdir)
    texts, labels = speed.load_texts(steps * batch + s["eval_rows"], source=speed.data_source(s))
    data = workdir / f"{case}-{batch}.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    cfg = speed.lorabudget_config(path, data, s, workdir / "run", validation_rows=s["eval_rows"],
                                  optim={"lr": s["lr"], "max_steps": steps}, eval_every=10**9)
    target = workdir / f"{case}-{batch}.yaml"
    target.write_text(dump_config(cfg))
    return target


def measure(config: Path, processes: int, threads: int, workdir: Path, timeout: float) -> dict:
    """One `lorabudget train` of `config` as `processes` processes sharing `threads` threads."""
    out = workdir / f"run-{processes}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-m", "lorabudget.cli", "train", "-c", str(config), "--overwrite",
                              "--output-dir", str(out), "--set", f"speed.processes={processes}"],
                             capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {res.returncode}"}
    s = json.loads((out / "summary.json").read_text())
    return {"train_samples_per_s": s["train_samples_per_s"], "train_seconds": s["train_seconds"],
            "threads_per_process": s["threads"], "num_processes": s["num_processes"],
            "batch_size_per_process": s["batch_size_per_process"], "precision": s["precision"],
            "command_seconds": round(time.perf_counter() - started, 1)}


def best(runs: list[dict]) -> float | None:
    rates = [r["train_samples_per_s"] for r in runs if "error" not in r]
    return max(rates) if rates else None


def print_table(results: dict) -> None:
    t = results["threads"]
    head = f"{'case':20s} {'batch':>5s} {f'1 x {t} thr /s':>14s} {f'2 x {t // 2} thr /s':>14s} {'2p / 1p':>8s}"
    print(head)
    print("-" * len(head))
    for row in results["rows"]:
        one, two = row["one_process"], row["two_processes"]
        ratio = f"{two / one:8.2f}" if one and two else f"{'-':>8s}"
        print(f"{row['case']:20s} {row['batch']:5d} {one or float('nan'):14.1f} {two or float('nan'):14.1f} {ratio}")
        for r in row["runs"]:
            if "error" in r:
                print(f"    error ({r['layout']}): {r['error']}")
    print("samples/s: training only, the best of the repeats; 2p / 1p above 1: two processes win.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps per run (20 instead of 60)")
    ap.add_argument("--steps", type=int, help="optimizer steps per run (overrides --quick)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    ap.add_argument("--batch-sizes", default="16,32,64", help="global batch sizes (even)")
    ap.add_argument("--threads", type=int, default=None, help="threads in all (default: the physical cores)")
    ap.add_argument("--repeats", type=int, default=1, help="measurements of each layout (the best counts)")
    ap.add_argument("--model", help="a local model folder for every case (smoke checks)")
    ap.add_argument("--max-length", type=int, default=128, help="tokens per text at most (speed.py's 128)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one run may take")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    cases, batches = args.cases.split(","), [int(b) for b in args.batch_sizes.split(",")]
    unknown = [c for c in cases if c not in CASES]
    if unknown or any(b % 2 for b in batches):
        ap.error(f"unknown case {', '.join(unknown)}" if unknown else "batch sizes must be even")
    threads = args.threads or physical_cores()
    if threads < 2:
        ap.error("two processes need at least 2 threads in all")
    steps = args.steps or (20 if args.quick else 60)
    workdir = Path(tempfile.mkdtemp(prefix="lorabudget-processes-"))
    results = {"machine": {"cpus": os.cpu_count(), "physical_cores": physical_cores(),
                           "bf16": speed.bf16_kind("cpu")},
               "threads": threads, "steps": steps, "repeats": args.repeats, "model": args.model, "rows": []}
    for case in cases:
        for batch in batches:
            config = write_case(case, batch, steps, workdir, args.model, args.max_length)
            runs = []
            for repeat in range(args.repeats):
                for processes in ((1, 2) if repeat % 2 == 0 else (2, 1)):
                    r = measure(config, processes, threads, workdir, args.timeout)
                    runs.append({"layout": f"{processes}p", **r})
                    print(f"{case:20s} batch {batch:3d} {processes} process(es): {json.dumps(r)}", flush=True)
            results["rows"].append({"case": case, "batch": batch, "runs": runs,
                                    "one_process": best([r for r in runs if r["layout"] == "1p"]),
                                    "two_processes": best([r for r in runs if r["layout"] == "2p"])})
            if args.json:  # after every row: a long run that is stopped keeps what it measured
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(results, indent=2))
    print()
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
