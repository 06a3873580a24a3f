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
from captioning.workbench import redact

T = TypeVar("T")
# Connection settings for PostgreSQL: give up connecting after 10 s, and notice a vanished peer within ~30 s.
KEEPALIVE = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
             "keepalives_count": 3}
PATIENCE_SECONDS = 600.0  # how long a worker waits for its database to come back before giving up


def shared(storage: str) -> bool:
    """Whether several worker processes may run the study: a database server, not a local SQLite file."""
    return not storage.startswith("sqlite:")


def check_storage(storage: str) -> None:
    scheme = storage.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported --storage {redact(storage)}: use sqlite:///FILE (one worker) or "
                          "postgresql://USER:PASSWORD@HOST/DB (any number of workers)")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Guard:
    """A PostgreSQL advisory lock named after the study: one worker at a time inside `hold()`. A worker that dies
    loses its connection and with it the lock; TCP keepalives make the server notice within about 30 s even when
    the worker's machine vanishes without closing it. For SQLite (one process per study) it does nothing.

    A database restart also drops the lock, silently, while its holder is inside `hold()`: `still_held()` tells the
    holder afterwards whether that happened."""

    def __init__(self, storage: str, study: str):
        self.key = int.from_bytes(hashlib.sha256(f"captioning:{study}".encode()).digest()[:8], "big", signed=True)
        self.engine = None
        if shared(storage):
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            # Autocommit: no transaction left open while the lock is held (servers may end idle transactions).
            self.engine = sqlalchemy.create_engine(storage, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                                   connect_args=KEEPALIVE)
        self._connection = None

    @contextlib.contextmanager
    def hold(self, what: str) -> Iterator[None]:
        if self.engine is None:
            yield
            return
        import sqlalchemy

        def acquire():
            connection = self.engine.connect()
            try:
                for setting in ("tcp_keepalives_idle = 10", "tcp_keepalives_interval = 5", "tcp_keepalives_count = 3"):
                    connection.execute(sqlalchemy.text(f"SET {setting}"))  # the server's side of the same check
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
            except BaseException:
                connection.close()
                raise
            return connection

        connection = self._connection = retry(acquire, what)
        try:
            yield
        finally:
            self._connection = None
            try:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            except Exception:  # the connection is gone, and the lock went with it
                pass
            connection.close()

    def still_held(self) -> bool:
        """Inside hold(): whether the lock's connection survived (a database restart drops it and the lock)."""
        if self._connection is None:
            return True
        import sqlalchemy

        try:
            self._connection.execute(sqlalchemy.text("SELECT 1"))
            return True
        except Exception:
            note_outage()
            return False


class Heartbeats:
    """Optuna's heartbeat records for one study's trials on a database server, written through the storage's public
    API on a connection of their own. (Optuna beats only inside optimize(), which the search's loop replaces: it must
    count and claim trials under the study's lock.)"""

    def __init__(self, storage: str, study: str, interval: float):
        self.url, self.study, self.interval, self._ids = storage, study, interval, {}
        self.storage = None  # connected at the first beat, which its caller retries through database restarts

    def beat(self, number: int) -> None:
        if self.storage is None:
            import optuna

            self.storage = optuna.storages.RDBStorage(self.url, engine_kwargs={"pool_pre_ping": True,
                                                                               "connect_args": KEEPALIVE},
                                                      skip_compatibility_check=True, skip_table_creation=True)
        if number not in self._ids:
            study_id = self.storage.get_study_id_from_name(self.study)
            self._ids[number] = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        self.storage.record_heartbeat(self._ids[number])

    @contextlib.contextmanager
    def during(self, number: int) -> Iterator[None]:
        """Beat every `interval` seconds while trial `number` runs, riding out database restarts (a missed beat is
        retried at the next one, not fatal to the thread)."""
        stop = threading.Event()

        def loop() -> None:
            failed = False
            while not stop.wait(self.interval):
                try:
                    self.beat(number)
                except Exception:  # the database is restarting: the next beat tries again
                    failed = True
                    note_outage()
                else:
                    if failed:
                        failed = False
                        note_outage()  # back: the grace clock starts now

        thread = threading.Thread(target=loop, name=f"heartbeat-{number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def close(self) -> None:
        if self.storage is not None:
            self.storage.engine.dispose()


def retry(call: Callable[[], T], what: str, log: Callable[[str], None] = print) -> T:
    """call(), again and again while the database is unreachable (waits 1, 2, 4 ... 15 s), for up to
    PATIENCE_SECONDS."""
    deadline, wait, said = time.monotonic() + PATIENCE_SECONDS, 1.0, False
    while True:
        try:
            result = call()
        except Exception as exc:
            if not unreachable(exc):
                raise
            note_outage()
            if time.monotonic() + wait > deadline:
                raise
            if not said:
                log(f"search: the study database is unreachable while {what}; retrying for up to "
                    f"{PATIENCE_SECONDS / 60:.0f} min")
                said = True
            time.sleep(wait)
            wait = min(wait * 2, 15.0)
        else:
            if said:
                note_outage()  # the grace clock starts when the database is back, not at the last failure
                log(f"search: the study database is back ({what})")
            return result


_CONNECTION_LOST = {"57P01", "57P02", "57P03"}  # admin shutdown, crash shutdown, cannot connect now
# A refused connection carries no SQLSTATE (psycopg reports it as text): these ones no retry will mend.
_PERMANENT = ("authentication failed", "no pg_hba.conf entry", "does not exist", "permission denied")
_last_outage = float("-inf")  # time.monotonic() when this process last found the database unreachable


def unreachable(exc: BaseException) -> bool:
    """A lost or refused connection to a database server (a restart, a network blip), as opposed to a wrong
    password, a full disk or a bad query, which retrying would not mend."""
    import sqlalchemy.exc

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlalchemy.exc.DBAPIError):
            if exc.connection_invalidated:
                return True
            if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
                state = getattr(exc.orig, "sqlstate", None)
                if type(exc.orig).__module__.startswith("sqlite3"):
                    return False  # a local file: nothing to wait for
                if state is None:
                    return not any(text in str(exc.orig) for text in _PERMANENT)
                return state.startswith("08") or state in _CONNECTION_LOST
            return False
        exc = exc.__cause__ or exc.__context__
    return False


def note_outage() -> None:
    global _last_outage
    _last_outage = time.monotonic()


def seconds_since_outage() -> float:
    """How long this process has reached its database without a failure (inf if it never failed)."""
    return time.monotonic() - _last_outage
