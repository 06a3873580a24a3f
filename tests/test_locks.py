"""The file lock's three behaviours between real processes (wait, say and wait, refuse at once), its release when
its holder is killed with SIGKILL, and retry()'s deadline against a PostgreSQL port where no server listens."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from captioning.core.locks import FileLock, LockHeld, retry

# A process that takes the lock, says "held", and releases it when told to on stdin (or dies holding it).
HOLDER = textwrap.dedent("""
    import sys, time
    from captioning.core.locks import FileLock
    lock = FileLock(sys.argv[1]).acquire()
    print("held", flush=True)
    sys.stdin.readline()
    released = time.monotonic()
    lock.release()
    print(f"released {released}", flush=True)
    """)
# A process that waits for the lock (saying so with a `say` argument), then reports when it got it.
WAITER = textwrap.dedent("""
    import sys, time
    from captioning.core.locks import FileLock
    with FileLock(sys.argv[1], say=sys.argv[2] or None):
        print(f"acquired {time.monotonic()}", flush=True)
    """)


def _start(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


@pytest.fixture
def holder(tmp_path):
    """A process holding the lock file tmp_path/lock; yields (process, path) and ends it if the test did not."""
    path = tmp_path / "lock"
    process = _start(HOLDER, str(path))
    try:
        assert process.stdout.readline().strip() == "held"
        yield process, path
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def _waiting_for_flock(pid: int, path, timeout: float = 30.0) -> bool:
    """Whether the kernel lists `pid` as waiting for a flock on `path` (a "->" line of /proc/locks: "2: -> FLOCK
    ADVISORY WRITE <pid> <device>:<inode> 0 EOF"), within `timeout`."""
    inode = str(os.stat(path).st_ino)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if fields[1:3] == ["->", "FLOCK"] and fields[5] == str(pid) and fields[6].split(":")[-1] == inode:
                    return True
        time.sleep(0.01)  # polling the kernel's own record of the wait, not standing in for it
    return False


@pytest.mark.parametrize("say", ["", "store: waiting for another process"])
def test_a_waiting_lock_is_taken_only_when_its_holder_releases_it(holder, say):
    process, path = holder
    waiter = _start(WAITER, str(path), say)
    try:
        if say:  # it found the lock held and said so before waiting
            assert waiter.stdout.readline().strip() == say
        assert _waiting_for_flock(waiter.pid, path), "the waiter never waited for the lock"
        assert waiter.poll() is None  # still waiting: the holder has not released
        process.stdin.write("release\n")
        process.stdin.flush()
        released = float(process.stdout.readline().split()[1])
        acquired = float(waiter.stdout.readline().split()[1])
        assert waiter.wait(timeout=30) == 0
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert acquired >= released


@contextlib.contextmanager
def _within(seconds: float):
    """Fail instead of hanging if the block (e.g. a lock that waits by mistake) takes longer than `seconds`."""
    def expire(*_):
        raise AssertionError(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_refusing_a_held_lock_fails_at_once_with_its_message(holder):
    _, path = holder
    lock = FileLock(path, if_held="refuse", say="another search is already running study 'x' here")
    started = time.monotonic()
    with _within(10), pytest.raises(LockHeld, match="^another search is already running study 'x' here$"):
        lock.acquire()
    assert time.monotonic() - started < 1.0 and not lock.held
    with pytest.raises(LockHeld, match=f"another process holds the lock {path}"):  # the message without `say`
        FileLock(path, if_held="refuse").acquire()


def test_a_holder_killed_with_sigkill_releases_the_lock(holder):
    process, path = holder
    with pytest.raises(LockHeld):
        FileLock(path, if_held="refuse").acquire()
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    with FileLock(path, if_held="refuse") as lock:  # at once: no stale lock left behind
        assert lock.held
    assert not lock.held


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_retry_gives_up_at_its_deadline_from_the_setting_and_says_so(monkeypatch):
    """A PostgreSQL server that stays down (a free port: every connection is refused) past the retry deadline that
    $CAPTIONING_RETRY_SECONDS shortens: retried until then, then the original error, with one line each."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{_free_port()}/optuna",
                                      poolclass=NullPool)
    attempts, said = [], []

    def connect():
        attempts.append(time.monotonic())
        return engine.connect()

    monkeypatch.setenv("CAPTIONING_RETRY_SECONDS", "1.5")
    started = time.monotonic()
    with _within(30), pytest.raises(sqlalchemy.exc.OperationalError, match="Connection refused|connection failed"):
        retry(connect, "opening the study", log=said.append)  # (without the setting: 10 minutes)
    took = time.monotonic() - started
    assert 1.5 <= took < 4.0, took
    assert len(attempts) == 3  # at 0 s, after 1 s, and at the deadline (the 2 s back-off cut to 0.5 s)
    assert said == ["search: the study database is unreachable while opening the study; retrying for up to 1.5 s",
                    "search: the study database is still unreachable after 1.5 s while opening the study; giving "
                    "up ($CAPTIONING_RETRY_SECONDS sets how long to retry)"]


def test_a_bad_retry_setting_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("CAPTIONING_RETRY_SECONDS", "ten minutes")
    with pytest.raises(ValueError, match=r"\$CAPTIONING_RETRY_SECONDS is 'ten minutes'; give a number of seconds"):
        retry(lambda: None, "opening the study")
