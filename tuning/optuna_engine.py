"""Optuna: seeded TPE, a median pruner on the per-epoch dev metric, persistent storage so a rerun resumes, and any
number of workers on one study when the storage is a database server.

Counting. A study "holds" a trial once it is complete, pruned or failed with an error. A trial whose process died
(killed, machine lost) is failed without an error and does not count, so another trial runs in its place. Workers
start a trial only while started-and-not-lost trials are fewer than `--trials`, deciding under the study's lock, so
a shared study ends with exactly the number asked for.
"""
from __future__ import annotations

import gc
import os
import time
from contextlib import nullcontext
import warnings
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuning.coordination import Guard, Heartbeat, retry, shared, worker_id
from tuning.space import suggest_optuna
from tuning.trials import PruneTrial, TrialRunner

ERROR = "fail_reason"  # user attribute of a trial that failed with an error (a lost trial has none)
WORKER = "worker"  # user attribute: host:pid of the process running the trial
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def open_study(name: str, storage: str, settings, on_lost: Callable[[FrozenTrial], None]) -> optuna.Study:
    """Create or load the study. On a database server, trials carry a heartbeat, and a trial whose heartbeat stops
    for `grace_seconds` is failed by whichever worker notices, which calls on_lost(trial)."""
    if shared(storage):
        backend = optuna.storages.RDBStorage(
            storage, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=settings.heartbeat_seconds,
            grace_period=settings.grace_seconds, heartbeat_stale_trial_callback=lambda study, trial: on_lost(trial))
    else:
        backend = optuna.storages.RDBStorage(storage)
    study = optuna.create_study(study_name=name, storage=backend, direction="maximize", load_if_exists=True)
    # Seeded by the number of trials so far, so that a resumed study does not replay its first suggestions, and on
    # a server by the worker too, so that workers starting together do not suggest the same values.
    seed = settings.seed + len(study.trials) + (os.getpid() * 7919 if shared(storage) else 0)
    study.sampler = optuna.samplers.TPESampler(seed=seed % 2**32, n_startup_trials=min(4, settings.trials))
    # Epochs are reported as steps 1, 2, ...; Optuna may prune at step == n_warmup_steps.
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=settings.pruner_startup_trials,
                                               n_warmup_steps=settings.pruner_warmup_epochs + 1)
    return study


def fail_interrupted_trials(study: optuna.Study, on_lost: Callable[[FrozenTrial], None]) -> int:
    """On SQLite (one process per study) every trial still RUNNING at start was left by a killed process."""
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        on_lost(trial)
    return len(stale)


def fail_lost_trials(study: optuna.Study, grace_seconds: float, on_lost: Callable[[FrozenTrial], None]) -> None:
    """On a server: trials whose heartbeat stopped (Optuna's own check), and trials whose worker died between
    creating them and starting their heartbeat (no worker attribute after the grace period)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        if WORKER not in trial.user_attrs and now - started > grace_seconds:
            try:
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                continue  # another worker got there first
            on_lost(trial)


def held(trials: list[FrozenTrial]) -> int:
    """Trials the study holds: finished ones, except those lost with their process."""
    return sum(t.state != TrialState.FAIL or ERROR in t.user_attrs for t in trials if t.state in FINISHED)


def _started(trials: list[FrozenTrial]) -> int:
    return held(trials) + sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


def run_optuna(study: optuna.Study, runner: TrialRunner, settings, on_trial, guard: Guard, server: bool,
               on_lost: Callable[[FrozenTrial], None], log: Callable[[str], None] = print) -> bool:
    """Run trials until the study holds `settings.trials` (or the timeout passes). On a server, a worker with
    nothing left to start waits for the trials still running elsewhere, since one may be lost and need replacing.
    Returns True when the study is finished: enough trials, none running."""
    deadline = time.monotonic() + settings.timeout if settings.timeout else None
    waiting = False
    while True:
        if server:
            retry(lambda: fail_lost_trials(study, settings.grace_seconds, on_lost), "checking for lost trials", log=log)
        timed_out = deadline is not None and time.monotonic() >= deadline
        with guard.hold("starting a trial"):
            trials = retry(lambda: study.get_trials(deepcopy=False), "reading the study", log=log)
            trial = None
            if not timed_out and _started(trials) < settings.trials:
                trial = retry(study.ask, "starting a trial", log=log)
                if server:
                    retry(lambda: study._storage.record_heartbeat(trial._trial_id), "starting a trial", log=log)
                retry(lambda: trial.set_user_attr(WORKER, worker_id()), "starting a trial", log=log)
        if trial is not None:
            waiting = False
            _run_trial(study, trial, runner, settings, on_trial, server, log)
            gc.collect()
            continue
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if timed_out or not running:
            return not running and held(trials) >= settings.trials
        if not waiting:
            log(f"search: nothing left to start; waiting for {running} trial(s) running on other workers")
            waiting = True
        time.sleep(min(settings.heartbeat_seconds, 5))


def _run_trial(study, trial: optuna.Trial, runner: TrialRunner, settings, on_trial, server: bool, log) -> None:
    params = suggest_optuna(trial, settings.space)

    def report(epoch: int, value: float) -> None:
        retry(lambda: trial.report(value, epoch), "reporting an epoch", log=log)
        if retry(trial.should_prune, "reporting an epoch", log=log):
            raise PruneTrial(f"pruned after epoch {epoch}")

    def tell(**outcome) -> None:
        retry(lambda: study.tell(trial, skip_if_finished=True, **outcome), "recording a trial's result", log=log)

    try:
        with Heartbeat(study._storage, trial._trial_id, settings.heartbeat_seconds) if server else nullcontext():
            metrics = runner.run(trial.number, params, report)
    except KeyboardInterrupt:
        tell(state=TrialState.FAIL)  # lost, not counted: a rerun runs another in its place
        raise
    except PruneTrial as exc:
        on_trial(trial.number, params, "pruned", None, str(exc))
        tell(state=TrialState.PRUNED)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        retry(lambda: trial.set_user_attr(ERROR, reason[:2000]), "recording a trial's result", log=log)
        on_trial(trial.number, params, "failed", None, reason)
        tell(state=TrialState.FAIL)
    else:
        retry(lambda: trial.set_user_attr("mlflow_run_id", metrics["run_id"]), "recording a trial's result", log=log)
        tell(values=metrics[settings.metric])
        on_trial(trial.number, params, "complete", metrics, "")
