"""Faults of the machine, one table row each: a damaged file, a full disk, two writers on one run directory, SIGINT
and SIGTERM. Each ends with a clear message (no traceback), its exit status and its state in status.json, leaves
nothing that looks finished and no temporary file, and a resume afterwards reproduces the uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import one_torch_thread, slow_cli, tiny_config, write_config

from lorabudget.cli import main

SLOW_TRAIN = slow_cli(0.03)


def _cfg(tiny_roberta, easy_csv, out, **extra):
    return tiny_config(tiny_roberta, easy_csv, out, adapter={"dropout": 0.1}, eval={"every_steps": 10},
                       optim={"max_steps": 60, "epochs": 1}, logging={"every_steps": 5, "progress": False}, **extra)


def _final(run: Path):
    s = json.loads((run / "summary.json").read_text())
    return s["best"], s["final"], s["steps"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def _leftover_temporaries(run: Path) -> list[str]:
    return [str(p.relative_to(run)) for p in run.rglob("*") if ".tmp" in p.name]


def assert_same_as_straight(run: Path, straight: Path) -> None:
    """Final figures and the metrics log (every step once, each value as in the uninterrupted run)."""
    assert _final(run) == _final(straight)
    a, b = _metrics(straight), _metrics(run)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "lr", "val_accuracy", "val_loss"):
            if key in ra:
                assert abs(ra[key] - rb[key]) < 1e-6, (key, ra, rb)


@pytest.fixture(scope="module")
def straight(tiny_roberta, easy_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    with one_torch_thread():  # compared bit for bit with runs resumed at one thread
        assert main(["train", "-c", str(write_config(out.parent / "c.yaml", _cfg(tiny_roberta, easy_csv, out)))]) == 0
    return out


def _start(cfg: Path, *args: str, before_main: str = "") -> subprocess.Popen:
    code = slow_cli(0.03, before_main) if before_main else SLOW_TRAIN
    return subprocess.Popen([sys.executable, "-c", code, "train", "-c", str(cfg), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int) -> None:
    state = run / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if json.loads(state.read_text())["step"] >= step:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at step {step} within 240 s")


# ---- interrupts ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_at_a_safe_point_and_resume_continues_exactly(sig, code, tiny_roberta, easy_csv, tmp_path,
                                                                      straight):
    run = tmp_path / "run"
    proc = _start(write_config(tmp_path / "c.yaml", _cfg(tiny_roberta, easy_csv, run)))
    _wait_for_step(proc, run, 12)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    err = proc.stderr.read()
    assert f"stopped by {sig.name} at step" in err and f"--resume {run}" in err and "Traceback" not in err, err
    status = _status(run)
    assert status["state"] == "interrupted" and sig.name in status["reason"]
    # the checkpoint is the step it stopped at (mid-way between evaluations, most likely), not the one before
    stopped_at = json.loads((run / "checkpoints" / "last" / "state.json").read_text())["step"]
    assert status["step"] == stopped_at and 12 < stopped_at < 60
    assert not (run / "summary.json").exists() and not (run / "adapter").exists()
    assert _leftover_temporaries(run) == []
    assert main(["evaluate", str(run)]) == 2  # stopped, not finished, and no longer being written

    assert main(["train", "--resume", str(run)]) == 0
    assert_same_as_straight(run, straight)


# ---- damaged files ---------------------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: a file that still parses, with a wrong value in it
    path.write_bytes(bytes(data))


DAMAGES = {"truncated": _truncate, "garbled": _garble, "deleted": Path.unlink}


@pytest.fixture(scope="module")
def interrupted_run(tiny_roberta, easy_csv, tmp_path_factory) -> Path:
    """A run stopped by SIGTERM after step 25: checkpoints/last at that step, checkpoints/previous before it."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    proc = _start(write_config(run.parent / "c.yaml", _cfg(tiny_roberta, easy_csv, run)))
    _wait_for_step(proc, run, 25)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert (run / "checkpoints" / "previous").is_dir()
    return run


