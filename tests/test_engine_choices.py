"""search.sampler, search.pruner and search.tuner: each name builds its engine object, bad ones are one error."""
import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution

from captioning.config import ConfigError
from tuning.optuna_engine import make_pruner, make_sampler
from tuning.settings import read_settings


def _settings(tmp_path, **search):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"search": {"space": {"units": {"choices": [32, 64]}}, **search}}))
    return read_settings(path)


@pytest.mark.parametrize("name, kind, relative", [("tpe", optuna.samplers.TPESampler, ["a", "b", "x"]),
                                                  ("random", optuna.samplers.RandomSampler, []),
                                                  ("cmaes", optuna.samplers.CmaEsSampler, ["x"])])
def test_each_sampler_name_builds_its_sampler(tmp_path, name, kind, relative):
    sampler = make_sampler(_settings(tmp_path, sampler=name), seed=3, workers=True)
    assert type(sampler) is kind
    # The keys sampled together: TPE multivariate over groups (a conditional key, here "a" or "b", joins its group),
    # CMA-ES over the keys every trial has, random none.
    study = optuna.create_study(direction="maximize")
    for i in range(6):
        other = "a" if i % 2 else "b"
        study.add_trial(optuna.trial.create_trial(
            params={"x": i / 10, other: 0.2}, value=float(i),
            distributions={"x": FloatDistribution(0, 1), other: FloatDistribution(0, 1)}))
    assert sorted(sampler.infer_relative_search_space(study, study.ask())) == relative


def _batches(sampler, size: int) -> list[list[float]]:
    """The values suggested for 8 batches of `size` trials started together, each told after the whole batch."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    batches = []
    for _ in range(8):
        running = [study.ask() for _ in range(size)]
        batches.append([trial.suggest_float("x", 0, 1) for trial in running])
        for trial, x in zip(running, batches[-1]):
            study.tell(trial, -abs(x - 0.7))
    return batches


def test_tpe_spreads_the_trials_that_workers_start_together(tmp_path):
    """A constant liar when workers share the study: running trials count as bad, so trials started together spread
    out instead of all sampling the best region; one trial at a time, it samples as without workers."""
    settings = _settings(tmp_path, sampler="tpe")
    assert _batches(make_sampler(settings, seed=3, workers=True), 1) == _batches(make_sampler(settings, seed=3), 1)
    spread = [[max(b) - min(b) for b in _batches(make_sampler(settings, seed=3, workers=workers), 3)[2:]]
              for workers in (True, False)]  # (the first 2 batches: random start-up)
    assert min(spread[0]) > 0.1 > max(spread[1]), spread


def _first_pruned_epochs(pruner, bad_trials: int = 8) -> list[int | None]:
    """After 9 good trials of 20 epochs, the epoch at which each of `bad_trials` bad ones is pruned (None: never).
    (Hyperband draws each trial's bracket from the study's name and the trial's number.)"""
    study = optuna.create_study(study_name="pruned", direction="maximize", pruner=pruner)
    for quality in range(1, 10):
        trial = study.ask()
        for epoch in range(1, 21):
            trial.report(quality * epoch, epoch)
            trial.should_prune()
        study.tell(trial, quality * 20)
    epochs = []
    for _ in range(bad_trials):
        trial = study.ask()
        epochs.append(next((epoch for epoch in range(1, 21) if trial.report(0.001, epoch) or trial.should_prune()),
                           None))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return epochs


@pytest.mark.parametrize("search, kind, epochs", [
    # median: after pruner_startup_trials, from the epoch after pruner_warmup_epochs (default 1)
    ({}, optuna.pruners.MedianPruner, {2}),
    # each bracket's first rung, at 2 * 3**bracket epochs: two brackets within 8 epochs, a third (18) within 20
    ({"pruner": "hyperband", "pruner_min_epochs": 2, "pruner_max_epochs": 8}, optuna.pruners.HyperbandPruner, {2, 6}),
    ({"pruner": "hyperband", "pruner_min_epochs": 2, "pruner_max_epochs": 20}, optuna.pruners.HyperbandPruner,
     {2, 6, 18}),
    ({"pruner": "successive_halving", "pruner_min_epochs": 2}, optuna.pruners.SuccessiveHalvingPruner, {2}),
    ({"pruner": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner, {3}),  # the default first rung
    ({"pruner": "none"}, optuna.pruners.NopPruner, {None})])
def test_each_pruner_name_builds_its_pruner_with_its_budget(tmp_path, search, kind, epochs):
    pruner = make_pruner(_settings(tmp_path, **search))
    assert type(pruner) is kind
    assert set(_first_pruned_epochs(pruner)) == epochs  # (Hyperband: each bad trial pruned in its own bracket)


def test_keras_tuner_hyperband_takes_fewer_epochs_than_optunas_first_rung(tmp_path):
    # (pruner_min_epochs, default 3, is Optuna's; Keras Tuner's brackets start at one epoch)
    assert _settings(tmp_path, engine="keras-tuner", tuner="hyperband", pruner_max_epochs=2).pruner_max_epochs == 2
    with pytest.raises(ConfigError, match=r"pruner_max_epochs \(2\) one >= pruner_min_epochs"):
        _settings(tmp_path, pruner="hyperband", pruner_max_epochs=2)


def test_successive_halving_prunes_a_bad_trial_on_the_epochs_it_reports(tmp_path):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=make_pruner(_settings(tmp_path, pruner="successive_halving",
                                                                         pruner_min_epochs=1)))
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
    ({"timeout": "1h"}, "--timeout (search.timeout) must be a number of seconds > 0, got '1h'"),
    ({"decoding_choice": "large"}, "unknown search.decoding_choice 'large'; choose one of full, small, off")])
