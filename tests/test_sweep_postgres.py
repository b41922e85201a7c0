"""Two sweep workers share one study through a real PostgreSQL server: the trials split between them, none
lost and none run twice, and the study stops at exactly --trials.

The test starts its own throwaway cluster (initdb + pg_ctl on a free loopback port, in a temporary folder) and
stops it at the end. It needs the server binaries (Debian's `postgresql` package, which .ci/run installs);
without them it fails, on purpose: a skipped test would hide that multi-machine sweeps went untested.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import slow_cli, tiny_config, write_config

# A worker: each optimizer step slowed a little, so that both workers are busy at once, and a start line: the
# slow imports happen first, then each waits for the test's "go", so that neither has the study to itself.
WORKER = slow_cli(0.05, before_main="""
import optuna, lorabudget.train.recipe, lorabudget.tools.sweep
barrier = os.environ["SWEEP_BARRIER"]
open(os.path.join(barrier, f"ready-{os.getpid()}"), "w").close()
while not os.path.exists(os.path.join(barrier, "go")):
    time.sleep(0.05)
""")



def _pg_bin(name: str) -> str:
    installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)  # newest version first
    found = shutil.which(name) or (installed[0] if installed else None)
    if found is None:
        pytest.fail(f"PostgreSQL server binary {name!r} not found (neither on PATH nor in "
                    "/usr/lib/postgresql/*/bin): install Debian's `postgresql` package (`apt-get install "
                    "postgresql`; .ci/run does)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A fresh cluster; yields a SQLAlchemy URL. initdb and the server refuse to run as root: as root, run
    them as the `postgres` user, in a folder it owns."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="lorabudget-pg-"))
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, but there is no `postgres` user to run the server as")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()

    def run(*cmd: str) -> None:
        proc = subprocess.run([*as_user, *cmd], check=False, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"

    run(initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    run(pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "-t", "60", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       check=False, capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_study(postgres_url, tiny_roberta, easy_csv, tmp_path):
    import optuna
    from optuna.trial import TrialState

    cfg = tiny_config(tiny_roberta, easy_csv, tmp_path / "unused", budget=4000, eval={"every_steps": 10},
                      optim={"max_steps": 20, "epochs": 1})
    base = write_config(tmp_path / "base.yaml", cfg)
    space = tmp_path / "space.yaml"
    params = {"adapter.r": {"type": "categorical", "choices": [2, 4, 8]},
              "optim.lr": {"type": "loguniform", "low": 3e-3, "high": 3e-2}}
    space.write_text(yaml.safe_dump({"params": params}, sort_keys=False))
    out = tmp_path / "sweep"
    args = ["sweep", "-c", str(base), "--space", str(space), "--trials", "4", "--out", str(out),
            "--storage", postgres_url, "--study", "shared", "--heartbeat", "2"]
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "SWEEP_BARRIER": str(barrier)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    deadline = time.time() + 240
    while len(list(barrier.glob("ready-*"))) < 2:
        assert all(w.poll() is None for w in workers), [w.communicate()[0][-3000:] for w in workers]
        assert time.time() < deadline, "the workers did not start"
        time.sleep(0.05)
    (barrier / "go").touch()
    for w in workers:
        output, _ = w.communicate(timeout=max(1.0, deadline - time.time()))
        assert w.returncode == 0, output[-3000:]

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 4
    # both workers took trials (hostname:pid per trial)
    assert len({t.user_attrs["worker"] for t in done}) == 2, [t.user_attrs["worker"] for t in done]
    # none run twice: one run dir per trial, each finished, and no other trained run dir
    run_dirs = [t.user_attrs["run_dir"] for t in done]
    assert len(set(run_dirs)) == 4
    for t in done:
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["trainable_params"] == t.user_attrs["trainable_params"]
    assert sorted(str(p.parent) for p in (out / "trials").glob("*/summary.json")) == sorted(run_dirs)
    # none lost: any other trial is one that stood back untrained (a race for the last slot), nothing else
    for t in trials:
        if t not in done:
            assert t.state == TrialState.FAIL and t.user_attrs.get("skipped", "").startswith("surplus"), t
