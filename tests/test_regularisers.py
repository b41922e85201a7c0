"""The levers that add no trainable parameter: an EMA of the trainable weights (optim.ema_decay), evaluated and
shipped in place of the trained ones, and R-Drop (optim.rdrop_alpha), a KL term between two dropout passes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import make_texts, slow_cli, tiny_config, torchrun_train, write_config
from safetensors.torch import load_file

from lorabudget.cli import main
from lorabudget.errors import ConfigError, DamagedFileError
from lorabudget.train.averaging import EMA_FILE, TrainableEMA
from lorabudget.train.losses import doubled, symmetric_kl, training_loss


def _train(cfg: dict, tmp_path, on_ready=None) -> tuple[dict, object]:
    """Train in this process; returns the summary and the recipe (its model holds the best weights afterwards)."""
    from lorabudget.config import load_config
    from lorabudget.rundir import RunDir
    from lorabudget.train.recipe import train

    seen = {}

    def ready(recipe):
        seen["recipe"] = recipe
        if on_ready is not None:
            on_ready(recipe)

    run = RunDir(cfg["output_dir"])
    run.check_new(False)
    summary = train(load_config(write_config(tmp_path / "cfg.yaml", cfg)), run, on_ready=ready)
    return summary, seen["recipe"]


# ---- EMA -------------------------------------------------------------------------------------------------------

def test_ema_warmup_and_update_follow_the_formula():
    layer = torch.nn.Linear(3, 2)
    ema = TrainableEMA(layer, 0.999)
    start = [p.detach().clone() for p in layer.parameters()]
    assert ema.decay_now() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): the first update keeps 10% of the init
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(1.0)
    ema.update()
    for s, p0 in zip(ema.shadow, start):
        torch.testing.assert_close(s, p0 + 0.9)
    assert ema.updates == 1 and ema.decay_now() == pytest.approx(2 / 11)
    ema.updates = 10_000
    assert ema.decay_now() == 0.999  # capped at the configured decay
    assert TrainableEMA(layer, 0.5, warmup=False).decay_now() == 0.5


def test_ema_applied_swaps_in_the_average_and_restores_the_weights_bit_for_bit():
    layer = torch.nn.Linear(3, 2)
    ema = TrainableEMA(layer, 0.5, warmup=False)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    ema.update()
    raw = layer.weight.detach().clone()
    with ema.applied():
        torch.testing.assert_close(layer.weight, ema.shadow[0])
        with ema.applied():  # re-entrant: the inner one changes nothing, and does not restore early
            pass
        assert not torch.equal(layer.weight, raw)
    assert torch.equal(layer.weight, raw)


def test_ema_state_refuses_a_foreign_average(tmp_path):
    layer = torch.nn.Linear(3, 2)
    ema = TrainableEMA(layer, 0.9)
    ema.update()
    state = ema.state()
    other = TrainableEMA(torch.nn.Linear(3, 2), 0.9)
    other.load_state(state, tmp_path / EMA_FILE, "way out")
    assert other.updates == 1 and all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow))
    with pytest.raises(DamagedFileError, match="holds no average"):
        other.load_state(None, tmp_path / EMA_FILE, "way out")
    with pytest.raises(DamagedFileError, match="does not hold this model's"):
        TrainableEMA(torch.nn.Linear(3, 3, bias=False), 0.9).load_state(state, tmp_path / EMA_FILE, "way out")


def test_bad_values_are_config_errors():
    from lorabudget.config import load_config

    for override, field in [("optim.ema_decay=1.0", "optim.ema_decay"), ("optim.ema_decay=0", "optim.ema_decay"),
                            ("optim.rdrop_alpha=-1", "optim.rdrop_alpha")]:
        with pytest.raises(ConfigError, match=field):
            load_config(None, [override])


def test_fields_are_documented():
    from lorabudget.config.loading import describe_fields

    fields = {name: text for name, _, text in describe_fields()}
    assert "moving average" in fields["optim.ema_decay"] and "R-Drop" in fields["optim.rdrop_alpha"]
    assert "(1 + n) / (10 + n)" in fields["optim.ema_warmup"]


def test_ema_warmup_is_no_part_of_a_recipe_without_the_ema():
    from lorabudget.config import Config, recipe_settings

    assert recipe_settings(Config(optim={"ema_warmup": False})) == recipe_settings(Config())
    assert recipe_settings(Config(optim={"ema_decay": 0.99, "ema_warmup": False})) != recipe_settings(
        Config(optim={"ema_decay": 0.99}))


def test_saved_weights_are_the_ema_of_the_trained_weights(tiny_roberta, easy_csv, tmp_path):
    """With grad accumulation, the average moves once per optimizer step: the best checkpoint (and so the adapter)
    is the EMA of the weights after each step, computed here by hand; evaluation scored those weights, and the
    checkpoint keeps the trained ones for training to go on from."""
    from lorabudget.model.budget import trained_parameters
    from lorabudget.model.weights import load_trainable_state, trainable_state
    from lorabudget.train.evaluation import scores_of_every_set

    out = tmp_path / "run"
    steps = 24
    cfg = tiny_config(tiny_roberta, easy_csv, out, adapter={"dropout": 0.1},
                      optim={"max_steps": steps, "grad_accum": 2, "ema_decay": 0.9, "batch_size": 8},
                      eval={"every_steps": steps})  # one evaluation, at the end: the best is the last step
    recorded: dict[str, list] = {}

    def record_steps(recipe):
        model = recipe.accelerator.unwrap_model(recipe.model)
        recorded["init"] = trainable_state(model)
        recorded["steps"] = []
        step = recipe.optimizer.step

        def step_and_record(*args, **kwargs):
            result = step(*args, **kwargs)
            recorded["steps"].append(trainable_state(model))
            return result

        recipe.optimizer.step = step_and_record

    summary, recipe = _train(cfg, tmp_path, record_steps)
    assert len(recorded["steps"]) == steps and summary["ema"] == {"decay": 0.9, "warmup": True, "updates": steps}
    assert summary["evaluated_weights"] == "ema" and summary["best"]["step"] == steps

    expected = {n: t.clone() for n, t in recorded["init"].items()}
    for n_update, weights in enumerate(recorded["steps"]):
        decay = min(0.9, (1 + n_update) / (10 + n_update))
        expected = {n: torch.lerp(expected[n], weights[n], 1 - decay) for n in expected}
    best = load_file(out / "checkpoints" / "best" / "trainable.safetensors")
    last = load_file(out / "checkpoints" / "last" / "trainable.safetensors")
    average = load_file(out / "checkpoints" / "last" / EMA_FILE)
    assert set(best) == set(expected) and int(average.pop("#updates")) == steps
    for n in expected:
        torch.testing.assert_close(best[n], expected[n], rtol=0, atol=1e-6)
        torch.testing.assert_close(average[n], expected[n], rtol=0, atol=1e-6)
        assert torch.equal(last[n], recorded["steps"][-1][n])  # the trained weights, put back after evaluating
    assert max((best[n] - last[n]).abs().max().item() for n in best) > 1e-3  # the average is not the last step

    # Evaluation scored the average: the trained weights score another loss on the same rows ...
    model = recipe.accelerator.unwrap_model(recipe.model)
    load_trainable_state(model, last)
    raw = scores_of_every_set(recipe)
    assert abs(raw["loss"] - summary["best"]["loss"]) > 1e-4
    recipe.ema.shadow = [expected[n].clone() for n, _ in trained_parameters(model)]
    assert recipe.validate()["loss"] == pytest.approx(summary["best"]["loss"], abs=1e-6)
    # ... and what evaluate, predict and export read (the adapter, merged) reproduces the run's loss and accuracy
    import lorabudget

    logits = torch.from_numpy(lorabudget.load(out).logits(recipe.val_data))
    labels = torch.from_numpy(recipe.val_data.labels)
    assert F.cross_entropy(logits, labels).item() == pytest.approx(summary["best"]["loss"], rel=1e-4)
    assert main(["evaluate", str(out)]) == 0
    metrics = json.loads((out / "eval" / "validation" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["best"]["accuracy"], abs=1e-9)


def test_ema_restarts_with_each_self_training_round(tiny_roberta, easy_csv, tmp_path):
    target = tmp_path / "target.csv"
    target.write_text("text\n" + "\n".join(t for t, _ in make_texts(120, seed=51)) + "\n")
    cfg = tiny_config(tiny_roberta, easy_csv, tmp_path / "run", optim={"max_steps": 12, "ema_decay": 0.99},
                      eval={"every_steps": 6}, adapter={"dropout": 0.1})
    cfg["data"]["target_source"] = str(target)
    cfg["selftrain"] = {"rounds": 1, "threshold": 0.3, "epochs": 0.5}
    summary, _ = _train(cfg, tmp_path)
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "state.json").read_text())
    assert state["round"] == 1 and summary["steps"] > state["round_start"] == 12
    # the average restarted at the round's start (from the best weights, with a fresh optimizer)
    assert summary["ema"]["updates"] == summary["steps"] - state["round_start"]


# ---- R-Drop ----------------------------------------------------------------------------------------------------

def test_symmetric_kl_and_the_loss_formula():
    torch.manual_seed(0)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    p, q = a.softmax(-1), b.softmax(-1)
    by_hand = 0.5 * ((p * (p.log() - q.log())).sum(-1) + (q * (q.log() - p.log())).sum(-1)).mean()
    torch.testing.assert_close(symmetric_kl(a, b), by_hand)
    assert symmetric_kl(a, a).item() == 0.0

    labels = torch.tensor([0, 1, 2, 3, 0])
    batch = {"input_ids": torch.zeros(5, 3, dtype=torch.long), "labels": labels, "start_layer": 1}
    twice = doubled(batch)
    assert twice["input_ids"].shape == (10, 3) and twice["start_layer"] == 1
    assert torch.equal(twice["labels"], torch.cat([labels, labels]))
    # a stand-in forward whose two copies disagree, as two dropout masks make them
    loss, kl = training_loss(None, batch, forward=lambda m, x, d: torch.cat([a, b]), device=torch.device("cpu"),
                             weight=None, label_smoothing=0.0, rdrop_alpha=2.0)
    ce = 0.5 * (F.cross_entropy(a, labels) + F.cross_entropy(b, labels))
    torch.testing.assert_close(kl, by_hand)
    torch.testing.assert_close(loss, ce + 2.0 * by_hand)
    plain, none = training_loss(None, batch, forward=lambda m, x, d: a, device=torch.device("cpu"), weight=None,
                                label_smoothing=0.0, rdrop_alpha=0.0)
    assert none is None and plain.item() == pytest.approx(F.cross_entropy(a, labels).item())


@pytest.mark.parametrize("layers", ["all", [1]], ids=["token-ids", "cached-prefix"])
def test_the_two_copies_get_different_dropout_masks(layers, tiny_roberta, easy_csv, tmp_path):
    """On the model as it trains (fast dropout on the CPU; with adapters on layer 1 only, layer 0 cached): no
    dropout, the KL is 0 and the loss is plain cross-entropy; with dropout the copies' predictions differ."""
    results = {}
    for dropout in (0.0, 0.3):
        out = tmp_path / f"run-{dropout}"
        cfg = tiny_config(tiny_roberta, easy_csv, out, adapter={"dropout": dropout, "layers": layers},
                          optim={"max_steps": 2, "rdrop_alpha": 1.0}, eval={"every_steps": 2})
        _, recipe = _train(cfg, tmp_path)
        assert recipe.prefix == (0 if layers == "all" else 1)  # training then served its batches from the cache
        batch = recipe.train_source.batch(recipe._epoch_batches(0)[0])
        assert ("inputs_embeds" in batch) == (layers != "all")
        recipe.model.train()
        torch.manual_seed(1)
        loss, kl = recipe.loss(recipe.train_forward, batch)
        torch.manual_seed(1)
        logits = recipe.forward(recipe.train_forward, batch, recipe.device).float()
        results[dropout] = loss.item(), kl.item(), F.cross_entropy(logits, batch["labels"]).item()
    loss, kl, ce = results[0.0]
    assert kl == pytest.approx(0.0, abs=1e-9) and loss == pytest.approx(ce, abs=1e-6)
    loss, kl, ce = results[0.3]
    assert kl > 1e-5 and abs(loss - ce) > 1e-6


