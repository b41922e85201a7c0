"""Tiny assets built in code: never the Hub.

- a word-level tokenizer trained on the test corpus (saved as a fast tokenizer folder),
- a 2-layer RoBERTa and a 2-layer BERT with random weights, saved as safetensors,
- an easy synthetic 4-class task: each text carries a keyword of its class among random filler words.
"""

from __future__ import annotations

import csv
import json
import random
from contextlib import contextmanager
from pathlib import Path

import pytest

CLASSES = ["World", "Sports", "Business", "Tech"]
KEYWORDS = {
    "World": ["election", "minister", "embassy", "treaty"],
    "Sports": ["football", "tennis", "coach", "league"],
    "Business": ["stocks", "merger", "profit", "bank"],
    "Tech": ["software", "chip", "internet", "robot"],
}
FILLER = ("the a of to in on for with today after report new says more year week first local big "
          "people city plan group talks team game market company data users").split()


def make_texts(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % len(CLASSES)
        words = rng.choices(FILLER, k=rng.randint(4, 14))
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(KEYWORDS[CLASSES[label]]))
        rows.append((" ".join(words), label))
    return rows


def _vocab() -> list[str]:
    words = set(FILLER)
    for kws in KEYWORDS.values():
        words.update(kws)
    return sorted(words)


def build_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # roberta's order: pad id 1
    vocab = {t: i for i, t in enumerate(specials + _vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
                                   model_max_length=64)
    fast.save_pretrained(folder)
    return fast


def build_tiny_model(folder: Path, kind: str = "roberta") -> Path:
    import torch
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    tok = build_tokenizer(folder)
    common = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  initializer_range=0.4)  # large: random [CLS] states then differ by input (0.02 makes them ~equal)
    if kind == "roberta":
        config = RobertaConfig(max_position_embeddings=70, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                               type_vocab_size=1, **common)
        model = RobertaModel(config)
    else:
        config = BertConfig(max_position_embeddings=64, pad_token_id=1, type_vocab_size=2, **common)
        model = BertModel(config)
    # A stand-in for pretrained semantics: keywords of one class share a direction in embedding space, as related
    # words do in a real encoder. The pipeline still has to learn to find and read that direction.
    with torch.no_grad():
        emb = model.embeddings.word_embeddings.weight
        directions = torch.randn(len(CLASSES), emb.shape[1]) * 2.0
        for c, name in enumerate(CLASSES):
            for word in KEYWORDS[name]:
                emb[tok.convert_tokens_to_ids(word)] += directions[c]
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-roberta"), "roberta")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def trained_run(tiny_roberta, easy_csv, tmp_path_factory) -> Path:
    """One finished tiny run, shared by the tests that read it (evaluate, reload, predict, export): they write
    only under its eval/ folder or outside it."""
    from lorabudget.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = write_config(out.parent / "cfg.yaml", tiny_config(tiny_roberta, easy_csv, out))
    assert main(["train", "-c", str(cfg)]) == 0
    return out


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the benchmarks are scripts, not a package); those that import a neighbour
    put their own folder on sys.path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_csv(path: Path, rows: list[tuple[str, int]], header=("text", "label"), names: bool = True) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for text, label in rows:
            w.writerow([text, CLASSES[label] if names else label])
    return path


@pytest.fixture(scope="session")
def easy_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "easy.csv", make_texts(480, seed=1))


@pytest.fixture(scope="session")
def easy_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "easy.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, (text, label) in enumerate(make_texts(200, seed=2)):
            f.write(json.dumps({"ID": f"r{i}", "text": text, "label": CLASSES[label]}) + "\n")
    return path


@contextmanager
def one_torch_thread():
    """One thread for a module- or session-scoped fixture that trains: it runs before the per-test `_one_thread`,
    and a run it makes is compared bit for bit with runs made at one thread (2 threads sum in another order)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """The tiny models gain nothing from a second thread, and on a shared 2-core machine two OpenMP threads
    spin against other work (a 30-step run took 9 s instead of 0.4 s): one thread here and in subprocesses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Token caches and any default run dirs go to the test's own folder.
    monkeypatch.setenv("LORABUDGET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LORABUDGET_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def slow_cli(step_seconds: float, before_main: str = "") -> str:
    """Python source (for `python -c`) that runs the lorabudget CLI with every optimizer step slowed down, so that
    a test can act in the middle of a run: kill it, or let two workers overlap. `before_main` runs just before."""
    return f"""
import os, sys, time, torch
step = torch.optim.AdamW.step
def slow_step(self, *a, **k):
    time.sleep({step_seconds})
    return step(self, *a, **k)
torch.optim.AdamW.step = slow_step
{before_main}
from lorabudget.cli import main
sys.exit(main(sys.argv[1:]))
"""


def tiny_config(model_dir: Path, data: Path, out: Path, **sections) -> dict:
    """A config dict for a fast run on the tiny model."""
    cfg = {
        "model": {"name": str(model_dir), "max_length": 32, "precision": "fp32", "device": "cpu"},
        "data": {"source": str(data), "validation_size": 0.2, "split_seed": 0},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"], "layers": "all"},
        "head": {"type": "default"},
        "budget": 100_000,
        "optim": {"lr": 1e-2, "batch_size": 16, "epochs": 6, "warmup_ratio": 0.1},
        "eval": {"every_steps": 36},
        "logging": {"every_steps": 5, "progress": False},
        # one process: a second one's start-up (seconds) would cost more than these few steps; the default
        # ('auto': 2 on a CPU for a small encoder) is tested where processes are (test_processes)
        "speed": {"processes": 1},
        "seed": 0,
        "output_dir": str(out),
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def check_plan_equals_build(cfg, shape, num_labels: int = 3):
    """The planner's arithmetic for `cfg` on `shape` against the model built on the meta device through the real
    code path: the total (also as plain requires_grad parameters, peft's frozen copies aside), every budget group
    and every layer. Returns the built breakdown for further checks."""
    from lorabudget.model.adapters import add_adapters
    from lorabudget.model.backbone import build_on_meta
    from lorabudget.model.budget import count_trainable
    from lorabudget.tools import planner

    model, _, _ = add_adapters(build_on_meta(cfg.model.name, num_labels), cfg.adapter, cfg.head, meta_ok=True)
    counts = planner.count_allocation(shape, planner.allocation_from_config(cfg, shape))
    built = count_trainable(model)
    assert counts.total == built.total == sum(p.numel() for n, p in model.named_parameters()
                                              if p.requires_grad and ".original_module." not in n)
    assert counts.groups == dict(built.groups) and counts.layers == built.layers
    return built


def torchrun_train(cfg: Path, cwd: Path, max_steps: int, processes: int = 2):
    """`lorabudget train -c CFG --max-steps N` as `processes` gloo processes under torchrun, on CPU, one thread
    each; fails the test with the output's tail unless it exits 0."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                          str(processes), "-m", "lorabudget.cli", "train", "-c", str(cfg), "--max-steps",
                          str(max_steps)], capture_output=True, text=True, timeout=180, env=env, cwd=cwd)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res