@pytest.mark.parametrize("file, damage", [
    ("trainable.safetensors", "truncated"), ("trainable.safetensors", "garbled"), ("optimizer.pt", "truncated"),
    ("rng.safetensors", "deleted"), ("state.json", "truncated"), ("manifest.json", "deleted"),
])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(file, damage, interrupted_run, tmp_path, straight,
                                                                  capsys):
    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    DAMAGES[damage](run / "checkpoints" / "last" / file)
    previous = json.loads((run / "checkpoints" / "previous" / "state.json").read_text())["step"]
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr()
    assert f"resuming from the previous checkpoint instead (step {previous})" in out.out + out.err
    assert str(run / "checkpoints" / "last") in out.out + out.err
    assert_same_as_straight(run, straight)


def test_both_checkpoints_damaged_is_a_clear_error(interrupted_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    _truncate(run / "checkpoints" / "last" / "trainable.safetensors")
    _garble(run / "checkpoints" / "previous" / "optimizer.pt")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "checkpoints/previous/optimizer.pt is damaged" in err and "--overwrite" in err, err
    assert "Traceback" not in err
    assert _status(run)["state"] == "interrupted" and not (run / "summary.json").exists()


@pytest.mark.parametrize("file, damage, command, expected", [
    ("adapter/adapter_model.safetensors", "truncated", "evaluate", "adapter_model.safetensors is damaged"),
    ("adapter/adapter_config.json", "truncated", "predict", "adapter cannot be loaded"),
    ("labels.json", "truncated", "evaluate", "labels.json is damaged"),
    ("config.yaml", "garbled", "evaluate", "config.yaml"),
    ("split.json", "deleted", "evaluate", "split.json is missing"),
    ("adapter/adapter_model.safetensors", "deleted", "export", "holds no adapter_model.safetensors"),
])
def test_a_damaged_run_file_is_a_clear_error(file, damage, command, expected, trained_run, easy_csv, tmp_path,
                                             capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = run / file
    if damage == "garbled" and path.suffix == ".yaml":  # a YAML file garbled where the parser sees it
        path.write_text(path.read_text().replace(":", " [", 1))
    else:
        DAMAGES[damage](path)
    argv = {"evaluate": ["evaluate", str(run)],
            "predict": ["predict", str(run), "--data", str(easy_csv), "--out", str(tmp_path / "p.csv")],
            "export": ["export", str(run), "--merged", str(tmp_path / "merged")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "merged").exists()


def test_a_report_leaves_out_a_run_with_a_damaged_summary_and_says_why(trained_run, straight, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _truncate(run / "summary.json")
    assert main(["report", str(run), str(straight), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.md").read_text()
    assert "summary.json is damaged" in page


def test_a_damaged_token_cache_is_rebuilt(tiny_roberta, tmp_path):
    from lorabudget.model.backbone import load_tokenizer
    from lorabudget.runtime.tokens import cache_dir, tokenize

    tok = load_tokenizer(str(tiny_roberta))
    texts = ["stocks rally as rates fall", "the team wins the final"]
    first = tokenize(texts, None, tok, 16, progress=False)
    (entry,) = (cache_dir() / "tokens").glob("*.npz")
    _truncate(entry)
    again = tokenize(texts, None, tok, 16, progress=False)
    assert [list(x) for x in again.ids] == [list(x) for x in first.ids]
    with __import__("numpy").load(entry) as z:  # rewritten whole
        assert len(z["offsets"]) == 3


# ---- a full disk -----------------------------------------------------------------------------------------------
def _mount_small_disk(folder: Path) -> bool:
    """A 24 MiB tmpfs at `folder` (root only); False when this machine does not allow it."""
    folder.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "lorabudget-test", str(folder)],
                          capture_output=True).returncode == 0


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("fault", ["disk-full", "file-size-limit"])
def test_a_refused_write_fails_the_run_clearly_and_resume_continues_once_it_is_fixed(fault, tiny_roberta, easy_csv,
                                                                                   tmp_path, straight):
    """disk-full: a 24 MiB tmpfs that fills mid-run (ENOSPC; root only, as in CI: without root the row checks the
    size limit instead). file-size-limit: RLIMIT_FSIZE below the checkpoint's optimizer state (EFBIG), so the very
    first checkpoint is refused and the run has none to keep."""
    disk = tmp_path / "disk"
    mounted = fault == "disk-full" and _mount_small_disk(disk)
    disk.mkdir(exist_ok=True)
    run = disk / "run"
    cfg = write_config(tmp_path / "c.yaml", _cfg(tiny_roberta, easy_csv, run))
    try:
        if mounted:  # the disk fills mid-run, as it does when something else writes to it
            proc = _start(cfg)
            _wait_for_step(proc, run, 15)
            filler = _fill(disk)
            reason = "No space left on device"
        else:
            limit = (straight / "checkpoints" / "last" / "optimizer.pt").stat().st_size - 1
            proc = _start(cfg, before_main=f"import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                                           f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))")
            filler, reason = None, "File too large"
        assert proc.wait(timeout=240) == 2
        err = proc.stderr.read()
        assert "could not write" in err and reason in err and "free there" in err, err
        assert f"--resume {run}" in err and "Traceback" not in err, err
        status = _status(run)
        assert status["state"] == "failed" and reason in status["reason"]
        assert not (run / "summary.json").exists() and _leftover_temporaries(run) == []
        if mounted:  # the last good checkpoint is intact: it verifies against its manifest
            from lorabudget.model.weights import verify

            verify(run / "checkpoints" / "last", "")
            assert json.loads((run / "checkpoints" / "last" / "state.json").read_text())["step"] >= 15
            filler.unlink()
        else:
            assert "it has no checkpoint yet" in err and not (run / "checkpoints" / "last").exists()
        assert main(["train", "--resume", str(run)]) == 0
        assert_same_as_straight(run, straight)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


# ---- two writers -----------------------------------------------------------------------------------------------
def test_a_second_writer_refuses_at_once_and_a_reader_still_works(tiny_roberta, easy_csv, tmp_path, capsys,
                                                                   straight):
    run = tmp_path / "run"
    first = write_config(tmp_path / "a.yaml", _cfg(tiny_roberta, easy_csv, run, seed=0))
    second = write_config(tmp_path / "b.yaml", _cfg(tiny_roberta, easy_csv, run, seed=1))
    proc = _start(first)
    _wait_for_step(proc, run, 10)
    config_before = (run / "config.yaml").read_text()
    for argv in (["train", "-c", str(second)], ["train", "-c", str(second), "--overwrite"],
                 ["train", "--resume", str(run)]):
        started = time.monotonic()
        assert main(argv) == 2, argv
        assert time.monotonic() - started < 15  # at once: it does not wait for the holder
        err = capsys.readouterr().err
        assert "is being written by another lorabudget process" in err and f"pid {proc.pid}" in err, err
        assert (run / "config.yaml").read_text() == config_before
    # a reader works on the run meanwhile, from its best checkpoint so far, and says so
    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "still being written" in out and "best checkpoint so far" in out
    assert main(["report", str(run), str(straight), "--out", str(tmp_path / "report")]) == 0
    assert f"still running (pid {proc.pid}" in (tmp_path / "report" / "report.md").read_text()
    assert proc.wait(timeout=240) == 0, proc.stderr.read()[-3000:]
    assert _status(run)["state"] == "finished"
    assert "seed: 0" in (run / "config.yaml").read_text()
    # once the writer is gone, the lock is free: a new writer may replace the run
    assert main(["train", "-c", str(second), "--overwrite", "--max-steps", "2"]) == 0
    assert "seed: 1" in (run / "config.yaml").read_text()


def test_an_export_into_a_run_dir_is_a_writer_of_that_run(trained_run, tmp_path, capsys):
    """Exporting into the run directory takes the run's lock (refused while another process writes the run);
    exporting elsewhere writes only its own folder and goes ahead."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom lorabudget.runlock import RunLock\n"
                               f"with RunLock({str(run)!r}, 'holder'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["export", str(run), "--adapter", str(run / "exported")]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err and not (run / "exported").exists()
        assert main(["export", str(run), "--adapter", str(tmp_path / "elsewhere")]) == 0
    finally:
        holder.kill()
        holder.wait()
    assert main(["export", str(run), "--adapter", str(run / "exported")]) == 0  # the lock died with its holder
