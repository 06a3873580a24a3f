"""Registries' built-in entries name their code by module and attribute, imported on first use, so that reading and
checking a config imports neither TensorFlow nor the scorers."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy(module: str, attribute: str) -> Callable[..., Any]:
    """A callable that imports `module` on its first call and calls its `attribute`; `.module` names the module."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), attribute)(*args, **kwargs)

    call.__qualname__ = f"{module}.{attribute}"
    call.module = module
    return call


def import_code(entry: Callable[..., Any]) -> None:
    """Import the module behind a lazy entry now (nothing for an entry that is already code)."""
    module = getattr(entry, "module", None)
    if module:
        importlib.import_module(module)
