"""A local try-out of the multi-worker set-up: PostgreSQL (Debian's package) for the Optuna study and an MLflow
tracking server with a PostgreSQL backend store and a local artifact root, both bound to 127.0.0.1.

    python -m captioning.serving.infra start          # initialise (first time) and start both; prints what workers need
    eval "$(python -m captioning.serving.infra env)"  # export CAPTIONING_STORAGE and MLFLOW_TRACKING_URI in this shell
    python tuning/search.py --study NAME  # run this in as many shells as you like: one shared study
    python -m captioning.serving.infra status
    python -m captioning.serving.infra stop

State lives in ./infra (git-ignored): the database cluster, the artifact store, logs and a password file readable
only by you. On a real cluster the same three things are a managed PostgreSQL, a tracking server every worker can
reach and an artifact store they share (see the README's "Many workers" section).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DEFAULT_DIR = Path("infra")  # in the directory the command runs from, beside ./mlflow.db and ./optuna.db
USER = "captioning"
DATABASES = ("optuna", "mlflow")


class InfraError(RuntimeError):
    """The local infrastructure cannot be started or reached; the message says why and what to do."""


@dataclasses.dataclass
class Infra:
    root: Path
    pg_port: int = 5432
    mlflow_port: int = 5000
    password: str = ""

    @property
    def data(self) -> Path:
        return self.root / "postgres"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def database_url(self, database: str) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.pg_port}/{database}"

    @property
    def storage(self) -> str:
        return self.database_url("optuna")

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def save(self) -> None:
        _write_private(self.root / "infra.json", json.dumps({"pg_port": self.pg_port, "mlflow_port": self.mlflow_port,
                                                            "password": self.password}))

    @classmethod
    def load(cls, root: Path) -> "Infra":
        state = root / "infra.json"
        if not state.is_file():
            raise InfraError(f"nothing was set up in {root}; run: python -m captioning.serving.infra start "
                             f"--dir {root}")
        return cls(root=root, **json.loads(state.read_text()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("start", "stop", "status", "env"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the state lives (default: ./infra)")
    parser.add_argument("--pg-port", type=int, default=5432, help="PostgreSQL port, first start only "
                        "(default: 5432)")
    parser.add_argument("--mlflow-port", type=int, default=5000, help="tracking server port, first start only "
                        "(default: 5000)")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(_describe(start(args.dir, args.pg_port, args.mlflow_port)))
        elif args.command == "stop":
            stop(args.dir)
            print("stopped")
        elif args.command == "env":
            infra = Infra.load(args.dir.resolve())
            print(f"export CAPTIONING_STORAGE='{infra.storage}'\nexport MLFLOW_TRACKING_URI='{infra.tracking_uri}'")
        else:
            infra = Infra.load(args.dir.resolve())
            up = _postgres_running(infra, postgres_bin())
            print(f"PostgreSQL  {'running' if up else 'stopped'}\n"
                  f"MLflow      {'running' if _healthy(infra) else 'stopped'} at {infra.tracking_uri}")
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _describe(infra: Infra) -> str:
    from captioning.core.tracking import redact

    option = "" if infra.root == DEFAULT_DIR.resolve() else f" --dir {infra.root}"
    return (f"PostgreSQL  {redact(infra.storage)}  (data: {infra.data})\n"
            f"MLflow      {infra.tracking_uri}  (backend: {redact(infra.database_url('mlflow'))}, "
            f"artifacts: {infra.artifacts})\n\n"
            "Workers (in as many shells as you like; the password stays out of the command line):\n"
            f"  eval \"$(python -m captioning.serving.infra env{option})\"\n"
            "  python tuning/search.py --study NAME [--data PATH] [--trials N]\n"
            f"Browse: open {infra.tracking_uri}")


def start(root: Path = DEFAULT_DIR, pg_port: int = 5432, mlflow_port: int = 5000) -> Infra:
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if (root / "infra.json").is_file():
        infra = Infra.load(root)
    else:
        infra = Infra(root, pg_port, mlflow_port, secrets.token_urlsafe(18))
        infra.save()
    start_postgres(infra)
    start_mlflow(infra)
    return infra


def start_postgres(infra: Infra) -> None:
    bindir = postgres_bin()
    if not (infra.data / "PG_VERSION").is_file():
        _initialise(infra, bindir)
    if not _postgres_running(infra, bindir):
        _run([str(bindir / "pg_ctl"), "-D", str(infra.data), "-l", str(infra.data / "server.log"), "-w",
              "-t", "60", "start"], f"starting PostgreSQL (its log: {infra.data / 'server.log'})")
    _create_databases(infra)


def postgres_bin() -> Path:
    """The PostgreSQL server programs (Debian keeps them out of PATH, under /usr/lib/postgresql/VERSION/bin)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise InfraError("the PostgreSQL server is not installed; on Debian or Ubuntu: apt-get install postgresql "
                     "(or point --storage at a PostgreSQL server you already have)")


