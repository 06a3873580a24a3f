"""Names that become file paths and MLflow filter strings: studies, experiments and registered models.

A name is 1 to 100 characters: letters, digits, '.', '_' and '-', starting with a letter or digit. Such a name is
one folder or file name (never '..', never a separator) and a filter literal that needs no escaping. Values that
come from elsewhere (tags read back from MLflow, trial numbers) still enter filters through quote().
"""
from __future__ import annotations

import re
from pathlib import Path

from captioning.core.errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RULE = "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_name(value: str, what: str, example: str) -> str:
    """`value` if it follows the rule; otherwise one error naming it, the rule and an example."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ConfigError(f"{what} {value!r} is not a valid name: use {RULE} (e.g. {example})")
    return value


def inside(parent: Path, name: str) -> Path:
    """parent/name, where `name` must be one entry of `parent`: whatever it holds, the path leads neither outside
    `parent` nor to `parent` itself, so deleting it can only delete something inside `parent`."""
    path = parent / name
    if name in ("", ".", "..") or path.parent != parent or path.resolve().parent != parent.resolve():
        raise ConfigError(f"{name!r} is not a single entry of {parent}: use {RULE}")
    return path


def quote(value) -> str:
    """`value` as a string literal of an MLflow search filter.

    MLflow's filter grammar has no escape character: a literal is whatever lies between its quotes (tried on a
    SQLite store with MLflow 3.17: 'it''s' and 'it\\'s' both match those characters verbatim). So the literal takes
    the quote character the value does not contain. A value holding both, or ending in a backslash (which the
    tokenizer reads as escaping the closing quote), cannot be written, and is refused rather than turned into a
    filter that means something else."""
    text = str(value)
    if text.endswith("\\") or ("'" in text and '"' in text):
        raise ConfigError(f"{text!r} cannot be looked up in MLflow: a filter value may not hold both quote "
                          "characters or end in a backslash")
    mark = '"' if "'" in text else "'"
    return f"{mark}{text}{mark}"