def test_rdrop_trains_records_its_kl_and_reloads(tiny_roberta, easy_csv, tmp_path, capsys):
    def run(name, **optim):
        out = tmp_path / name
        cfg = tiny_config(tiny_roberta, easy_csv, out, adapter={"dropout": 0.1},
                          optim={"max_steps": 20, **optim}, eval={"every_steps": 10})
        assert main(["train", "-c", str(write_config(tmp_path / f"{name}.yaml", cfg))]) == 0
        return out, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    out, records = run("rdrop", rdrop_alpha=1.0)
    assert "R-Drop, alpha 1.0" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rdrop_alpha"] == 1.0 and summary["best"]["accuracy"] > 0.5
    kls = [r["train_rdrop_kl"] for r in records if "train_loss" in r]
    assert len(kls) == 4 and all(kl > 0 for kl in kls)
    _, plain = run("plain")
    assert not any("train_rdrop_kl" in r for r in plain)
    assert [r["train_loss"] for r in plain if "train_loss" in r] != [r["train_loss"] for r in records
                                                                     if "train_loss" in r]
    assert main(["evaluate", str(out)]) == 0
    metrics = json.loads((out / "eval" / "validation" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["best"]["accuracy"], abs=1e-9)


# ---- both, killed and resumed ----------------------------------------------------------------------------------

def test_killed_run_with_ema_and_rdrop_resumes_bit_for_bit(tiny_roberta, easy_csv, tmp_path):
    def cfg(out):
        return tiny_config(tiny_roberta, easy_csv, out, adapter={"dropout": 0.1}, eval={"every_steps": 10},
                           optim={"max_steps": 60, "epochs": 1, "ema_decay": 0.95, "rdrop_alpha": 1.0},
                           logging={"every_steps": 5, "progress": False})

    straight = tmp_path / "straight"
    assert main(["train", "-c", str(write_config(tmp_path / "a.yaml", cfg(straight)))]) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", slow_cli(0.03), "train", "-c",
                             str(write_config(tmp_path / "b.yaml", cfg(killed)))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = killed / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if state.is_file() and json.loads(state.read_text())["step"] >= 20:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert 20 <= killed_at < 60 and (killed / "checkpoints" / "last" / EMA_FILE).is_file()

    assert main(["train", "--resume", str(killed)]) == 0
    for name in ("adapter/adapter_model.safetensors", "checkpoints/best/trainable.safetensors",
                 "checkpoints/last/trainable.safetensors", f"checkpoints/last/{EMA_FILE}"):
        a, b = load_file(straight / name), load_file(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    summaries = [json.loads((run / "summary.json").read_text()) for run in (straight, killed)]
    assert summaries[0]["best"] == summaries[1]["best"] and summaries[0]["ema"] == summaries[1]["ema"]
    records = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
               for run in (straight, killed)]
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]]
    for ra, rb in zip(*records):
        for key in ("val_loss", "train_loss", "train_rdrop_kl"):
            if key in ra:
                assert ra[key] == rb[key], (key, ra, rb)


