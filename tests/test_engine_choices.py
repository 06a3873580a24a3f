"""search.sampler, search.pruner and search.tuner: each name builds its engine object, bad ones are one error."""
import optuna
import pytest
import yaml

from captioning.config import ConfigError
from tuning.optuna_engine import make_pruner, make_sampler
from tuning.settings import read_settings


def _settings(tmp_path, **search):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"search": {"space": {"units": {"choices": [32, 64]}}, **search}}))
    return read_settings(path)


@pytest.mark.parametrize("name, kind", [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                                        ("cmaes", optuna.samplers.CmaEsSampler)])
def test_each_sampler_name_builds_its_sampler(tmp_path, name, kind):
    sampler = make_sampler(_settings(tmp_path, sampler=name), seed=3, workers=True)
    assert type(sampler) is kind
    if name == "tpe":  # multivariate over grouped keys, and a constant liar when workers share the study
        assert sampler._multivariate and sampler._group and sampler._constant_liar


@pytest.mark.parametrize("search, kind, budget", [
    ({}, optuna.pruners.MedianPruner, None),
    ({"pruner": "hyperband", "pruner_min_epochs": 2, "pruner_max_epochs": 8}, optuna.pruners.HyperbandPruner, (2, 8)),
    ({"pruner": "successive_halving", "pruner_min_epochs": 2}, optuna.pruners.SuccessiveHalvingPruner, None),
    ({"pruner": "none"}, optuna.pruners.NopPruner, None)])
def test_each_pruner_name_builds_its_pruner_with_its_budget(tmp_path, search, kind, budget):
    pruner = make_pruner(_settings(tmp_path, **search))
    assert type(pruner) is kind
    if budget:
        assert (pruner._min_resource, pruner._max_resource) == budget


def test_successive_halving_prunes_a_bad_trial_on_the_epochs_it_reports(tmp_path):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=make_pruner(_settings(tmp_path, pruner="successive_halving")))
    for quality in (1.0, 0.9, 0.8):  # finished trials fill the first rung
        trial = study.ask()
        for epoch in range(1, 5):
            trial.report(quality * epoch, epoch)
            trial.should_prune()  # (records the trial's value at each rung)
        study.tell(trial, quality * 4)
    worst = study.ask()
    worst.report(0.01, 1)
    assert worst.should_prune()


@pytest.mark.parametrize("search, message", [
    ({"sampler": "bayes"}, "unknown search.sampler 'bayes'; choose one of tpe, random, gp, cmaes"),
    ({"pruner": "asha"}, "unknown search.pruner 'asha'; choose one of median, hyperband, successive_halving, none"),
    ({"tuner": "grid"}, "unknown search.tuner 'grid'; choose one of bayesian, hyperband"),
    ({"pruner_min_epochs": 0}, "pruner_min_epochs (0) must be a whole number >= 1"),
    ({"pruner_min_epochs": 4, "pruner_max_epochs": 2}, "pruner_max_epochs (2) one >= pruner_min_epochs"),
    ({"pruner_reduction": 1}, "pruner_reduction must be a whole number >= 2, got 1"),
    ({"budget": 0}, "--budget (search.budget) must be a number of seconds > 0, got 0"),
    ({"timeout": "1h"}, "--timeout (search.timeout) must be a number of seconds > 0, got '1h'")])
def test_bad_engine_choices_are_one_error_each(tmp_path, search, message):
    with pytest.raises(ConfigError) as error:
        _settings(tmp_path, **search)
    assert message in str(error.value)


def test_a_budget_also_ends_the_starting_of_trials(tmp_path):
    assert _settings(tmp_path, budget=600).timeout == 600  # no trial starts after the budget either
    assert _settings(tmp_path, budget=600, timeout=60).timeout == 60
    assert _settings(tmp_path, timeout=60).budget is None


def test_gp_without_pytorch_says_what_it_needs(tmp_path):
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        assert type(make_sampler(_settings(tmp_path, sampler="gp"), seed=0)) is optuna.samplers.GPSampler
    else:
        with pytest.raises(ConfigError, match="search.sampler gp needs PyTorch"):
            _settings(tmp_path, sampler="gp")
