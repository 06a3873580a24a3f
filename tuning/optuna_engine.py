"""Optuna: the sampler and pruner the experiment names (default: random sampling and a median pruner on the
per-epoch dev metric), persistent storage so a rerun resumes, and any number of workers on one study
when the storage is a database server.

Counting. A study "holds" a trial once it is complete, pruned or failed with an error. A trial whose process died
(killed, machine lost) is failed without an error and does not count, so another trial runs in its place. Workers
start a trial only while held and running trials are fewer than `--trials`, deciding under the study's lock, so a
shared study ends with exactly the number asked for.

Baseline. A new study (one that holds no trial at all, not even a queued one) gets the base config queued as its
trial 0, so that the search's best is never worse on dev than the config it started from. The baseline is never
pruned, and if it is interrupted or lost its values run again, like any interrupted trial's.
"""
from __future__ import annotations

import gc
import os
import time
import warnings
from collections import Counter
from contextlib import nullcontext
from typing import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from captioning.core.locks import KEEPALIVE, Guard, retry, seconds_since_outage, shared
from tuning.coordination import Heartbeats, worker_id
from tuning.settings import check_same_search, search_identity
from tuning.space import suggest_optuna
from tuning.trials import PruneTrial, TrialLost, TrialRunner, stop_if_interrupted

ERROR = "fail_reason"  # user attribute of a trial that failed with an error (a lost trial has none)
WORKER = "worker"  # user attribute: host:pid of the process running the trial
RESUMES = "resumes"  # user attribute: the interrupted trial whose values (and checkpoint) this one takes up
ATTEMPT = "attempt"  # user attribute: how many interrupted trials in a row have run these values (1: none before)
BASELINE = "baseline"  # user attribute (True): the trial runs the experiment's base config
QUEUED = "queued_values"  # user attribute of a queued trial: the values enqueue_trial gave it
RUN_ID = "mlflow_run_id"  # user attribute of a recorded trial: its MLflow run, the mirror of this record
CUT = "cut_by_budget_after_epoch"  # user attribute of a complete trial whose training search.budget ended
SEARCH = "search"  # study user attribute: the search space and metric the study was created for
MAX_ATTEMPTS = 3
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def recorded_search(name: str, storage: str) -> dict | None:
    """The search space and metric the study `name` was created for; None if there is no such study yet."""
    backend = optuna.storages.RDBStorage(storage, engine_kwargs={
        "connect_args": KEEPALIVE if shared(storage) else {"timeout": 60}})
    try:
        return backend.get_study_user_attrs(backend.get_study_id_from_name(name)).get(SEARCH)
    except KeyError:  # no such study
        return None
    finally:
        backend.engine.dispose()


def open_study(name: str, storage: str, settings, on_lost: Callable[..., None],
               baseline: dict | None = None) -> optuna.Study:
    """Create or load the study. On a database server, trials carry a heartbeat, and a trial whose heartbeat stops
    for `grace_seconds` is failed by whichever worker notices, which calls on_lost(trial, rerun=...).

    `baseline` (the base values of the searched keys) is queued as trial 0 if the study holds no trial yet. The
    caller holds the study's lock, so that of several workers opening a new study together only one queues it."""
    if shared(storage):
        with warnings.catch_warnings():  # heartbeats have been "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            backend = optuna.storages.RDBStorage(
                storage, engine_kwargs={"pool_pre_ping": True, "connect_args": KEEPALIVE},
                heartbeat_interval=settings.heartbeat_seconds,
                grace_period=settings.grace_seconds,
                heartbeat_stale_trial_callback=lambda study, trial: _lost(study, trial, on_lost))
    else:  # two studies may share one SQLite file: wait for the other's writes rather than fail
        backend = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.create_study(study_name=name, storage=backend, direction="maximize", load_if_exists=True)
    check_same_search(name, study.user_attrs.get(SEARCH), settings)  # (search.py checked before; a worker may not)
    if SEARCH not in study.user_attrs:
        study.set_user_attr(SEARCH, search_identity(settings))
    # Seeded by the number of trials so far, so that a resumed study does not replay its first suggestions; on a
    # server each worker draws its own seed, so that workers starting together do not suggest the same values.
    seed = settings.seed + len(study.trials) + (int.from_bytes(os.urandom(4), "big") if shared(storage) else 0)
    study.sampler = make_sampler(settings, seed % 2**32, workers=shared(storage))
    study.pruner = make_pruner(settings)
    if baseline and not study.get_trials(deepcopy=False):
        study.enqueue_trial(baseline, user_attrs={BASELINE: True, QUEUED: baseline})
    return study