def test_bad_engine_choices_are_one_error_each(tmp_path, search, message):
    with pytest.raises(ConfigError) as error:
        _settings(tmp_path, **search)
    assert message in str(error.value)


@pytest.mark.parametrize("search, message", [
    ({"engine": "ray"}, "unknown engine 'ray'; choose one of optuna, keras-tuner"),
    ({"heartbeat_seconds": 10, "grace_seconds": 15}, "search.grace_seconds (15) must be at least twice"),
    ({"heartbeat_seconds": 0}, "search.heartbeat_seconds (0), which must be at least 1"),
    ({"promote_margin": -0.01}, "search.promote_margin must be a number >= 0 (in the metric's units), got -0.01"),
    ({"promote_margin": True}, "search.promote_margin must be a number >= 0 (in the metric's units), got True"),
    ({"promote_margin": "small"}, "search.promote_margin must be a number >= 0 (in the metric's units), got 'small'"),
    ({"trials": 0}, "--trials must be at least 1, got 0"),
    ({"ensemble": 0}, "search.ensemble must be a whole number >= 1 (1: no ensemble), got 0"),
    ({"ensemble": 2.5}, "search.ensemble must be a whole number >= 1 (1: no ensemble), got 2.5"),
    ({"ensemble": True}, "search.ensemble must be a whole number >= 1 (1: no ensemble), got True"),
    ({"export": "no"}, "search.export must be true or false, got 'no'"),
    ({"pruner_patience": 3}, "unknown search setting(s) pruner_patience in")])
def test_bad_search_settings_are_one_error_each(tmp_path, search, message):
    with pytest.raises(ConfigError) as error:
        _settings(tmp_path, **search)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_decoding_choice_is_off_unless_the_experiment_asks_for_it(tmp_path):
    assert _settings(tmp_path).decoding_choice == "off"
    assert _settings(tmp_path, decoding_choice="small").decoding_choice == "small"
    for bare, value in (("off", "off"), ("on", "full")):  # YAML reads a bare off or on as a boolean
        path = tmp_path / f"{bare}.yaml"
        path.write_text(f"search:\n  decoding_choice: {bare}\n  space: {{units: {{choices: [32, 64]}}}}\n")
        assert read_settings(path).decoding_choice == value


def test_an_experiment_without_a_search_space_says_where_to_look(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("config: {units: 64}\n")
    with pytest.raises(ConfigError, match="has no search.space section; see experiments/shapes.yaml"):
        read_settings(path)


def test_the_search_command_refuses_what_it_cannot_run_in_one_line(tmp_path, shapes_dir, capsys, monkeypatch):
    """An unknown experiment, a tracking server that does not answer, Keras Tuner on a shared storage or in its
    distributed mode: one line each, exit 2, nothing written."""
    from captioning.serving.infra import free_port
    from tuning import search as search_cli

    monkeypatch.chdir(tmp_path)
    local = ["--data", str(shapes_dir), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    cases = [
        (["--experiment", "absent", *local], "experiment 'absent' not found", "available: flickr8k"),
        (["--data", str(shapes_dir), "--tracking-uri", f"http://127.0.0.1:{free_port()}"],
         "the MLflow tracking server http://127.0.0.1:", "does not answer"),
        (["--engine", "keras-tuner", "--storage", "postgresql://u@127.0.0.1:1/optuna", *local],
         "Keras Tuner keeps its state in local files and cannot use --storage", "use --engine optuna")]
    for argv, *expected in cases:
        assert search_cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and all(text in err for text in expected), err
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    assert search_cli.main(["--engine", "keras-tuner", *local]) == 2
    assert "Keras Tuner's distributed mode (KERASTUNER_* variables) is not supported" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "keras_tuner").exists()


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
