"""TensorFlow's start-up notices out of the terminal, on CPUs where its log level does not reach them.

On a CPU with AVX512_VNNI or AVX512_BF16, TensorFlow turns its oneDNN operations on and says so while its libraries
load ("oneDNN custom operations are on ...", after absl's "All log messages before absl::InitializeLog() ..."),
whatever TF_CPP_MIN_LOG_LEVEL says; only TF_ENABLE_ONEDNN_OPTS=0 silences it, and that would change the arithmetic.
So, while the log level asks for quiet (1 or more), the first `import tensorflow` runs with the process' standard
error (file descriptor 2) sent to a temporary file, and every line of it is written back except absl's INFO lines
(I0000 ...) and its warning before them. Python's own warnings and errors from that import still reach the terminal.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

NOTICE = re.compile(r"^(I\d{4} .*|WARNING: All log messages before absl::InitializeLog\(\) is called .*)$")


def quiet_wanted() -> bool:
    """The log level asks for quiet (TF_CPP_MIN_LOG_LEVEL 1 to 3)."""
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip() in ("1", "2", "3")


def filtered(text: str) -> str:
    """`text` without absl's INFO lines and its warning before them."""
    return "".join(line for line in text.splitlines(keepends=True) if not NOTICE.match(line.rstrip("\n")))


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        if not quiet_wanted():
            return self._loader.exec_module(module)
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile(mode="w+b") as caught:
            os.dup2(caught.fileno(), 2)
            try:
                self._loader.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                rest = filtered(caught.read().decode("utf-8", "replace"))
                if rest:
                    sys.stderr.write(rest)
                    sys.stderr.flush()


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as the path finder does, and loads it through _QuietLoader; then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER = _QuietFinder()


def install() -> None:
    """Quiet the first `import tensorflow` of this process (a no-op once TensorFlow is loaded)."""
    if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
