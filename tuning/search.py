"""Hyperparameter search over the captioning pipeline with Optuna or Keras Tuner, every trial logged to MLflow,
the best model registered as `captioner@champion`.

    python tuning/search.py                       # the embedded dataset, experiments/shapes.yaml, Optuna
    python tuning/search.py --data ../shared/flickr8k --trials 12
    python tuning/search.py --engine keras-tuner
    python tuning/search.py --study NAME          # on N machines with $CAPTIONING_STORAGE=postgresql://... and
                                                  # $MLFLOW_TRACKING_URI=http://... set: one shared study

Running the same command again resumes the study. `mlflow ui` in the same directory shows the runs.
Several workers share one study on PostgreSQL (python -m captioning.serving.infra starts a local one; docs/workers.md).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from captioning.config import ConfigError, load_config
from captioning.core.cache import cache_root
from captioning.core.locks import FileLock, Guard, LockHeld, shared
from captioning.core.names import check_name, inside
from captioning.core.project import experiments_dir
from captioning.core.tracking import (
    ROLE,
    STUDY,
    ensure_experiment,
    password_warning,
    quiet_libraries,
    redact,
    resolve_tracking_uri,
    run_state,
)
from tuning.coordination import Heartbeats, check_storage, worker_id
from tuning.summary import log_study_figures, summarize

PROJECT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="PATH", help="dataset folder (Flickr8k layout); default: the embedded dataset")
    p.add_argument("--experiment", metavar="NAME", help="experiments/NAME.yaml (base config, search space and "
                   "settings); default: shapes for the embedded dataset, flickr8k otherwise")
    p.add_argument("--engine", choices=("optuna", "keras-tuner"), help="default: the experiment's (optuna)")
    p.add_argument("--trials", type=int, metavar="N", help="finished trials the study should hold; a rerun "
                   "only runs the missing ones (default: the experiment's)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="start no new trial after this long")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="this run's wall-time budget: no trial starts "
                   "after it, and a trial still training ends with its current epoch, complete with its best epoch "
                   "so far; then the best model is registered as usual (default: the experiment's search.budget)")
    p.add_argument("--study", metavar="NAME", help="study name (default: EXPERIMENT-ENGINE-HASH of the data "
                   "and base config); the same name resumes the same study, which must keep its search space and "
                   "metric (1-100 letters, digits, '.', '_', '-')")
    p.add_argument("--storage", metavar="URL", help="Optuna storage: sqlite:///FILE for one worker, "
                   "postgresql://USER@HOST/DB for any number, its password in ~/.pgpass or $PGPASSWORD (default: "
                   "$CAPTIONING_STORAGE, which keeps a whole URL out of the process list; else ./optuna.db)")
    p.add_argument("--metric", help="dev metric to maximise, with beam search: dev_bleu1..4 (NLTK), "
                   "dev_coco_bleu1..4, dev_meteor, dev_rouge_l, dev_cider (CIDEr-D), dev_spice; or greedy: "
                   "dev_greedy_bleu4 etc. (default: the experiment's, dev_bleu4)")
    p.add_argument("--seed", type=int, help="sampler seed and training seed (default: 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config value for every trial (repeatable)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                   "else ./mlflow.db)")
    p.add_argument("--registered-model", metavar="NAME", help="registry name (default: captioner)")
    p.add_argument("-v", "--verbose", action="store_true", help="print a line per epoch of every trial (on a "
                   "terminal, a status line shows the running trial's latest epoch anyway)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for option, url in (("--storage", args.storage), ("--tracking-uri", args.tracking_uri)):
        warning = password_warning(option, url)
        if warning:
            print(f"search: {warning}", file=sys.stderr)
    _quiet_libraries()
    from captioning.data.dataset import DataError
    from captioning.features.weights import WeightsError
    from captioning.serving.mlflow_model import ModelNotFound
    from captioning.serving.registry import RegistryError
    from tuning.trials import INTERRUPTED

    def interrupt(signum, frame):  # as Python's own, but remembered: see stop_if_interrupted
        INTERRUPTED.set()
        raise KeyboardInterrupt

    INTERRUPTED.clear()
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        search(args)
    except (ConfigError, DataError, WeightsError, RegistryError, ModelNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the running trial is recorded as interrupted (not counted); nothing else is lost
        print("\nsearch: interrupted; the running trial does not count yet. Run the same command to resume: that "
              "trial goes on from its last finished epoch.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
        while _LOCKS:
            _LOCKS.pop().close()
    return 0


def _quiet_libraries() -> None:
    """One line per trial is the search's output."""
    import optuna

    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def search(args) -> None:
    from mlflow import MlflowClient

    from captioning.data.synthetic import dataset_path
    from captioning.features.prepare import load_and_report
    from tuning import tracking
    from tuning.decoding_choice import choose_decoding
    from tuning.progress import EpochProgress
    from tuning.settings import read_settings
    from tuning.space import base_values
    from tuning.trials import TrialRunner

    experiment = _experiment_path(args.experiment, embedded=args.data is None)
    check_name(experiment.stem, "experiment", "shapes")  # MLflow's experiment name; it begins the default study name
    if args.study is not None:
        check_name(args.study, "--study", "shapes-wider-space")
    settings = read_settings(experiment, engine=args.engine, trials=args.trials, timeout=args.timeout,
                             budget=args.budget, metric=args.metric, seed=args.seed,
                             registered_model=args.registered_model)
    overrides = args.set + ([f"seed={args.seed}"] if args.seed is not None else [])
    base = load_config(experiment, overrides)
    baseline = base_values(settings.space, base)  # a new study's first trial; outside the space: an error now
    dataset = load_and_report(dataset_path(args.data), seed=base.seed)
    fingerprint = dataset.fingerprint()
    # The default name covers data and base config: other data or other --set values start another study.
    identity = hashlib.sha256(f"{fingerprint}|{json.dumps(base.identity(), sort_keys=True)}".encode()).hexdigest()
    study = args.study or f"{experiment.stem}-{settings.engine}-{identity[:8]}"
    uri = resolve_tracking_uri(args.tracking_uri)
    _check_tracking_server(uri)
    storage = args.storage or os.environ.get("CAPTIONING_STORAGE") or f"sqlite:///{run_state('optuna.db')}"
    if settings.engine == "optuna":
        check_storage(storage)
    else:
        _check_keras_tuner_alone(storage)
    server = shared(storage)  # (Keras Tuner refused a shared storage just above)
    lock = _single_worker_lock(storage if settings.engine == "optuna" else None, study)
    guard = Guard(storage, study)

    client = MlflowClient()
    with _study_database(storage), guard.hold("creating the study's MLflow run"):  # one parent run in all
        _check_same_search(study, storage, settings)  # before anything is written
        experiment_id = ensure_experiment(experiment.stem)
        if lock is not None:  # this process alone runs the study, so whatever is still RUNNING was interrupted
            stale = tracking.close_stale_runs(experiment_id, study)
            if stale:
                print(f"search: marked {stale} MLflow run(s) left RUNNING by an interrupted search as KILLED")
        parent = tracking.parent_run_id(experiment_id, study)
        if parent is None:
            parent = _create_parent_run(client, experiment_id, experiment.stem, study, settings, dataset, fingerprint,
                                        base, storage)
            print(f"search: study {study} (new), {settings.engine}, {settings.trials} trials, metric {settings.metric}")
        else:
            client.update_run(parent, status="RUNNING")
            print(f"search: study {study} (resuming), {settings.engine}, metric {settings.metric}")
    if server:
        print(f"search: worker {worker_id()} on {redact(storage)}, tracking {redact(uri)}")

    progress = EpochProgress(settings.epoch_metric, verbose=args.verbose)
    # Running trials' state, so that an interrupted one resumes; local to this machine, like the feature cache.
    storage_key = hashlib.sha256(storage.encode()).hexdigest()[:8]
    checkpoints = inside(cache_root() / "checkpoints", f"{study}-{storage_key}")  # removed when the study finishes
    runner = TrialRunner(base, dataset, settings, study, settings.engine, experiment_id, parent, progress,
                         checkpoints)
    start = time.perf_counter()
    status, finished = "FAILED", False
    try:
        if settings.engine == "optuna":
            from tuning.optuna_engine import fail_interrupted_trials, open_study, run_optuna, study_record

            with _study_database(storage), guard.hold("opening the study"):  # a fresh database: create tables once
                optuna_study = open_study(study, storage, settings, runner.lost, baseline)
            if lock is not None:  # one process per study: whatever is still running was interrupted
                fail_interrupted_trials(optuna_study, runner.lost)
            with (contextlib.closing(Heartbeats(storage, study, settings.heartbeat_seconds)) if server
                  else contextlib.nullcontext()) as beats:
                finished = run_optuna(optuna_study, runner, settings, guard, beats)
            if finished:
                log_study_figures(client, parent, optuna_study, progress.say)
            record = lambda: study_record(optuna_study)  # the study is the record; MLflow mirrors it
        else:
            from tuning.keras_tuner_engine import open_tuner

            tuner = open_tuner(run_state("keras_tuner"), study, runner, settings, baseline)
            tuner.search()
            finished = True
            record = lambda: tracking.trial_record(experiment_id, study, settings.metric)  # (no run ids in KT's)
        status = "FINISHED"
        if finished:  # no trial is left to resume
            shutil.rmtree(checkpoints, ignore_errors=True)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if not server or finished:  # on a server the parent run ends with the study, not with one worker
            client.set_terminated(parent, status)
    seconds = time.perf_counter() - start
    if server and not finished:
        summarize(client, parent, study, settings, dataset, uri, seconds, record(), register=False)
        print("search: trials are still running on other workers (or the timeout came first); the worker that "
              "finishes the study's last trial registers its best model")
        return
    with guard.hold("registering the champion"):  # workers finishing together register once
        if server:  # nothing runs any more: close any trial run a lost worker left RUNNING
            for role in ("trial", "ensemble", "decoding"):
                tracking.close_stale_runs(experiment_id, study, role=role)
        summarize(client, parent, study, settings, dataset, uri, seconds, record(), storage,
                  prepare=runner.features, ensemble=runner.ensemble,
                  decoding=lambda best: choose_decoding(best, runner))