def test_two_processes_keep_one_average_and_score_with_it(tiny_roberta, easy_csv, tmp_path):
    """Under torchrun each process keeps its own average (equal, as DDP keeps the weights equal) and scores its
    share of the validation rows with it; the main process writes it. The gathered loss is then the loss of the
    shipped adapter on every row."""
    import lorabudget
    from lorabudget.config import load_config
    from lorabudget.data import load_training_data

    out = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tiny_roberta, easy_csv, out, adapter={"dropout": 0.1},
                                                          optim={"ema_decay": 0.9, "rdrop_alpha": 1.0},
                                                          eval={"every_steps": 12}))
    torchrun_train(cfg, tmp_path, max_steps=12)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["ema"]["updates"] == 12 and summary["best"]["step"] == 12
    best, average = (load_file(out / "checkpoints" / name) for name in ("best/trainable.safetensors",
                                                                         f"last/{EMA_FILE}"))
    assert all(torch.equal(best[n], average[n]) for n in best)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_rdrop_kl"] > 0 for r in records if "train_loss" in r] == [True] * 3  # steps 5, 10, 12

    clf = lorabudget.load(out)
    validation = load_training_data(load_config(out / "config.yaml")).split.validation
    data = clf.tokenize(validation.texts, validation.labels)
    logits = torch.from_numpy(clf.logits(data))
    assert F.cross_entropy(logits, torch.from_numpy(data.labels)).item() == pytest.approx(summary["best"]["loss"],
                                                                                          rel=1e-4)
