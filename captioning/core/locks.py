"""Locks that let only one process at a time do a step: a file lock on this machine (FileLock: the feature store's
appends, a study on a local file), a PostgreSQL advisory lock named after a study or a registered model (nothing on
SQLite, which has one process) with retries while that database restarts, and the registry's lock on a registered
name's aliases (a FileLock, plus the advisory lock on a shared study storage)."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from captioning.core.cache import cache_root

T = TypeVar("T")
# Connection settings for PostgreSQL: give up connecting after 10 s, and notice a vanished peer within ~30 s.
KEEPALIVE = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
             "keepalives_count": 3}
PATIENCE_SECONDS = 600.0  # how long a worker waits for its database to come back before giving up, by default
PATIENCE_SETTING = "CAPTIONING_RETRY_SECONDS"  # the environment variable that changes it


class LockHeld(RuntimeError):
    """Another process holds a FileLock taken with if_held="refuse"; the message says what to do."""


class FileLock:
    """An exclusive lock on a file among processes (fcntl.flock), held from acquire() (or entering a with block)
    until release(), the with block's end or the process's end. The kernel drops it when its holder dies, even by
    kill -9, because the holder's descriptor closes with it: a crash never leaves a stale lock behind.

    If another process holds it: if_held="wait" waits until it is free, first logging `say` if given (so that a
    wait is never silent where it may be long); if_held="refuse" raises LockHeld(say) at once."""

    def __init__(self, path: Path, if_held: str = "wait", say: str | None = None,
                 log: Callable[[str], None] = print):
        if if_held not in ("wait", "refuse"):
            raise ValueError(f"if_held is {if_held!r}; give 'wait' or 'refuse'")
        self.path, self.if_held, self.say, self.log = Path(path), if_held, say, log
        self._handle = None

    def acquire(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if self.if_held == "refuse":
                    raise LockHeld(self.say or f"another process holds the lock {self.path}") from None
                if self.say:
                    self.log(self.say)
                fcntl.flock(handle, fcntl.LOCK_EX)
        except BaseException:
            handle.close()
            raise
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)  # (even if a forked child still has the descriptor)
            self._handle.close()
            self._handle = None

    close = release

    @property
    def held(self) -> bool:
        return self._handle is not None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def patience_seconds() -> float:
    """How long retry() waits for a database: $CAPTIONING_RETRY_SECONDS, else PATIENCE_SECONDS (read at each call,
    so that a test or a worker's environment may shorten it)."""
    text = os.environ.get(PATIENCE_SETTING, "").strip()
    if not text:
        return PATIENCE_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0:  # (also NaN)
        raise ValueError(f"${PATIENCE_SETTING} is {text!r}; give a number of seconds, 0 or more (default "
                         f"{PATIENCE_SECONDS:.0f})")
    return seconds


def shared(storage: str) -> bool:
    """Whether several worker processes may run the study: a database server, not a local SQLite file."""
    return not storage.startswith("sqlite:")


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


def retry(call: Callable[[], T], what: str, log: Callable[[str], None] = print) -> T:
    """call(), again and again while the database is unreachable (waits 1, 2, 4 ... 15 s), for up to
    patience_seconds(); then the last error is raised, after a line that says so."""
    patience = patience_seconds()
    deadline, wait, said = time.monotonic() + patience, 1.0, False
    while True:
        try:
            result = call()
        except Exception as exc:
            if not unreachable(exc):
                raise
            note_outage()
            left = deadline - time.monotonic()
            if left <= 0:
                log(f"search: the study database is still unreachable after {_duration(patience)} while {what}; "
                    f"giving up (${PATIENCE_SETTING} sets how long to retry)")
                raise
            if not said:
                log(f"search: the study database is unreachable while {what}; retrying for up to "
                    f"{_duration(patience)}")
                said = True
            time.sleep(min(wait, left))  # the last try comes at the deadline, not a back-off step past it
            wait = min(wait * 2, 15.0)
        else:
            if said:
                note_outage()  # the grace clock starts when the database is back, not at the last failure
                log(f"search: the study database is back ({what})")
            return result


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:g} s"


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


@contextlib.contextmanager
def registry_lock(name: str, storage: str | None = None, log: Callable[[str], None] = print) -> Iterator[Guard]:
    """Exclusive rights to move `name`'s aliases: a file lock for every store, and on a PostgreSQL study storage
    (workers on several machines) also an advisory lock there, so that two searches never interleave reading the
    champion, registering and moving the alias. Yields the advisory lock's guard (still_held() tells whether a
    database restart dropped it)."""
    with FileLock(_lock_path(name), say=f"registry: waiting for another process that is moving {name}'s aliases",
                  log=log):
        guard = Guard(storage or "sqlite:", f"registry:{name}")
        with guard.hold(f"moving {name}'s aliases"):
            yield guard


def _lock_path(name: str) -> Path:
    """A lock file per (tracking store, registered name): beside a SQLite database or inside a file store, where
    every process that writes that store sees it; for a tracking server, in this machine's cache."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):  # the file's own folder: however the URI spells its path, one lock
        database = Path(uri[len("sqlite:///"):])
        return database.with_name(f"{database.name}.registry-{name}.lock")
    if uri.startswith("file:") or "://" not in uri:
        folder = Path(uri[len("file://"):] if uri.startswith("file://") else uri.removeprefix("file:"))
        return folder / f".registry-{name}.lock"
    digest = hashlib.sha256(f"{uri.rstrip('/').lower()}|{name}".encode()).hexdigest()[:16]
    return cache_root() / "locks" / f"registry-{digest}.lock"
