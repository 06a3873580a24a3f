"""What the registries of decoders, metrics and encoders share: a name -> spec table whose lookups fail with one
clear error, and built-in entries that name their code by module and attribute, imported on first use, so that
reading and checking a config imports neither TensorFlow nor the scorers."""
from __future__ import annotations

import importlib
from typing import Any, Callable


class Registry(dict):
    """Specs (any object with a `name`) by name, in registration order."""

    def __init__(self, kind: str, error: type[Exception] = KeyError):
        super().__init__()
        self.kind, self.error = kind, error

    def register(self, spec):
        self[spec.name] = spec
        return spec

    def names(self) -> tuple[str, ...]:
        return tuple(self)

    def spec(self, name: str):
        if name not in self:
            raise self.error(f"unknown {self.kind} {name!r}; choose one of {', '.join(self)}")
        return self[name]


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
