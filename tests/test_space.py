import dataclasses

import keras_tuner as kt
import optuna
import pytest

from captioning.config import Config, ConfigError
from tuning.settings import read_settings
from tuning.space import base_values, define_keras_tuner, parse_space, suggest_optuna

SPACE = {"units": {"choices": [32, 64]}, "lstm_layers": {"low": 1, "high": 3},
         "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "dropout": {"low": 0.0, "high": 0.5}}


def test_both_engines_read_the_same_declaration():
    space = parse_space(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest_optuna(study.ask(), space)
        assert values["units"] in (32, 64) and 1 <= values["lstm_layers"] <= 3
        assert isinstance(values["lstm_layers"], int) and 1e-4 <= values["learning_rate"] <= 1e-2
    hp = kt.HyperParameters()
    values = define_keras_tuner(hp, space)
    assert set(values) == set(SPACE) and hp.get("units") in (32, 64)
    assert {p.name for p in hp.space} == set(SPACE)


@pytest.mark.parametrize("space, message", [
    ({"unitz": {"choices": [1]}}, "unknown config key 'unitz'"),
    ({"units": {"low": 8}}, "needs choices, or low and high"),
    ({"units": {"low": 64, "high": 8}}, "must be below"),
    ({"units": {"choices": ["many"]}}, "needs a int"),
    ({"units": {"low": 8, "high": 64, "step": 8}}, "unknown field"),
    ({}, "search.space must map"),
    ({"units": {"choices": [8], "when": {"decoder": "attention"}}}, "must be an earlier key of the space"),
    ({"dropout": {"low": 0.1, "high": 0.2}, "units": {"choices": [8], "when": {"dropout": 0.1}}},
     "earlier key of the space with choices"),
    ({"decoder": {"choices": ["merge"]}, "units": {"choices": [8], "when": {"decoder": "attention"}}},
     "decoder never takes"),
    ({"decoder": {"choices": ["merge"]}, "units": {"choices": [8], "when": "decoder"}}, "when must map"),
])
def test_bad_space_is_a_clear_error(space, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(space)


def test_base_values_are_the_searched_keys_of_the_base_config():
    base = dataclasses.replace(Config(), units=64, lstm_layers=3, learning_rate=1e-4, dropout=0.5)
    assert base_values(parse_space(SPACE), base) == {"units": 64, "lstm_layers": 3, "learning_rate": 1e-4,
                                                     "dropout": 0.5}  # bounds included


@pytest.mark.parametrize("changes, named", [
    ({"units": 1024}, ["config.units = 1024", "units in [32, 64]", "add it to search.space.units",
                       "change config.units"]),
    ({"dropout": 0.7}, ["config.dropout = 0.7", "dropout in [0.0, 0.5]", "widen search.space.dropout",
                        "change config.dropout"]),
    ({"lstm_layers": 4}, ["config.lstm_layers = 4", "lstm_layers in [1, 3]"]),
    ({"learning_rate": 0.05}, ["config.learning_rate = 0.05", "learning_rate in [0.0001, 0.01] (log)"]),
    ({"units": 16, "dropout": 0.6}, ["config.units = 16", "config.dropout = 0.6"]),  # every key in one error
])
def test_a_base_value_outside_its_space_is_one_error_naming_key_value_and_space(changes, named):
    base = dataclasses.replace(Config(), **{"units": 64, "lstm_layers": 1, "learning_rate": 1e-3, "dropout": 0.2,
                                            **changes})
    with pytest.raises(ConfigError) as error:
        base_values(parse_space(SPACE), base)
    for text in named:
        assert text in str(error.value)


def test_keras_tuner_defaults_are_the_given_base_values():
    space = parse_space(SPACE)
    base = {"units": 64, "lstm_layers": 2, "learning_rate": 1e-3, "dropout": 0.25}
    hp = kt.HyperParameters()
    assert define_keras_tuner(hp, space, base) == base  # a HyperParameters without values takes the defaults
    assert {p.name: p.default for p in hp.space} == base
    assert define_keras_tuner(kt.HyperParameters(), space)["units"] == 32  # Keras Tuner's own: the first choice


def test_settings_from_file_then_options(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("search:\n  trials: 5\n  space:\n    units: {choices: [8, 16]}\n")
    settings = read_settings(path, trials=7, engine=None)
    assert settings.trials == 7 and settings.engine == "optuna" and settings.epoch_metric == "dev_bleu4"
    with pytest.raises(ConfigError, match="unknown metric"):
        read_settings(path, metric="dev_bleu5")
    path.write_text("search:\n  trails: 5\n  space:\n    units: {choices: [8, 16]}\n")
    with pytest.raises(ConfigError, match="unknown search setting"):
        read_settings(path)


def test_every_shipped_experiment_is_valid():
    from pathlib import Path

    from captioning.config import load_config

    for path in sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml")):
        base = load_config(path)
        space = read_settings(path).space
        # The base lies in the space (its conditional keys: those whose condition the base config meets).
        assert space and set(base_values(space, base)) == {p.name for p in space if p.active(base.to_dict())}


CONDITIONAL = {"decoder": {"choices": ["merge", "attention"]},
               "lstm_layers": {"low": 1, "high": 2, "when": {"decoder": "merge"}},
               "attention_units": {"choices": [16, 32], "when": {"decoder": ["attention"]}},
               "dropout": {"low": 0.1, "high": 0.5}}


def test_conditional_keys_are_sampled_only_when_their_parent_matches():
    """Optuna and Keras Tuner sample attention-only keys only for the attention decoder, and the base values
    hold only the keys whose condition the base config meets."""
    space = parse_space(CONDITIONAL)
    assert space[2].describe() == "attention_units in [16, 32] when decoder in ['attention']"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        values = suggest_optuna(study.ask(), space)
        expected = {"decoder", "dropout", "lstm_layers" if values["decoder"] == "merge" else "attention_units"}
        assert set(values) == expected
        seen.add(values["decoder"])
    assert seen == {"merge", "attention"}
    merge = dataclasses.replace(Config(), dropout=0.3, attention_units=999)  # outside its space, but not sampled
    assert base_values(space, merge) == {"decoder": "merge", "lstm_layers": 1, "dropout": 0.3}
    attention = dataclasses.replace(Config(), decoder="attention", attention_units=32, lstm_layers=7, dropout=0.3)
    assert base_values(space, attention) == {"decoder": "attention", "attention_units": 32, "dropout": 0.3}
    with pytest.raises(ConfigError, match="config.attention_units = 64"):
        base_values(space, dataclasses.replace(attention, attention_units=64))
    for base in (base_values(space, merge), base_values(space, attention)):
        hp = kt.HyperParameters()
        assert define_keras_tuner(hp, space, base) == base
    assert set(define_keras_tuner(kt.HyperParameters(), space)) == {"decoder", "lstm_layers", "dropout"}  # merge
