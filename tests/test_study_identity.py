"""A study resumes only the search it was created for: its space and metric are recorded (Optuna: the study's user
attributes; Keras Tuner: search.json in its folder), and another space or metric is refused, naming the differences.
"""
import dataclasses

import optuna
import pytest

from captioning.config import ConfigError
from tuning import search as search_cli
from tuning.optuna_engine import (
    QUEUED,
    SEARCH,
    open_study,
    queued_values,
    recorded_search,
)
from tuning.settings import SearchSettings
from tuning.space import parse_space

SPACE = {"units": {"choices": [32, 64]}, "dropout": {"low": 0.0, "high": 0.3}}
CHANGED = {"units": {"choices": [32, 64]}, "dropout": {"low": 0.0, "high": 0.5},
           "learning_rate": {"low": 0.001, "high": 0.01, "log": True}}


def _settings(space, metric="dev_bleu4"):
    return SearchSettings(space=parse_space(space), trials=2, metric=metric)


def _never_lost(trial, **kw):
    raise AssertionError("no trial is lost here")


def test_optuna_refuses_another_space_or_metric_and_resumes_the_same(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert recorded_search("s", storage) is None  # no study yet
    study = open_study("s", storage, _settings(SPACE), _never_lost)
    study.tell(study.ask(), 0.1)
    assert study.user_attrs[SEARCH] == {"space": {"units": "units in [32, 64]", "dropout": "dropout in [0.0, 0.3]"},
                                        "metric": "dev_bleu4"}

    with pytest.raises(ConfigError) as error:
        open_study("s", storage, _settings(CHANGED, metric="dev_cider"), _never_lost)
    message = str(error.value)
    assert "study 's' was created for another search" in message
    assert "dropout in [0.0, 0.3] is now dropout in [0.0, 0.5]" in message
    assert "learning_rate in [0.001, 0.01] (log) is new" in message
    assert "the metric was dev_bleu4, now dev_cider" in message and "--study NEW_NAME" in message
    assert "units" not in message  # unchanged keys are not listed
    with pytest.raises(ConfigError, match="units in \\[32, 64\\] is gone"):
        open_study("s", storage, _settings({"dropout": SPACE["dropout"]}), _never_lost)

    resumed = open_study("s", storage, dataclasses.replace(_settings(SPACE), trials=5), _never_lost)  # more trials
    assert len(resumed.trials) == 1 and recorded_search("s", storage)["metric"] == "dev_bleu4"


def test_a_study_from_before_the_record_takes_the_search_it_is_resumed_with(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="old", storage=storage, direction="maximize")
    open_study("old", storage, _settings(SPACE), _never_lost)
    assert recorded_search("old", storage)["space"]["dropout"] == "dropout in [0.0, 0.3]"


def test_a_queued_trial_keeps_its_values_in_its_user_attributes_and_one_from_before_still_reads(tmp_path):
    """The values a queued trial will run (the baseline's, an interrupted trial's) are read back through Optuna's
    public API; a trial queued by an earlier version of this project, without QUEUED, is still read."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    values = {"units": 64, "dropout": 0.1}
    study = open_study("s", storage, _settings(SPACE), _never_lost, baseline=values)
    [queued] = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert queued.user_attrs[QUEUED] == values and queued_values(queued) == values
    running = study.ask()  # started, interrupted before its values were suggested: they run again
    assert running.params == {} and queued_values(study.trials[-1]) == values
    suggested = study.ask()  # a trial that suggested its values runs those
    suggested.suggest_categorical("units", [32, 64])
    assert queued_values(study.trials[-1]) == suggested.params


def test_the_search_command_refuses_before_writing_anything(tmp_path, shapes_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    open_study("s", storage, _settings(SPACE), _never_lost)
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text("config: {encoder: pixels, image_size: 32, units: 64, dropout: 0.1}\n"
                          "search:\n  space:\n    units: {choices: [32, 64]}\n    dropout: {low: 0.0, high: 0.5}\n")
    assert search_cli.main(["--data", str(shapes_dir), "--experiment", str(experiment), "--study", "s",
                            "--storage", storage, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err
    assert "error: study 's' was created for another search: dropout in [0.0, 0.3] is now dropout in [0.0, 0.5]" \
        in err and "Traceback" not in err
    from mlflow import MlflowClient

    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("tiny") is None  # no run yet


def test_keras_tuner_records_its_search_and_refuses_another(tmp_path):
    from tuning.keras_tuner_engine import open_tuner
    from tuning.keras_tuner_engine import recorded_search as recorded_tuner_search

    open_tuner(tmp_path, "kt", None, _settings(SPACE))
    record = {"space": {"units": "units in [32, 64]", "dropout": "dropout in [0.0, 0.3]"}, "metric": "dev_bleu4"}
    assert recorded_tuner_search(tmp_path, "kt") == record
    files = sorted(tmp_path.rglob("*"))
    reloaded = open_tuner(tmp_path, "kt", None, _settings(SPACE))  # the same search: reloads, as it was
    assert recorded_tuner_search(tmp_path, "kt") == record and sorted(tmp_path.rglob("*")) == files
    assert reloaded.oracle.max_trials == 2 and reloaded.settings.metric == "dev_bleu4"
    with pytest.raises(ConfigError, match="the metric was dev_bleu4, now dev_cider"):
        open_tuner(tmp_path, "kt", None, _settings(SPACE, metric="dev_cider"))
