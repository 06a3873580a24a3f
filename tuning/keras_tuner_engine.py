"""Keras Tuner: Bayesian optimisation over the same space, each trial run by the shared TrialRunner.

The tuner's state lives in a directory next to the MLflow database; with overwrite=False a rerun reloads it,
continues the trial numbering, and re-runs a trial that a killed process left unfinished.
"""
from __future__ import annotations

import time
from pathlib import Path

import keras_tuner as kt

from tuning.space import define_keras_tuner
from tuning.trials import TrialRunner


class CaptionTuner(kt.BayesianOptimization):
    def __init__(self, runner: TrialRunner, settings, on_trial, **kwargs):
        super().__init__(objective=kt.Objective(settings.metric, "max"), max_trials=settings.trials,
                         seed=settings.seed, max_consecutive_failed_trials=settings.trials, **kwargs)
        self.runner, self.settings, self.on_trial = runner, settings, on_trial

    def run_trial(self, trial, *args, **kwargs):
        params = define_keras_tuner(trial.hyperparameters, self.settings.space)
        number = int(trial.trial_id)
        try:
            metrics = self.runner.run(number, params)
        except Exception as exc:
            self.on_trial(number, params, "failed", None, f"{type(exc).__name__}: {exc}")
            raise kt.errors.FailedTrialError(f"{type(exc).__name__}: {exc}") from exc
        self.on_trial(number, params, "complete", metrics, "")
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    def on_search_begin(self):
        super().on_search_begin()
        self.started = time.monotonic()

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if self.settings.timeout is not None and time.monotonic() - self.started > self.settings.timeout:
            self.oracle.max_trials = len(self.oracle.trials)  # the oracle stops once max_trials exist

    def save_model(self, trial_id, model, step=0):
        pass  # the model is logged to MLflow by the runner


def open_tuner(directory: Path, study: str, runner: TrialRunner, settings, on_trial) -> CaptionTuner:
    return CaptionTuner(runner, settings, on_trial, directory=str(directory), project_name=study, overwrite=False)


def finished_trials(tuner: CaptionTuner) -> list:
    return [t for t in tuner.oracle.trials.values() if t.status in ("COMPLETED", "FAILED", "INVALID")]