def make_sampler(settings, seed: int, workers: bool = False) -> optuna.samplers.BaseSampler:
    """search.sampler: multivariate TPE over groups of keys sampled together (a conditional key joins its
    decoder's group), with a constant liar when workers share the study (running trials count as bad, so workers
    starting together spread out); random; Gaussian-process BO (needs PyTorch); CMA-ES (categorical keys sampled
    independently). Seeded; the first min(4, trials) trials are random for all but `random`."""
    startup = min(4, settings.trials)
    with warnings.catch_warnings():  # multivariate/group TPE and GP are "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if settings.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if settings.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        if settings.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True,
                                          constant_liar=workers)


def make_pruner(settings) -> optuna.pruners.BasePruner:
    """search.pruner, on the epochs reported as steps 1, 2, ...: median (after `pruner_startup_trials` trials and
    `pruner_warmup_epochs` epochs), Hyperband or successive halving (rungs from `pruner_min_epochs`, one trial in
    `pruner_reduction` going on; Hyperband up to `pruner_max_epochs`, else the longest trial seen), or none."""
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=settings.pruner_min_epochs,
                                              max_resource=settings.pruner_max_epochs or "auto",
                                              reduction_factor=settings.pruner_reduction)
    if settings.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=settings.pruner_min_epochs,
                                                      reduction_factor=settings.pruner_reduction)
    # Optuna may prune at step == n_warmup_steps.
    return optuna.pruners.MedianPruner(n_startup_trials=settings.pruner_startup_trials,
                                       n_warmup_steps=settings.pruner_warmup_epochs + 1)


def fail_interrupted_trials(study: optuna.Study, on_lost: Callable[..., None]) -> int:
    """On SQLite (one process per study) every trial still RUNNING at start was left by a killed process: it is
    failed (not counted), and its values are queued to run first, so that it resumes from its checkpoint."""
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for trial in stale:
        values = queued_values(trial)
        rerun = requeue(study, trial.number, values, trial.user_attrs.get(ATTEMPT, 1),
                        baseline=trial.user_attrs.get(BASELINE, False))
        fail(study, trial.number)
        on_lost(trial, rerun=rerun)
    return len(stale)


def run_optuna(study: optuna.Study, runner: TrialRunner, settings, guard: Guard, beats: Heartbeats | None) -> bool:
    """Run trials until the study holds `settings.trials` (or the timeout passes). On a server (`beats`: the running
    trials' heartbeats), a worker with nothing left to start waits for the trials still running elsewhere, since one
    may be lost and need replacing. Returns True when the study is finished: enough trials, none running."""
    waiting = False
    while True:
        stop_if_interrupted()
        timed_out = runner.last_start is not None and time.monotonic() >= runner.last_start
        trial, trials = _claim_trial(study, settings, guard, beats, timed_out, runner)
        if trial is not None:
            waiting = False
            _run_trial(study, trial, runner, settings, beats)
            gc.collect()
            continue
        if trials is None:  # claimed one, then lost it (the lock did not survive a database restart)
            continue
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if timed_out or not running:
            return not running and held(trials) >= settings.trials
        if not waiting:
            runner.say(f"search: nothing left to start; waiting for {running} trial(s) running on other workers")
            waiting = True
        time.sleep(min(settings.heartbeat_seconds, 5))


