"""The search space as data, read from an experiment file's `search.space`, for both engines.

    space:
      units: {choices: [128, 256, 512]}
      lstm_layers: {low: 1, high: 2}            # int range (both bounds ints)
      dropout: {low: 0.1, high: 0.5}            # float range
      learning_rate: {low: 3.0e-4, high: 3.0e-3, log: true}
      decoder: {choices: [merge, attention]}
      attention_units: {choices: [128, 256], when: {decoder: attention}}   # conditional: sampled only then

A key with `when: {parent: value or [values]}` is sampled only in trials whose parent (an earlier key of the space,
with choices) takes one of those values; in other trials it keeps its base value. Several parents must all match.

Each searched key's base value (the experiment's config plus --set) must lie in its space (a conditional key's only
when the base config meets its condition): a new study runs the base config first, so that the search's best is
never worse on dev than the config it started from.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from captioning.config import FIELDS, Config, ConfigError, parse_overrides


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    when: tuple[tuple[str, tuple], ...] = ()  # (parent key, the parent's values for which this key is sampled)

    def describe(self) -> str:
        if self.choices is not None:
            text = f"{self.name} in {list(self.choices)}"
        else:
            text = f"{self.name} in [{self.low}, {self.high}]" + (" (log)" if self.log else "")
        conditions = " and ".join(f"{parent} in {list(values)}" for parent, values in self.when)
        return text + (f" when {conditions}" if conditions else "")

    def active(self, values: dict[str, Any]) -> bool:
        """Whether this key is sampled, given the values of the keys before it."""
        return all(values.get(parent) in allowed for parent, allowed in self.when)

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return self.low <= value <= self.high


def parse_space(section: dict[str, Any]) -> list[Param]:
    if not isinstance(section, dict) or not section:
        raise ConfigError("the experiment's search.space must map config keys to {choices: [...]} or "
                          "{low: ..., high: ..., log: ...}")
    params = []
    for name, spec in section.items():
        if name not in FIELDS:
            raise ConfigError(f"search.space names unknown config key {name!r}; known keys: {', '.join(FIELDS)}")
        if not isinstance(spec, dict):
            raise ConfigError(f"search.space.{name} must be a mapping such as {{choices: [a, b]}} or "
                              "{low: 1, high: 3}")
        unknown = set(spec) - {"choices", "low", "high", "log", "when"}
        if unknown:
            raise ConfigError(f"search.space.{name}: unknown field(s) {', '.join(sorted(unknown))}")
        when = _parse_when(name, spec.get("when"), params)
        if "choices" in spec:
            # Each choice checked and converted to the key's type (Keras Tuner casts to the first one's type).
            choices = tuple(parse_overrides([f"{name}={choice}"])[name] for choice in spec["choices"])
            params.append(Param(name, choices=choices, when=when))
            continue
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"search.space.{name} needs choices, or low and high")
        low, high = parse_overrides([f"{name}={spec['low']}"])[name], parse_overrides([f"{name}={spec['high']}"])[name]
        if not low < high:
            raise ConfigError(f"search.space.{name}: low ({low}) must be below high ({high})")
        params.append(Param(name, low=low, high=high, log=bool(spec.get("log", False)),
                            integer=isinstance(FIELDS[name].default, int), when=when))
    return params


def _parse_when(name: str, when: Any, earlier: list[Param]) -> tuple[tuple[str, tuple], ...]:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        raise ConfigError(f"search.space.{name}.when must map an earlier key of the space to its value(s), "
                          f"e.g. when: {{decoder: attention}}")
    parents = {p.name: p for p in earlier}
    out = []
    for parent, allowed in when.items():
        if parent not in parents or parents[parent].choices is None:
            raise ConfigError(f"search.space.{name}.when names {parent!r}, which must be an earlier key of the space "
                              f"with choices (known before it: {', '.join(parents) or 'none'})")
        allowed = tuple(parse_overrides([f"{parent}={v}"])[parent] for v in
                        (allowed if isinstance(allowed, list) else [allowed]))
        stray = [v for v in allowed if v not in parents[parent].choices]
        if stray:
            raise ConfigError(f"search.space.{name}.when: {parent} never takes {stray}; its choices are "
                              f"{list(parents[parent].choices)}")
        out.append((parent, allowed))
    return tuple(out)


def base_values(space: list[Param], base: Config) -> dict[str, Any]:
    """Each searched key at its base value: the first trial of a new study. One error naming every key whose base
    value lies outside its space, before anything trains."""
    values = {}
    for p in space:
        if p.active(values):
            values[p.name] = getattr(base, p.name)
    outside = [_outside(p, values[p.name]) for p in space if p.name in values and not p.contains(values[p.name])]
    if outside:
        raise ConfigError("the first trial of a new study runs the base config, but " + "; ".join(outside))
    return values


def _outside(p: Param, value: Any) -> str:
    fix = (f"add it to search.space.{p.name}" if p.choices is not None else
           f"widen search.space.{p.name} to include it")
    return (f"config.{p.name} = {value!r} lies outside its search space ({p.describe()}): {fix} or change "
            f"config.{p.name} (in the experiment file or with --set)")


def suggest_optuna(trial, space: list[Param]) -> dict[str, Any]:
    values = {}
    for p in space:
        if not p.active(values):
            continue
        if p.choices is not None:
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.integer:
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    return values


def define_keras_tuner(hp, space: list[Param], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Declare the space on Keras Tuner's `hp` (or read a trial's values from it). `defaults` (base_values()) become
    the space's defaults, which the first trial runs (keras_tuner_engine.BaselineFirstOracle); without them Keras
    Tuner's default is the first choice or the lower bound."""
    defaults = defaults or {}
    values = {}
    for p in space:
        default, sampling = defaults.get(p.name), "log" if p.log else "linear"
        with contextlib.ExitStack() as scopes:
            for parent, allowed in p.when:  # Keras Tuner's own conditions: the key exists only when they hold
                scopes.enter_context(hp.conditional_scope(parent, list(allowed)))
            if p.choices is not None:
                value = hp.Choice(p.name, list(p.choices), default=default)
            elif p.integer:
                value = hp.Int(p.name, int(p.low), int(p.high), sampling=sampling, default=default)
            else:
                value = hp.Float(p.name, p.low, p.high, sampling=sampling, default=default)
        if p.active(values):
            values[p.name] = value
    return values
