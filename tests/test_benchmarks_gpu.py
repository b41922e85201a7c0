"""The GPU benchmark's CPU half (benchmarks/gpu.py --device cpu --quick) on the tiny model, and the speed
benchmark's pieces it stands on: the peft regular expression that matches lorabudget's roles, the check that both
sides adapt the same modules, and the useful-FLOP count."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu
        import speed
    finally:
        sys.path.remove(str(BENCHMARKS))
    return gpu, speed


def test_gpu_benchmark_cpu_half(bench, tiny_roberta, tmp_path, capsys):
    gpu, _ = bench
    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--quick", "--model", str(tiny_roberta), "--data", "synthetic",
                     "--cases", "roberta-recommended", "--methods", "lorabudget,trainer-pad128",
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())

    assert results["machine"]["device"] == "cpu" and results["machine"]["bf16"]
    assert set(results["machine"]["matmul_tflops"]) == {"fp32", "bf16"}
    assert all(v > 0 for v in results["machine"]["matmul_tflops"].values())
    assert results["skipped"] == []
    (key, block), = results["runs"].items()
    s = block["settings"]
    # the GPU code path: a warm-up pass left out on both sides, a warm-up evaluation, the case's own adapter
    assert s["device"] == "cpu" and s["timed_from_step"] == s["steps"] and s["epochs"] == 3 and s["eval_warmup"]
    assert s["targets"] == ["query", "key", "value", "attention_output", "ffn_in", "ffn_out"] and s["r"] == 6
    assert s["max_length"] == 64  # the tiny tokenizer's limit, under its 70 positions
    # keyed by the precision asked for; the block records what it resolved to on this CPU
    assert key == "roberta-recommended auto b8" and block["precision"] in ("bf16", "fp32")

    methods = block["methods"]
    assert set(methods) == {"lorabudget", "trainer-pad128"}
    for name, r in methods.items():
        assert "error" not in r, (name, r.get("stderr_tail"))
        assert r["precision"] == block["precision"]  # every method in the run's precision
        for field in ("train_samples_per_s", "eval_samples_per_s", "useful_train_gflops"):
            assert math.isfinite(r[field]) and r[field] > 0, (name, field, r[field])
        assert 0 < r["peak_share"] < 1  # useful FLOP/s can never exceed the measured matmul peak
        assert 3 <= r["real_tokens_per_sample"] <= 64
    ours, base = methods["lorabudget"], methods["trainer-pad128"]
    assert ours["compiled"] is False  # --device cpu: compile off unless asked
    assert ours["train_x_trainer-pad128"] == pytest.approx(ours["train_samples_per_s"] / base["train_samples_per_s"])
    assert ours["eval_x_trainer-pad128"] == pytest.approx(ours["eval_samples_per_s"] / base["eval_samples_per_s"])
    # r=6 on six linear types of 2 layers, hidden 32, FFN 64: 2 x (4 x 6 x 64 + 2 x 6 x 96)
    assert results["adapters"]["roberta-recommended"]["modules"] == 12
    assert results["adapters"]["roberta-recommended"]["lora_params"] == 5376

    rows = [line for line in printed.splitlines() if line.startswith("roberta-recommended ")]
    assert [line.split()[3] for line in rows] == ["lorabudget", "trainer-pad128"]
    assert f"{base['train_samples_per_s']:.1f}" in rows[1] and f"{ours['train_x_trainer-pad128']:.2f}" in rows[1]
    assert "bf16: " in printed and "both sides adapt 12 modules, 5,376 LoRA parameters" in printed


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_peft_regex_matches_the_six_roles_and_nothing_else(bench, kind):
    _, speed = bench
    s = speed.case_settings("roberta-recommended", quick=True)
    pattern = speed.peft_target_modules(s, kind)
    prefix = f"{kind}.encoder.layer.3."
    six = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense"]
    assert all(re.fullmatch(pattern, prefix + m) for m in six)
    for other in ("classifier.dense", "classifier.out_proj", f"{kind}.pooler.dense", prefix + "attention.self",
                  prefix + "output.LayerNorm", f"{kind}.embeddings.word_embeddings"):
        assert not re.fullmatch(pattern, other), other
    top2 = speed.peft_target_modules({**s, "targets": ["query", "value"], "layers": [4, 5]}, kind)
    assert re.fullmatch(top2, f"{kind}.encoder.layer.5.attention.self.value")
    assert not re.fullmatch(top2, f"{kind}.encoder.layer.3.attention.self.value")
    assert not re.fullmatch(top2, f"{kind}.encoder.layer.14.attention.self.value")


def test_same_adapters_check_passes_and_can_fail(bench, tiny_bert, monkeypatch):
    _, speed = bench
    s = speed.case_settings("minilm-recommended", quick=True)
    facts = speed.check_same_adapters(s, str(tiny_bert))
    # r=4 on six types of 2 layers (hidden 32, FFN 64) + BERT's output layer behind the pooler (32 x 4 + 4)
    assert (facts["modules"], facts["lora_params"], facts["trainable"]) == (12, 3584, 3584 + 132)
    # a peft side that misses the attention output and FFN layers is caught, before anything would be timed
    q_k_v_only = r".*\.layer\.\d+\.attention\.self\.(query|key|value)"
    monkeypatch.setattr(speed, "peft_target_modules", lambda s, model_type: q_k_v_only)
    with pytest.raises(AssertionError, match="adapt different modules"):
        speed.check_same_adapters(s, str(tiny_bert))


def test_useful_flops_count_lora(bench):
    _, speed = bench

    class Config:
        hidden_size, intermediate_size, num_hidden_layers = 768, 3072, 12

    qv = speed.case_settings("roberta-shape", quick=True)
    six = speed.case_settings("roberta-recommended", quick=True)
    base_fwd, base_bwd = speed.matmul_flops_per_token(Config, 12, 50.0)
    fwd, bwd = speed.matmul_flops_per_token(Config, 12, 50.0, six)
    lora = 12 * 2 * 6 * (4 * 1536 + 2 * 3840)  # r=6: 2r(in + out) per module, six modules, 12 layers
    assert (fwd - base_fwd, bwd - base_bwd) == (lora, 2 * lora)
    assert 0 < (fwd + bwd) / (base_fwd + base_bwd) - 1 < 0.04  # LoRA's share stays small, as documented
    qv_fwd, _ = speed.matmul_flops_per_token(Config, 12, 50.0, qv)
    assert qv_fwd - base_fwd == 12 * 2 * 8 * 2 * 1536
    top2 = {**qv, "layers": [10, 11]}
    assert speed.matmul_flops_per_token(Config, 2, 50.0, top2)[0] - base_fwd == 2 * 2 * 8 * 2 * 1536


def test_evaluation_is_credited_the_encoders_forward_alone(bench):
    """Evaluation's useful FLOP/s count the frozen encoder's forward, the same for a merged model and for the
    Trainer's unmerged one (whose LoRA matmuls are overhead), so their shares of the peak compare."""
    _, speed = bench

    class Config:
        hidden_size, intermediate_size, num_hidden_layers = 384, 1536, 6

    s = speed.case_settings("minilm-recommended", quick=True)
    r = {"train_samples_per_s": 10.0, "eval_samples_per_s": 100.0, "real_tokens_per_sample": 50.0}
    block = {"settings": s, "methods": {"trainer-best": dict(r), "lorabudget": {**r, "eval_samples_per_s": 200.0}}}
    speed.derive(block, Config, peak_flops=1e12)
    forward = 6 * (2 * (4 * 384 * 384 + 2 * 384 * 1536) + 4 * 50 * 384)
    trainer, ours = block["methods"]["trainer-best"], block["methods"]["lorabudget"]
    assert trainer["useful_eval_gflops"] == pytest.approx(100 * 50 * forward / 1e9)
    assert ours["eval_peak_share"] == pytest.approx(2 * trainer["eval_peak_share"])
    assert ours["eval_x_trainer-best"] == pytest.approx(2.0)