def _claim_trial(study, settings, guard: Guard, beats: Heartbeats | None, timed_out: bool, runner: TrialRunner):
    """Under the study's lock: fail lost trials, count, and start a trial if one is still wanted.
    Returns (trial or None, the trials read)."""
    log = runner.say
    with guard.hold("starting a trial"):
        if beats is not None:
            retry(lambda: fail_lost_trials(study, settings.grace_seconds, runner.lost), "checking for lost trials",
                  log=log)
        trials = retry(lambda: study.get_trials(deepcopy=False), "reading the study", log=log)
        if timed_out or _started(trials) >= settings.trials:
            return None, trials
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")  # this loop replaces optimize()
            trial = retry(study.ask, "starting a trial", log=log)
        try:
            if beats is not None:  # the first beat, before the trial is claimed
                retry(lambda: beats.beat(trial.number), "starting a trial", log=log)
            retry(lambda: trial.set_user_attr(WORKER, worker_id()), "starting a trial", log=log)
        except UpdateFinishedTrialError:
            return None, None  # failed as unclaimed by another worker while the lock was down
        if guard.still_held():
            return trial, trials
    # The lock fell with a database restart while this worker held it: another worker may have counted the same
    # free place. Count again, and give this trial up (failed, not counted) if the study now has one too many.
    with guard.hold("re-checking the trial count"):
        if _started(retry(lambda: study.get_trials(deepcopy=False), "reading the study", log=log)) > settings.trials:
            retry(lambda: fail(study, trial.number), "giving a trial up", log=log)
            log(f"search: trial {trial.number} given up: another worker started one in the same free place "
                "while the database restarted")
            return None, None
    return trial, trials


def _run_trial(study, trial: optuna.Trial, runner: TrialRunner, settings, beats: Heartbeats | None) -> None:
    """One trial from start to record: its values, training (reporting each epoch to the pruner), then its outcome
    told to the study, the record; the runner mirrors each step to MLflow and the console."""
    log = runner.say
    runner.last_run_id = None  # until runner.run has started this trial's MLflow run

    def report(epoch: int, value: float) -> None:
        try:
            retry(lambda: trial.report(value, epoch), "reporting an epoch", log=log)
            prune = retry(trial.should_prune, "reporting an epoch", log=log)
        except UpdateFinishedTrialError:
            raise TrialLost(f"trial {trial.number} was declared lost by another worker") from None
        if prune and not baseline:  # the baseline runs to the end: it is what the search must not fall below
            raise PruneTrial(f"pruned after epoch {epoch}")

    def finish(state: TrialState, value: float | None = None, error: str | None = None,
               cut: int | None = None) -> bool:
        """Record the outcome, with the trial's MLflow run (and the epoch after which the budget ended it); False if
        another worker had declared the trial lost meanwhile."""
        run_id = runner.last_run_id
        attrs = {**({ERROR: error[:2000]} if error is not None else {}), **({RUN_ID: run_id} if run_id else {}),
                 **({CUT: cut} if cut is not None else {})}
        try:
            for key, text in attrs.items():
                retry(lambda: trial.set_user_attr(key, text), "recording a trial's result", log=log)
            final = retry(lambda: study.tell(trial, value if state == TrialState.COMPLETE else None, state=state,
                                             skip_if_finished=True).state, "recording a trial's result", log=log)
        except UpdateFinishedTrialError:
            final = None
        return final == state

    params: dict = {}
    baseline = False
    try:
        user_attrs = retry(lambda: trial.user_attrs, "starting a trial", log=log)
        baseline = bool(user_attrs.get(BASELINE))
        params = retry(lambda: suggest_optuna(trial, settings.space), "starting a trial", log=log)
        with beats.during(trial.number) if beats is not None else nullcontext():
            metrics = runner.run(trial.number, params, report, resumes=user_attrs.get(RESUMES), baseline=baseline)
    except (UpdateFinishedTrialError, TrialLost):  # declared lost before it began (while suggesting), or while running
        runner.abandoned(trial.number)  # its result came too late: the study counts a replacement
    except KeyboardInterrupt:  # not counted; queued first, so that no other trial takes its place meanwhile
        values = params or queued_values(study.get_trials(deepcopy=False)[trial.number])
        # attempt 0: a Ctrl-C always queues its values
        retry(lambda: requeue(study, trial.number, values, 0, baseline), "queueing a trial", log=log)
        finish(TrialState.FAIL)
        raise
    except PruneTrial as exc:
        runner.outcome(trial.number, params, "pruned", note=str(exc))
        if not finish(TrialState.PRUNED):
            runner.abandoned(trial.number)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        runner.outcome(trial.number, params, "failed", note=reason)
        if not finish(TrialState.FAIL, error=reason):
            runner.abandoned(trial.number)
    else:
        if finish(TrialState.COMPLETE, metrics[settings.metric], cut=metrics.get("cut_after")):
            runner.outcome(trial.number, params, "complete", metrics)
        else:
            runner.abandoned(trial.number)


