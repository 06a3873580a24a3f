"""What the workers of one study share beyond Optuna's tables: a lock in the study's own database for the few steps
that must happen once (creating the MLflow parent run, starting a trial when only a few are left, registering the
champion), retries while that database restarts, and a heartbeat that tells the others a trial's process is alive.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from typing import Callable, Iterator, TypeVar

from captioning.config import ConfigError
from captioning.serving import redact

T = TypeVar("T")
PATIENCE_SECONDS = 600.0  # how long a worker waits for its database to come back before giving up


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def shared(storage: str) -> bool:
    """Whether several worker processes may run the study: a database server, not a local SQLite file."""
    return not storage.startswith("sqlite:")


def check_storage(storage: str) -> None:
    scheme = storage.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported --storage {redact(storage)}: use sqlite:///FILE (one worker) or "
                          "postgresql://USER:PASSWORD@HOST/DB (any number of workers)")


def unreachable(exc: BaseException) -> bool:
    """A lost or refused database connection (a restart, a network blip), as opposed to a wrong query."""
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    while exc is not None:
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if not isinstance(exc, StorageInternalError | sqlalchemy.exc.SQLAlchemyError):
            return False
        exc = exc.__cause__ or exc.__context__
    return False


def retry(call: Callable[[], T], what: str, patience: float = PATIENCE_SECONDS,
          log: Callable[[str], None] = print) -> T:
    """call(), again and again while the database is unreachable (waits 1, 2, 4 ... 15 s), for up to `patience`."""
    deadline, wait, said = time.monotonic() + patience, 1.0, False
    while True:
        try:
            result = call()
        except Exception as exc:
            if not unreachable(exc) or time.monotonic() + wait > deadline:
                raise
            if not said:
                log(f"search: the study database is unreachable while {what}; retrying for up to "
                    f"{patience / 60:.0f} min")
                said = True
            time.sleep(wait)
            wait = min(wait * 2, 15.0)
        else:
            if said:
                log(f"search: the study database is back ({what})")
            return result


class Guard:
    """A PostgreSQL advisory lock named after the study: one worker at a time inside `hold()`. A worker that dies
    loses its connection and with it the lock. For SQLite (one process per study) it does nothing."""

    def __init__(self, storage: str, study: str):
        self.key = int.from_bytes(hashlib.sha256(f"captioning:{study}".encode()).digest()[:8], "big", signed=True)
        self.engine = None
        if shared(storage):
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            self.engine = sqlalchemy.create_engine(storage, poolclass=NullPool)

    @contextlib.contextmanager
    def hold(self, what: str) -> Iterator[None]:
        if self.engine is None:
            yield
            return
        import sqlalchemy

        def acquire():
            connection = self.engine.connect()
            try:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
            except BaseException:
                connection.close()
                raise
            return connection

        connection = retry(acquire, what)
        try:
            yield
        finally:
            try:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            except Exception:  # the connection is gone, and the lock went with it
                pass
            connection.close()


class Heartbeat:
    """Records a trial's heartbeat in Optuna's storage every `interval` seconds while the trial runs, riding out
    database restarts (a missed beat is retried at the next one, not fatal to the thread)."""

    def __init__(self, storage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # the database is restarting: the next beat tries again
                pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
