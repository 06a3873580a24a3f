"""Where the project's own files are: the experiment files (experiments/*.yaml) beside the package in a source
checkout (the editable install `make setup` makes), or in the working directory."""
from __future__ import annotations

from pathlib import Path

from captioning.core.errors import ConfigError

SOURCE = Path(__file__).resolve().parents[2]  # the checkout holding captioning/, when run from source


def experiments_dir() -> Path:
    """experiments/ of the source checkout, else ./experiments; one clear error when neither exists (a
    non-editable install does not carry the experiment files)."""
    for root in (SOURCE, Path.cwd()):
        if (root / "experiments").is_dir():
            return root / "experiments"
    raise ConfigError("no experiments/ folder: this install does not carry the experiment files; run from a clone "
                      "of the workbench (make setup installs it editable), or give the file with --config / "
                      "--experiment PATH")


def experiment_file(name: str) -> Path:
    return experiments_dir() / name