def study_record(study: optuna.Study) -> tuple[dict[str, int], list[str]]:
    """The study's trials by state (a trial failed without an error was interrupted or lost with its process), and
    the MLflow runs of its complete trials, best first (on equal values the earlier trial, as study.best_trial)."""
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
             TrialState.WAITING: "queued"}
    trials = study.get_trials(deepcopy=False)
    states = Counter(names.get(t.state) or ("failed" if ERROR in t.user_attrs else "interrupted or lost")
                     for t in trials)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and RUN_ID in t.user_attrs),
                      key=lambda t: -t.value)
    return states, [t.user_attrs[RUN_ID] for t in complete]


def held(trials: list[FrozenTrial]) -> int:
    """Trials the study holds: finished ones, except those lost with their process."""
    return sum(t.state != TrialState.FAIL or ERROR in t.user_attrs for t in trials if t.state in FINISHED)


def _started(trials: list[FrozenTrial]) -> int:
    # (WAITING trials, enqueued by hand, are not counted: the next ask() runs them first.)
    return held(trials) + sum(t.state == TrialState.RUNNING for t in trials)


def fail_lost_trials(study: optuna.Study, grace_seconds: float, on_lost: Callable[..., None]) -> None:
    """On a server, under the study's lock: trials whose heartbeat stopped (Optuna's own check), and trials a worker
    created but never claimed (its locked start-up was cut short: no worker attribute).

    Heartbeats are skipped until this worker has reached the database for `grace_seconds` without a failure: after
    an outage every heartbeat is old, and the live workers need one interval to catch up."""
    if seconds_since_outage() > grace_seconds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if WORKER not in trial.user_attrs and fail(study, trial.number):
            _lost(study, trial, on_lost)


def _lost(study: optuna.Study, trial: FrozenTrial, on_lost: Callable[..., None]) -> None:
    """A trial lost with its process on a server (already failed) gives way to new values, except the baseline,
    whose values run again."""
    rerun = bool(trial.user_attrs.get(BASELINE)) and requeue(study, trial.number, queued_values(trial),
                                                              trial.user_attrs.get(ATTEMPT, 1), baseline=True)
    on_lost(trial, rerun=rerun)


def requeue(study: optuna.Study, number: int, values: dict, attempt: int, baseline: bool = False) -> bool:
    """Queue an interrupted trial's values to run next, where the new trial resumes its checkpoint; once per trial,
    and at most MAX_ATTEMPTS times in a row, so that values which kill their process (out of memory) give way.
    The rerun of the baseline is the baseline."""
    if not values or attempt >= MAX_ATTEMPTS:
        return False
    if not any(t.user_attrs.get(RESUMES) == number for t in study.get_trials(deepcopy=False,
                                                                            states=(TrialState.WAITING,))):
        study.enqueue_trial(values, user_attrs={RESUMES: number, ATTEMPT: attempt + 1, QUEUED: values,
                                                **({BASELINE: True} if baseline else {})})
    return True


def queued_values(trial: FrozenTrial) -> dict:
    """The values a trial runs: those suggested, or before that those it was queued with (QUEUED), read through
    Optuna's public API only. (A trial queued by a version before QUEUED and stopped before it suggested its values
    has none here: queued again, it draws new ones.)"""
    return trial.params or trial.user_attrs.get(QUEUED, {})


def fail(study: optuna.Study, number: int) -> bool:
    """Fail a running trial (of any process) through Optuna's tell(); False if it had finished meanwhile (another
    worker recorded it first)."""
    try:
        study.tell(number, state=TrialState.FAIL)
    except (ValueError, UpdateFinishedTrialError):  # ValueError: "Cannot tell a COMPLETE trial", and so on
        return False
    return True
