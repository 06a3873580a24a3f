"""What the workers of one study share beyond Optuna's tables: the study's storage checked, each worker named, and
a heartbeat that tells the others a trial's process is alive. (The lock in the study's own database for the few steps
that must happen once, and the retries while that database restarts, are captioning/core/locks.py.)
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Iterator

from captioning.config import ConfigError
from captioning.core.locks import KEEPALIVE, note_outage
from captioning.core.tracking import redact


def check_storage(storage: str) -> None:
    scheme = storage.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported --storage {redact(storage)}: use sqlite:///FILE (one worker) or "
                          "postgresql://USER:PASSWORD@HOST/DB (any number of workers)")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
