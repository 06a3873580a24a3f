"""The local servers' command line as a user runs it: start (PostgreSQL and an MLflow server on 127.0.0.1), status,
env (what workers export), stop, each a real process, the servers really answering in between."""
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy

from captioning.serving.infra import InfraError, free_port, postgres_bin


def _postgres_installed() -> bool:
    try:
        postgres_bin()
        return True
    except InfraError:
        return False


# CI installs PostgreSQL (.ci/run) and sets CAPTIONING_REQUIRE_POSTGRES=1, so there a missing server fails.
pytestmark = pytest.mark.skipif(not _postgres_installed() and not os.environ.get("CAPTIONING_REQUIRE_POSTGRES"),
                                reason="PostgreSQL server not installed (apt-get install postgresql)")


def _infra(root, *command):
    return subprocess.run([sys.executable, "-m", "captioning.serving.infra", *command, "--dir", str(root)],
                          capture_output=True, text=True, timeout=300)


def test_start_status_env_stop():
    base = Path(tempfile.mkdtemp(prefix="captioning-infra-cli-", dir="/tmp"))
    base.chmod(0o755)  # PostgreSQL runs as its own user when the tests run as root
    root = base / "infra"
    before = _infra(root, "status")
    assert before.returncode == 2 and "nothing was set up" in before.stderr and "infra start --dir" in before.stderr
    pg_port, mlflow_port = free_port(), free_port()
    started = subprocess.run([sys.executable, "-m", "captioning.serving.infra", "start", "--dir", str(root),
                              "--pg-port", str(pg_port), "--mlflow-port", str(mlflow_port)],
                             capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        assert f"127.0.0.1:{pg_port}" in started.stdout and "***" in started.stdout  # the password never printed
        status = _infra(root, "status")
        assert status.returncode == 0 and "PostgreSQL  running" in status.stdout
        assert f"MLflow      running at http://127.0.0.1:{mlflow_port}" in status.stdout
        env = _infra(root, "env")
        exports = dict(line.removeprefix("export ").split("=", 1) for line in env.stdout.splitlines())
        storage, tracking = exports["CAPTIONING_STORAGE"].strip("'"), exports["MLFLOW_TRACKING_URI"].strip("'")
        with sqlalchemy.create_engine(storage).connect() as connection:  # what a worker's Optuna storage opens
            assert connection.execute(sqlalchemy.text("select 1")).scalar() == 1
        with urllib.request.urlopen(f"{tracking}/health", timeout=30) as answer:
            assert answer.status == 200
    finally:
        stopped = _infra(root, "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr[-2000:]
    after = _infra(root, "status")
    assert "PostgreSQL  stopped" in after.stdout and "MLflow      stopped" in after.stdout
    shutil.rmtree(base, ignore_errors=True)
