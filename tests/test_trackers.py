"""Experiment trackers (`logging.trackers`): MLflow and W&B (offline) get the config, every metrics record and the
summary, for real, in stores inside the run directory; a missing package is a clear error before training; the
deprecated `logging.tensorboard: true` still means TensorBoard (tests/test_variants.py trains with it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import tiny_config, write_config

from lorabudget.cli import main
from lorabudget.config import Config
from lorabudget.config.loading import dump_config
from lorabudget.config.schema import LoggingConfig
from lorabudget.rundir import RunDir
from lorabudget.train.trackers import flat_config, summary_metrics, wandb_kwargs


def train_with(tmp_path, model, data, trackers, **logging) -> Path:
    out = tmp_path / "run"
    cfg = tiny_config(model, data, out, optim={"max_steps": 6}, eval={"every_steps": 3},
                      logging={"trackers": trackers, "every_steps": 2, "progress": False, **logging})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    return out


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def history(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if key in r]


def assert_same_history(logged: list[tuple[int, float]], records: list[dict], key: str) -> None:
    """A tracker's (step, value) pairs of `key` are metrics.jsonl's."""
    expected, logged = history(records, key), sorted(logged)
    assert expected, key
    assert [s for s, _ in logged] == [s for s, _ in expected], key
    assert [v for _, v in logged] == pytest.approx([v for _, v in expected]), key


# ---- MLflow -------------------------------------------------------------------------------------------------

def mlflow_run(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_mlflow_gets_config_metrics_and_summary(tiny_roberta, easy_csv, tmp_path, monkeypatch):
    import mlflow  # noqa: F401  (the test extra installs it: a missing package fails here, never skips)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = train_with(tmp_path, tiny_roberta, easy_csv, ["mlflow"])
    summary, records = json.loads((out / "summary.json").read_text()), jsonl(out / "metrics.jsonl")

    client, run = mlflow_run(f"sqlite:///{out / 'mlflow' / 'mlflow.db'}", "lorabudget")
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["adapter.r"] == "4" and params["optim.max_steps"] == "6"
    assert params["logging.trackers"] == '["mlflow"]' and params["model.precision"] == "fp32"
    for key in ("val_accuracy", "val_loss", "train_loss", "lr"):
        assert_same_history([(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)], records, key)
    assert [s for s, _ in history(records, "val_accuracy")] == [3, 6]
    metrics = run.data.metrics  # the latest value of each
    assert metrics["best_accuracy"] == pytest.approx(summary["best"]["accuracy"])
    assert metrics["final_accuracy"] == pytest.approx(summary["final"]["accuracy"])
    assert metrics["best_step"] == summary["best"]["step"]
    assert metrics["trainable_params"] == summary["trainable_params"]
    assert metrics["train_seconds"] == pytest.approx(summary["train_seconds"])


def test_mlflow_follows_tracking_uri_and_project(tiny_roberta, easy_csv, tmp_path, monkeypatch):
    import mlflow  # noqa: F401  (the test extra installs it: a missing package fails here, never skips)
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = train_with(tmp_path, tiny_roberta, easy_csv, ["mlflow", "tensorboard"], project="agnews-lora")
    _, run = mlflow_run(uri, "agnews-lora")
    assert run.info.run_name == "run" and run.data.metrics["trainable_params"] > 0
    assert not (out / "mlflow").exists()
    assert list((out / "tensorboard" / "agnews-lora").rglob("events.out.tfevents.*"))


def test_overwrite_replaces_a_run_with_tracker_folders(tiny_roberta, easy_csv, tmp_path, monkeypatch):
    import mlflow  # noqa: F401  (the test extra installs it: a missing package fails here, never skips)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = train_with(tmp_path, tiny_roberta, easy_csv, ["mlflow"])
    assert (out / "mlflow").is_dir()
    assert main(["train", "-c", str(tmp_path / "c.yaml"), "--overwrite"]) == 0


# ---- W&B ----------------------------------------------------------------------------------------------------

def wandb_records(path: Path):
    """The records of a W&B run file (`run-ID.wandb`): a 7-byte header, then LevelDB's log format (32 KiB blocks
    of chunks: crc32, length, type) around protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_holds_config_and_history(tiny_roberta, easy_csv, tmp_path, monkeypatch):
    import wandb  # noqa: F401  (the test extra installs it)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_DIR", raising=False)
    out = train_with(tmp_path, tiny_roberta, easy_csv, ["wandb"])
    summary, records = json.loads((out / "summary.json").read_text()), jsonl(out / "metrics.jsonl")

    [run_file] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    rows, config, name = {}, {}, None
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            name = record.run.display_name
            config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            row = {(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            rows.setdefault(row["_step"], {}).update(row)
    assert name == "run"
    assert config["adapter.r"] == 4 and config["logging.project"] == "lorabudget"
    for key in ("val_accuracy", "train_loss", "lr"):
        assert_same_history([(step, row[key]) for step, row in rows.items() if key in row], records, key)
    assert rows[6]["best_accuracy"] == pytest.approx(summary["best"]["accuracy"])
    assert rows[6]["final_accuracy"] == pytest.approx(summary["final"]["accuracy"])
    assert rows[6]["trainable_params"] == summary["trainable_params"]


def test_wandb_is_offline_unless_wandb_mode_says_otherwise(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "my-run")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    kwargs = wandb_kwargs(run)
    assert kwargs["mode"] == "offline" and kwargs["name"] == "my-run" and kwargs["dir"] == str(run.path)
    monkeypatch.setenv("WANDB_MODE", "online")
    assert "mode" not in wandb_kwargs(run)  # wandb reads WANDB_MODE itself


# ---- setup checks and the config ------------------------------------------------------------------------------

@pytest.mark.parametrize("tracker", ["mlflow", "wandb", "tensorboard"])
def test_missing_package_is_a_config_error_before_training(tracker, tiny_roberta, easy_csv, tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import tracker` now raises ImportError
    out = tmp_path / "run"
    cfg = tiny_config(tiny_roberta, easy_csv, out, optim={"max_steps": 6}, logging={"trackers": [tracker]})
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", cfg))]) != 0
    err = capsys.readouterr().err
    assert f"pip install lorabudget[{tracker}]" in err and "Traceback" not in err
    assert not (out / "metrics.jsonl").exists() and not (out / "config.yaml").exists()


def test_tensorboard_flag_is_an_alias_for_the_tracker():
    assert LoggingConfig(tensorboard=True).trackers == ["tensorboard"]
    both = LoggingConfig(tensorboard=True, trackers=["mlflow", "tensorboard", "mlflow"])
    assert both.trackers == ["mlflow", "tensorboard"] and both.tensorboard is False
    cfg = Config.model_validate({"logging": {"tensorboard": True}})
    assert "- tensorboard" in dump_config(cfg)  # config.yaml says it the new way
    cfg.logging.tensorboard = True  # assignment validates too
    assert cfg.logging.trackers == ["tensorboard"] and not cfg.logging.tensorboard


def test_flat_config_and_summary_metrics():
    flat = flat_config(Config.model_validate({"adapter": {"rank_pattern": {"value": 8}}}))
    assert flat["adapter.rank_pattern"] == '{"value": 8}' and flat["logging.trackers"] == "[]"
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert "model.name" in flat and "optim.lr" in flat and not any(isinstance(v, dict) for v in flat.values())
    summary = {"best": {"step": 6, "metric": "accuracy", "accuracy": 0.5}, "final": {"step": 6, "accuracy": 0.25},
               "trainable_params": 10, "train_seconds": 1.5, "stopped_early": False, "steps": 6}
    assert summary_metrics(summary) == {"best_step": 6, "best_accuracy": 0.5, "final_step": 6, "final_accuracy": 0.25,
                                        "trainable_params": 10, "train_seconds": 1.5, "steps": 6}
