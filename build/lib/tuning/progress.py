"""What a search shows while a trial trains: on a terminal, one status line that each epoch rewrites; with
--verbose, one kept line per epoch (for logs of long trials, where a trial can take an hour)."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class EpochProgress:
    def __init__(self, metric: str, verbose: bool = False, stream: TextIO | None = None):
        self.metric, self.verbose, self.epochs = metric, verbose, 0
        self.stream = stream or sys.stdout
        self.live = not verbose and self.stream.isatty()
        self.shown = False
        self.started = time.perf_counter()

    def start(self, trial: int, epochs: int) -> None:
        self.started, self.epochs = time.perf_counter(), epochs
        if self.live:
            self._status(f"trial {trial:3d}  training epoch 1/{self.epochs} ...")

    def epoch(self, trial: int, epoch: int, record: dict) -> None:
        text = (f"trial {trial:3d}  epoch {epoch:2d}/{self.epochs}  loss {record['loss']:.3f}  "
                f"dev loss {record['dev_loss']:.3f}  {self.metric} {record[self.metric]:.4f}  "
                f"{_clock(time.perf_counter() - self.started)}")
        if self.verbose:
            print(text, file=self.stream, flush=True)
        elif self.live:
            self._status(text)

    def clear(self) -> None:
        """Remove the status line, before a line that stays."""
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False

    def say(self, line: str) -> None:
        """Print a line that stays (the status line, if any, is redrawn by the next epoch)."""
        self.clear()
        print(line, file=self.stream, flush=True)

    def _status(self, text: str) -> None:
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
        self.shown = True


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{seconds:02d}s"
