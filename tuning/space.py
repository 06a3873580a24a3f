"""The search space as data, read from an experiment file's `search.space`, for both engines.

    space:
      units: {choices: [128, 256, 512]}
      lstm_layers: {low: 1, high: 2}            # int range (both bounds ints)
      dropout: {low: 0.1, high: 0.5}            # float range
      learning_rate: {low: 3.0e-4, high: 3.0e-3, log: true}
"""
from __future__ import annotations

import dataclasses
from typing import Any

from captioning.config import FIELDS, ConfigError, parse_overrides


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} in [{self.low}, {self.high}]" + (" (log)" if self.log else "")


def parse_space(section: dict[str, Any]) -> list[Param]:
    if not isinstance(section, dict) or not section:
        raise ConfigError("the experiment's search.space must map config keys to {choices: [...]} or "
                          "{low: ..., high: ..., log: ...}")
    params = []
    for name, spec in section.items():
        if name not in FIELDS:
            raise ConfigError(f"search.space names unknown config key {name!r}; known keys: {', '.join(FIELDS)}")
        if not isinstance(spec, dict):
            raise ConfigError(f"search.space.{name} must be a mapping such as {{choices: [a, b]}} or {{low: 1, high: 3}}")
        unknown = set(spec) - {"choices", "low", "high", "log"}
        if unknown:
            raise ConfigError(f"search.space.{name}: unknown field(s) {', '.join(sorted(unknown))}")
        if "choices" in spec:
            # Each choice checked and converted to the key's type (Keras Tuner casts to the first one's type).
            choices = tuple(parse_overrides([f"{name}={choice}"])[name] for choice in spec["choices"])
            params.append(Param(name, choices=choices))
            continue
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"search.space.{name} needs choices, or low and high")
        low, high = parse_overrides([f"{name}={spec['low']}"])[name], parse_overrides([f"{name}={spec['high']}"])[name]
        if not low < high:
            raise ConfigError(f"search.space.{name}: low ({low}) must be below high ({high})")
        params.append(Param(name, low=low, high=high, log=bool(spec.get("log", False)),
                            integer=isinstance(FIELDS[name].default, int)))
    return params


def suggest_optuna(trial, space: list[Param]) -> dict[str, Any]:
    values = {}
    for p in space:
        if p.choices is not None:
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.integer:
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    return values


def define_keras_tuner(hp, space: list[Param]) -> dict[str, Any]:
    values = {}
    for p in space:
        if p.choices is not None:
            values[p.name] = hp.Choice(p.name, list(p.choices))
        elif p.integer:
            values[p.name] = hp.Int(p.name, int(p.low), int(p.high), sampling="log" if p.log else "linear")
        else:
            values[p.name] = hp.Float(p.name, p.low, p.high, sampling="log" if p.log else "linear")
    return values
