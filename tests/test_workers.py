"""Several search workers on one PostgreSQL study and one MLflow tracking server, both started here on loopback by
tuning/infra.py: trials split without duplicates, one MLflow run per trial, one champion; the database restarting
mid-search; a worker killed with SIGKILL mid-trial and restarted."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import TrialState

from captioning.serving import infra as local_infra
from markers import requires_postgres
from tuning.optuna_engine import ERROR, WORKER, held

PROJECT = Path(__file__).resolve().parents[1]

EXPERIMENT = """
config: {encoder: pixels, image_size: 32, feature_grid: 4, vocab_min_count: 1, max_length: 24,
         embedding_size: 32, units: 64, learning_rate: 0.01, dropout: 0.1, epochs: %d, patience: 20}
search:
  trials: %d
  samples: 0  # no sample captions logged with each trial (tests/test_search.py checks them)
  pruner_startup_trials: 20
  heartbeat_seconds: 2
  grace_seconds: 10
  export: false  # nothing here decodes the registered version (its export: tests/test_registry.py)
  space:
    dropout: {low: 0.0, high: 0.3}
    units: {choices: [32, 64]}
"""


pytestmark = requires_postgres


def _infra(root: Path, *command: str) -> subprocess.CompletedProcess:
    """The local servers' command line, as a user runs it (python -m captioning.serving.infra)."""
    return subprocess.run([sys.executable, "-m", "captioning.serving.infra", *command, "--dir", str(root)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def servers():
    """PostgreSQL and an MLflow server started with the command line (`start`), stopped with it (`stop`) after the
    module's tests, which then finds both stopped (`status`)."""
    base = Path(tempfile.mkdtemp(prefix="captioning-infra-", dir="/tmp"))
    base.chmod(0o755)  # PostgreSQL runs as its own user when the tests run as root
    root = base / "infra"
    started = _infra(root, "start", "--pg-port", str(local_infra.free_port()), "--mlflow-port",
                     str(local_infra.free_port()))
    assert started.returncode == 0, started.stderr[-3000:]
    infra = local_infra.Infra.load(root)
    assert f"127.0.0.1:{infra.pg_port}" in started.stdout and infra.password not in started.stdout
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(infra.tracking_uri)
    yield infra
    mlflow.set_tracking_uri(previous)
    stopped = _infra(root, "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr[-3000:]
    after = _infra(root, "status")
    assert "PostgreSQL  stopped" in after.stdout and "MLflow      stopped" in after.stdout, after.stdout
    shutil.rmtree(base, ignore_errors=True)


def test_the_servers_command_line_reports_them_and_exports_what_workers_need(servers, tmp_path):
    status = _infra(servers.root, "status")
    assert status.returncode == 0 and "PostgreSQL  running" in status.stdout
    assert f"MLflow      running at {servers.tracking_uri}" in status.stdout
    env = _infra(servers.root, "env")
    exports = dict(line.removeprefix("export ").split("=", 1) for line in env.stdout.splitlines())
    storage, tracking = exports["CAPTIONING_STORAGE"].strip("'"), exports["MLFLOW_TRACKING_URI"].strip("'")
    assert (storage, tracking) == (servers.storage, servers.tracking_uri)
    with sqlalchemy.create_engine(storage).connect() as connection:  # what a worker's Optuna storage opens
        assert connection.execute(sqlalchemy.text("select 1")).scalar() == 1
    with urllib.request.urlopen(f"{tracking}/health", timeout=30) as answer:
        assert answer.status == 200
    nothing = _infra(tmp_path / "none", "status")
    assert nothing.returncode == 2 and "nothing was set up" in nothing.stderr and "infra start --dir" in nothing.stderr


def _worker(servers, tmp_path, shapes_dir, study):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CAPTIONING_STORAGE": servers.storage,
           "MLFLOW_TRACKING_URI": servers.tracking_uri}
    command = [sys.executable, str(PROJECT / "tuning" / "search.py"), "--data", str(shapes_dir),
               "--experiment", str(tmp_path / "workers.yaml"), "--study", study, "--registered-model", study]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)


def _worker_in_this_process(servers, tmp_path, shapes_dir, study, monkeypatch, capsys) -> str:
    """A worker run by the test's own process: the same command line as _worker's, without another TensorFlow
    start-up. Its output."""
    from tuning import search as search_cli

    monkeypatch.setenv("CAPTIONING_STORAGE", servers.storage)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", servers.tracking_uri)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = search_cli.main(["--data", str(shapes_dir), "--experiment", str(tmp_path / "workers.yaml"),
                            "--study", study, "--registered-model", study])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def _finish(workers, timeout=420):
    outputs = []
    deadline = time.time() + timeout
    for worker in workers:
        try:
            out, _ = worker.communicate(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for w in workers:
                w.kill()
            raise AssertionError("workers did not finish:\n" + "\n".join(w.communicate()[0] for w in workers))
        outputs.append(out)
        assert worker.returncode == 0, out
    return outputs


def _wait_for(condition, what, workers, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        for w in workers:
            assert w.poll() is None, f"a worker ended before {what}:\n{w.communicate()[0]}"
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


_STORAGES = {}


def _trials(servers, study):
    storage = _STORAGES.get(servers.storage) or _STORAGES.setdefault(
        servers.storage, optuna.storages.RDBStorage(servers.storage, engine_kwargs={"pool_pre_ping": True}))
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials()
    except KeyError:  # not created yet
        return []


def _check_consistent(servers, study, trials_asked, output):
    """The study holds exactly the trials asked for, each logged once; nothing RUNNING; one champion."""
    trials = _trials(servers, study)
    assert held(trials) == trials_asked, output
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    client = MlflowClient()
    experiment = client.get_experiment_by_name("workers")
    runs = client.search_runs([experiment.experiment_id], f"tags.`captioning.study` = '{study}'")
    parents = [r for r in runs if r.data.tags["captioning.role"] == "study"]
    trial_runs = [r for r in runs if r.data.tags["captioning.role"] == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    by_number = {}
    for run in trial_runs:
        by_number.setdefault(int(run.data.tags["trial"]), []).append(run)
    assert all(len(v) == 1 for v in by_number.values()), "a trial was logged twice"
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            run = by_number[trial.number][0]
            assert run.data.tags["state"] == "complete" and run.info.status == "FINISHED"
            assert run.data.metrics["dev_bleu4"] == pytest.approx(trial.value)
            assert run.data.tags["worker"] == trial.user_attrs[WORKER]
    versions = client.search_model_versions(f"name = '{study}'")
    assert len(versions) == 1, [v.version for v in versions]
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert versions[0].run_id == best.user_attrs["mlflow_run_id"]
    assert client.get_model_version_by_alias(study, "champion").version == versions[0].version
    return trials, by_number


def _start_together(servers, study, workers, start, count):
    """Start `count` workers while this test holds the study's lock, and release it only once all of them wait on
    it (PostgreSQL lists their waiting advisory locks), so that none starts trials before the others are up."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from captioning.core.locks import Guard

    engine = sqlalchemy.create_engine(servers.storage, poolclass=NullPool)

    def all_waiting():
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalar() == count

    try:
        with Guard(servers.storage, study).hold("holding the workers back"):
            workers.extend(start() for _ in range(count))
            _wait_for(all_waiting, f"the {count} workers to wait on the study's lock", workers)
    finally:
        engine.dispose()


def test_three_workers_share_one_study_through_a_database_restart(servers, tmp_path, shapes_dir):
    (tmp_path / "workers.yaml").write_text(EXPERIMENT % (2, 4))
    workers = []
    try:
        _start_together(servers, "trio", workers, lambda: _worker(servers, tmp_path, shapes_dir, "trio"), 3)
        _wait_for(lambda: any(t.state == TrialState.COMPLETE for t in _trials(servers, "trio")),
                  "a completed trial", workers)
        local_infra.restart_postgres(servers)  # mid-search: workers retry instead of crashing
        outputs = _finish(workers)
    finally:
        for w in workers:
            w.kill()
    output = "\n".join(outputs)
    trials, _ = _check_consistent(servers, "trio", 4, output)
    # The trials really were shared: released together, the workers claimed their first trials within the lock's
    # hand-overs (milliseconds), long before one worker could have run all four (seconds each).
    assert len({t.user_attrs[WORKER] for t in trials}) >= 2, output
    assert sum("registered: trio version 1" in out for out in outputs) >= 1, output


def test_a_worker_killed_mid_trial_is_replaced_and_its_run_closed(servers, tmp_path, shapes_dir, monkeypatch,
                                                                  capsys):
    (tmp_path / "workers.yaml").write_text(EXPERIMENT % (4, 4))
    victim, other = (_worker(servers, tmp_path, shapes_dir, "killed") for _ in range(2))
    workers = [victim, other]
    try:
        def victim_mid_trial():
            return [t for t in _trials(servers, "killed") if t.state == TrialState.RUNNING
                    and t.user_attrs.get(WORKER, "").endswith(f":{victim.pid}") and t.intermediate_values]
        lost = _wait_for(victim_mid_trial, "the victim's trial to pass an epoch", workers)[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        workers = [other]
        # The replacement runs here while the other worker goes on in its own process.
        outputs = [_worker_in_this_process(servers, tmp_path, shapes_dir, "killed", monkeypatch, capsys)]
        outputs += _finish(workers)
    finally:
        for w in workers:
            w.kill()
    output = "\n".join(outputs)
    trials, by_number = _check_consistent(servers, "killed", 4, output)
    lost = next(t for t in trials if t.number == lost.number)
    assert lost.state == TrialState.FAIL and ERROR not in lost.user_attrs  # lost, so not counted
    run = by_number[lost.number][0]
    assert run.info.status == "KILLED" and run.data.tags["state"] == "killed"
    assert f"trial {lost.number} was lost with its process" in output
    assert len(trials) == 5  # four held, plus the lost one that another trial replaced


def test_connection_errors_are_told_apart(servers):
    """Retried: a refused connection (a restarting database). Not retried: a wrong password, a local SQLite file."""
    import sqlalchemy

    from captioning.core.locks import unreachable

    def error_of(url):
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            sqlalchemy.create_engine(url).connect()
        return caught.value

    assert unreachable(error_of(f"postgresql://captioning:x@127.0.0.1:{local_infra.free_port()}/optuna"))
    assert not unreachable(error_of(servers.storage.replace(servers.password, "wrong-password")))
    assert not unreachable(error_of("sqlite:////nonexistent-folder/optuna.db"))


def test_a_trial_declared_lost_while_alive_is_abandoned_not_recorded(servers, tmp_path, shapes_dir, capsys):
    """Another worker fails a live trial (as after a missed heartbeat): its worker stops it at the next epoch,
    marks its run KILLED and leaves the study's count alone."""
    from optuna.storages import RDBStorage

    from captioning.config import load_config  # noqa: I001
    from captioning.core.tracking import ensure_experiment
    from captioning.features.prepare import load_and_report
    from tuning.coordination import Heartbeats
    from tuning.optuna_engine import _run_trial, open_study
    from tuning.settings import read_settings
    from tuning.trials import TrialRunner

    (tmp_path / "workers.yaml").write_text(EXPERIMENT % (3, 1))
    settings = read_settings(tmp_path / "workers.yaml")
    study = open_study("declared-lost", servers.storage, settings, on_lost=lambda trial, **_: None)
    trial = study.ask()
    trial.set_user_attr(WORKER, "this test")
    other_worker = RDBStorage(servers.storage)
    experiment_id = ensure_experiment("workers")
    runner = TrialRunner(load_config(tmp_path / "workers.yaml"), load_and_report(shapes_dir), settings,
                         "declared-lost", "optuna", experiment_id, "none")
    real_run = runner.run

    def run_then_declared_lost(number, params, report, **options):
        def report_after_the_other_worker(epoch, value):
            other_worker.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # "no heartbeat seen"
            report(epoch, value)
        return real_run(number, params, report_after_the_other_worker, **options)

    runner.run = run_then_declared_lost
    _run_trial(study, trial, runner, settings, Heartbeats(servers.storage, "declared-lost", 10))
    assert "was declared lost by another worker" in capsys.readouterr().out
    frozen = study.trials[0]
    assert frozen.state == TrialState.FAIL and ERROR not in frozen.user_attrs and held(study.trials) == 0
    run, = MlflowClient().search_runs([experiment_id], "tags.`captioning.study` = 'declared-lost'")
    assert run.info.status == "KILLED" and run.data.tags["state"] == "killed"
    assert len(MlflowClient().get_metric_history(run.info.run_id, "dev_loss")) == 1  # stopped after epoch 1


def test_a_wrong_password_is_one_clear_error_without_the_password(servers, tmp_path, shapes_dir, capsys,
                                                                   monkeypatch):
    from tuning import search as search_cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "workers.yaml").write_text(EXPERIMENT % (1, 1))
    wrong = servers.storage.replace(servers.password, "not-the-password")
    assert search_cli.main(["--data", str(shapes_dir), "--experiment", str(tmp_path / "workers.yaml"),
                            "--storage", wrong, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err
    assert "cannot open the study database postgresql://captioning:***@127.0.0.1" in err
    assert "password authentication failed" in err and "not-the-password" not in err