def _initialise(infra: Infra, bindir: Path) -> None:
    infra.data.mkdir(parents=True)
    password_file = infra.root / "initdb.pw"
    _write_private(password_file, infra.password)
    if os.geteuid() == 0:
        import pwd

        owner = pwd.getpwnam("postgres")
        for path in (infra.data, password_file):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        for parent in [infra.root, *infra.root.parents]:
            if not os.stat(parent).st_mode & 0o001:
                raise InfraError(f"PostgreSQL runs as the postgres user, which cannot enter {parent}; choose "
                                 "another place with --dir (e.g. /var/tmp/captioning-infra)")
    try:
        _run([str(bindir / "initdb"), "-D", str(infra.data), "-U", USER, f"--pwfile={password_file}",
              "--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions"], "initialising the database cluster")
    finally:
        password_file.unlink()
    with open(infra.data / "postgresql.conf", "a") as conf:
        conf.write(f"\n# captioning: loopback only\nlisten_addresses = '127.0.0.1'\nport = {infra.pg_port}\n"
                   f"unix_socket_directories = '{infra.data}'\nmax_connections = 200\n")


def _write_private(path: Path, text: str) -> None:
    """A file only its owner can read, from its first byte."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # also when an older file was there
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _run(command: list[str], what: str) -> None:
    # (A server started here must not inherit a pipe: pg_ctl is given a log file, -l, for that.)
    done = subprocess.run(_as_owner(command), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise InfraError(f"{what} failed ({' '.join(command[:2])}):\n{(done.stderr or done.stdout).strip()}")


def _as_owner(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the `postgres` user the Debian package creates."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def _postgres_running(infra: Infra, bindir: Path) -> bool:
    return subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(infra.data), "status"]),
                          capture_output=True).returncode == 0


def _create_databases(infra: Infra) -> None:
    import psycopg

    with psycopg.connect(infra.database_url("postgres"), autocommit=True) as connection:
        for name in DATABASES:
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                connection.execute(f'CREATE DATABASE "{name}"')
    # Optuna's tables, created once here rather than by several workers racing on a fresh database.
    import optuna

    optuna.storages.RDBStorage(infra.storage).engine.dispose()


def start_mlflow(infra: Infra, timeout: float = 180) -> None:
    if _healthy(infra):
        return
    infra.artifacts.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    with open(infra.root / "mlflow-server.log", "a") as log:
        process = subprocess.Popen(
            [str(mlflow) if mlflow.exists() else "mlflow", "server", "--host", "127.0.0.1",
             "--port", str(infra.mlflow_port), "--workers", "2", "--artifacts-destination", str(infra.artifacts)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=infra.root,
            # The database URL (with its password) goes in the environment, where `ps` does not show it; the
            # server's background job runner serves GenAI features this project does not use: 8 more processes.
            env={**os.environ, "MLFLOW_BACKEND_STORE_URI": infra.database_url("mlflow"),
                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    (infra.root / "mlflow-server.pid").write_text(str(process.pid))
    deadline = time.time() + timeout
    while not _healthy(infra):
        if process.poll() is not None or time.time() > deadline:
            raise InfraError(f"the MLflow server did not come up on {infra.tracking_uri}; see "
                             f"{infra.root / 'mlflow-server.log'}")
        time.sleep(0.5)


def _healthy(infra: Infra) -> bool:
    try:
        with urllib.request.urlopen(f"{infra.tracking_uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop(root: Path = DEFAULT_DIR) -> None:
    infra = Infra.load(root.resolve())
    pid_file = infra.root / "mlflow-server.pid"
    if pid_file.is_file():
        _stop_group(int(pid_file.read_text()))
        pid_file.unlink()
    bindir = postgres_bin()
    if _postgres_running(infra, bindir):
        _run([str(bindir / "pg_ctl"), "-D", str(infra.data), "-m", "fast", "-w", "stop"], "stopping PostgreSQL")


def _stop_group(pid: int, patience: float = 15) -> None:
    """SIGTERM to the server's process group, then SIGKILL to whatever is left of it after `patience` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.time() + patience
        while time.time() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it if this process started it
            except ChildProcessError:
                pass
            os.killpg(pid, 0)  # raises once the whole group is gone
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def restart_postgres(infra: Infra) -> None:
    """Stop and start the database server, as a crash-and-recover or maintenance restart would."""
    _run([str(postgres_bin() / "pg_ctl"), "-D", str(infra.data), "-l", str(infra.data / "server.log"), "-m",
          "fast", "-w", "restart"], "restarting PostgreSQL")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
