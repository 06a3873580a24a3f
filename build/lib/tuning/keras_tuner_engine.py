"""Keras Tuner: Bayesian optimisation (or Hyperband: `search.tuner`) over the same space, each trial run by the
shared TrialRunner.

The tuner's state lives in a directory next to the MLflow database; with overwrite=False a rerun reloads it,
continues the trial numbering, and re-runs a trial that a killed process left unfinished.

The first trial runs the base config (the space's defaults are the base values), as Optuna's trial 0 does; a
reloaded tuner already holds that trial and does not run it again.

The study's folder also holds search.json, the space and metric it was created for: a rerun with another space or
metric is refused (tuning/settings.py: check_same_search), as with Optuna.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import keras_tuner as kt

from captioning.core.names import inside
from tuning.settings import check_same_search, search_identity
from tuning.space import define_keras_tuner
from tuning.trials import TrialRunner

SEARCH_FILE = "search.json"  # in the study's folder: the search space and metric it was created for


def open_tuner(directory: Path, study: str, runner: TrialRunner, settings,
               baseline: dict[str, Any] | None = None) -> CaptionTuner:
    recorded = recorded_search(directory, study)
    check_same_search(study, recorded, settings)
    tuner = CaptionTuner(runner, settings, baseline, directory=str(directory), project_name=study, overwrite=False)
    if recorded is None:
        (inside(directory, study) / SEARCH_FILE).write_text(json.dumps(search_identity(settings), indent=1))
    return tuner


def recorded_search(directory: Path, study: str) -> dict | None:
    """The search space and metric the study was created for; None if it has not been created yet."""
    path = inside(directory, study) / SEARCH_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class CaptionTuner(kt.Tuner):
    def __init__(self, runner: TrialRunner, settings, baseline: dict[str, Any] | None = None, **kwargs):
        space = kt.HyperParameters()
        define_keras_tuner(space, settings.space, baseline)  # declared now, so that the first trial has values
        objective = kt.Objective(settings.metric, "max")
        if settings.tuner == "hyperband":  # brackets of trials trained for rungs of teacher-forced epochs
            oracle = kt.oracles.HyperbandOracle(objective=objective, seed=settings.seed, hyperparameters=space,
                                                max_epochs=settings.pruner_max_epochs or runner.base.epochs,
                                                factor=settings.pruner_reduction,
                                                max_consecutive_failed_trials=settings.trials)
            oracle.max_trials = settings.trials  # (the oracle stops creating trials once max_trials exist)
        else:
            oracle = BaselineFirstOracle(objective=objective, max_trials=settings.trials, seed=settings.seed,
                                         hyperparameters=space, max_consecutive_failed_trials=settings.trials)
        super().__init__(oracle=oracle, **kwargs)
        self.runner, self.settings, self.baseline = runner, settings, baseline
        self.last_start = runner.last_start if runner is not None else None  # no trial starts after it

    def run_trial(self, trial, *args, **kwargs):
        params = define_keras_tuner(trial.hyperparameters, self.settings.space, self.baseline)
        if "tuner/epochs" in trial.hyperparameters.values:  # Hyperband's budget for this trial
            params["epochs"] = int(trial.hyperparameters.values["tuner/epochs"])
        number = int(trial.trial_id)
        try:
            metrics = self.runner.run(number, params, baseline=params == self.baseline)
        except Exception as exc:
            self.runner.outcome(number, params, "failed", note=f"{type(exc).__name__}: {exc}")
            raise kt.errors.FailedTrialError(f"{type(exc).__name__}: {exc}") from exc
        self.runner.outcome(number, params, "complete", metrics)
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if self.last_start is not None and time.monotonic() > self.last_start:
            self.oracle.max_trials = len(self.oracle.trials)  # the oracle stops once max_trials exist

    def save_model(self, trial_id, model, step=0):
        pass  # the model is logged to MLflow by the runner


class BaselineFirstOracle(kt.oracles.BayesianOptimizationOracle):
    """Gaussian-process Bayesian optimisation whose first trial takes the space's defaults, not a random point."""

    def populate_space(self, trial_id):
        if not self.trials:
            return {"status": kt.engine.trial.TrialStatus.RUNNING,
                    "values": {hp.name: hp.default for hp in self.hyperparameters.space}}
        return super().populate_space(trial_id)