def _experiment_path(name: str | None, embedded: bool) -> Path:
    name = name or ("shapes" if embedded else "flickr8k")
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = experiments_dir() / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(p.stem for p in sorted(experiments_dir().glob("*.yaml")))
        raise ConfigError(f"experiment {name!r} not found ({path}); available: {available}")
    return path


def _check_tracking_server(uri: str) -> None:
    """A tracking server that does not answer is one clear error now, not minutes of retries later."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
    except urllib.error.HTTPError:
        return  # it answers (a proxy or an auth layer may refuse /health itself)
    except OSError as exc:
        raise ConfigError(f"the MLflow tracking server {redact(uri)} does not answer ({exc}); start it (for a local "
                          "try-out: python -m captioning.serving.infra start) or check --tracking-uri / "
                          "$MLFLOW_TRACKING_URI") from None


def _check_keras_tuner_alone(storage: str) -> None:
    if any(os.environ.get(v) for v in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")):
        raise ConfigError("Keras Tuner's distributed mode (KERASTUNER_* variables) is not supported: its chief "
                          "holds the search in memory, so losing it loses the search. For several workers use "
                          "--engine optuna with --storage postgresql://... (README: Many workers)")
    if shared(storage):
        raise ConfigError("Keras Tuner keeps its state in local files and cannot use --storage "
                          f"{redact(storage)}; for several workers use --engine optuna")


def _single_worker_lock(storage: str | None, study: str) -> FileLock | None:
    """An exclusive lock for a study whose state is a local file (Optuna on SQLite, Keras Tuner's folder), held
    until main() returns or the process dies (the kernel drops it even after kill -9); refused at once if another
    search holds it. None for a database server, which several workers may share."""
    if storage is None:
        path, what = inside(run_state("keras_tuner"), f"{study}.lock"), "Keras Tuner keeps its state in local files"
    elif storage.startswith("sqlite:///"):
        database = Path(storage[len("sqlite:///"):])
        path, what = database.with_name(f"{database.name}.{hashlib.sha256(study.encode()).hexdigest()[:12]}.lock"), \
            "SQLite storage serves one process"
    else:
        return None
    lock = FileLock(path, if_held="refuse", say=f"another search is already running study {study!r} here, and "
                    f"{what}; wait for it to finish, or run parallel workers on a database server: --storage "
                    "postgresql://USER@HOST/DB")
    try:
        lock.acquire()
    except LockHeld as exc:
        raise ConfigError(str(exc)) from None
    _LOCKS.append(lock)
    return lock


_LOCKS: list = []  # held until main() returns


@contextlib.contextmanager
def _study_database(storage: str):
    """A study database that cannot be opened (not running, wrong password, no such database) is one clear error."""
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    try:
        yield
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, StorageInternalError) as exc:
        cause = exc.__cause__ or exc
        cause = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
        raise ConfigError(f"cannot open the study database {redact(storage)} ({cause}); start it (for a local "
                          "try-out: python -m captioning.serving.infra start) or check --storage / "
                          "$CAPTIONING_STORAGE") from None


def _check_same_search(study: str, storage: str, settings) -> None:
    """A study resumes only the search it was created for (its space and metric, recorded when it was created)."""
    from tuning.settings import check_same_search

    if settings.engine == "optuna":
        from tuning.optuna_engine import recorded_search

        check_same_search(study, recorded_search(study, storage), settings)
    else:
        from tuning.keras_tuner_engine import recorded_search

        check_same_search(study, recorded_search(run_state("keras_tuner"), study), settings)


def _create_parent_run(client, experiment_id, name, study, settings, dataset, fingerprint, base, storage) -> str:
    run = client.create_run(experiment_id, run_name=study, tags={
        ROLE: "study", STUDY: study, "engine": settings.engine,
        "data_fingerprint": fingerprint, "git_commit": _git_commit()})
    parent = run.info.run_id
    for key, value in {"engine": settings.engine, "data": str(dataset.root), "data_fingerprint": fingerprint,
                       "experiment": name, "metric": settings.metric, "seed": settings.seed,
                       "ensemble": settings.ensemble, "decoding_choice": settings.decoding_choice,
                       **settings.strategy(base.epochs),
                       "storage": redact(storage) if settings.engine == "optuna" else str(run_state("keras_tuner")),
                       **{f"base.{k}": v for k, v in base.to_dict().items()}}.items():
        client.log_param(parent, key, value)
    client.log_text(parent, json.dumps([p.describe() for p in settings.space], indent=1), "search_space.json")
    return parent


def _git_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True, timeout=5)
        return done.stdout.strip() or "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


if __name__ == "__main__":
    sys.exit(main())
