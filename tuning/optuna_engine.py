"""Optuna: seeded TPE, a median pruner on the per-epoch dev metric, persistent storage so a rerun resumes."""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from tuning.space import suggest_optuna
from tuning.trials import PruneTrial, TrialRunner

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
KILLED = "the process running it was killed"


def open_study(name: str, storage: str, settings) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    # Seeded by the number of trials so far, so that a resumed study does not replay its first suggestions.
    study.sampler = optuna.samplers.TPESampler(seed=settings.seed + len(study.trials),
                                               n_startup_trials=min(4, settings.trials))
    # Epochs are reported as steps 1, 2, ...; Optuna may prune at step == n_warmup_steps.
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=settings.pruner_startup_trials,
                                               n_warmup_steps=settings.pruner_warmup_epochs + 1)
    return study


def fail_stale_trials(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed process (one process per SQLite study) are marked failed."""
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for trial in stale:
        study._storage.set_trial_system_attr(trial._trial_id, "fail_reason", KILLED)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(stale)


def _counted(study: optuna.Study) -> int:
    """Finished trials; one lost to a killed process does not count, so a rerun runs another in its place."""
    return sum(t.system_attrs.get("fail_reason") != KILLED for t in study.get_trials(deepcopy=False, states=FINISHED))


def run_optuna(study: optuna.Study, runner: TrialRunner, settings, on_trial) -> None:
    """Run trials until the study holds `settings.trials` finished ones (or the timeout passes)."""
    remaining = settings.trials - _counted(study)
    if remaining <= 0:
        return

    def objective(trial: optuna.Trial) -> float:
        params = suggest_optuna(trial, settings.space)

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise PruneTrial(f"pruned after epoch {epoch}")

        try:
            metrics = runner.run(trial.number, params, report)
        except KeyboardInterrupt:
            study._storage.set_trial_system_attr(trial._trial_id, "fail_reason", KILLED)
            raise
        except PruneTrial as exc:
            on_trial(trial.number, params, "pruned", None, str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            on_trial(trial.number, params, "failed", None, f"{type(exc).__name__}: {exc}")
            raise
        trial.set_user_attr("mlflow_run_id", metrics["run_id"])
        on_trial(trial.number, params, "complete", metrics, "")
        return metrics[settings.metric]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    def stop_when_enough(study: optuna.Study, trial) -> None:  # workers sharing a study on a database server
        if _counted(study) >= settings.trials:
            study.stop()

    study.optimize(objective, n_trials=remaining, timeout=settings.timeout, catch=(Exception,),
                   gc_after_trial=True, callbacks=[stop_when_enough])
