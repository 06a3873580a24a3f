import optuna
import keras_tuner as kt
import pytest

from captioning.config import ConfigError
from tuning.settings import read_settings
from tuning.space import define_keras_tuner, parse_space, suggest_optuna

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
])
def test_bad_space_is_a_clear_error(space, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(space)


def test_settings_from_file_then_options(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("search:\n  trials: 5\n  space:\n    units: {choices: [8, 16]}\n")
    settings = read_settings(path, trials=7, engine=None)
    assert settings.trials == 7 and settings.engine == "optuna" and settings.epoch_metric == "dev_bleu4"
    with pytest.raises(ConfigError, match="unknown metric"):
        read_settings(path, metric="dev_cider")
    path.write_text("search:\n  trails: 5\n  space:\n    units: {choices: [8, 16]}\n")
    with pytest.raises(ConfigError, match="unknown search setting"):
        read_settings(path)


def test_every_shipped_experiment_is_valid():
    from pathlib import Path

    from captioning.config import load_config

    for path in sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml")):
        load_config(path)
        assert read_settings(path).space
