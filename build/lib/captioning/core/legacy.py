"""The two module names a registered version logged before the package's layout imports from its own
pyfunc_model.py: `captioning.serving_inputs` and `captioning.captioner`. MLflow puts a version's code folder on
sys.path, but a process that has already imported this package keeps it, so that old file's imports would fail
here; these names are answered with the modules that hold the same classes now. Nothing else of the old flat layout
is kept: code of your own imports the new modules (see the README's folder tree)."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {"captioning.serving_inputs": "captioning.serving.requests",
         "captioning.captioner": "captioning.decoding.captioner"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return None  # the default: an empty module of that name, filled below

    def exec_module(self, module) -> None:
        current = importlib.import_module(MOVED[module.__name__])
        module.__dict__.update({k: v for k, v in vars(current).items() if not k.startswith("__")})


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
