"""A search killed mid-trial (SIGKILL, Ctrl-C), then restarted: no completed trial lost, no run left RUNNING, and
the interrupted trial's values run again first, resuming from its last finished epoch."""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient

from tuning.optuna_engine import QUEUED

PROJECT = Path(__file__).resolve().parents[1]
EXPERIMENT = """
config: {encoder: pixels, image_size: 32, feature_grid: 4, vocab_min_count: 1, max_length: 24,
         embedding_size: 32, units: 64, learning_rate: 0.01, dropout: 0.1, epochs: 6, patience: 6}
search:
  trials: 2
  samples: 0  # no sample captions logged with each trial (tests/test_search.py checks them)
  pruner_startup_trials: 5
  export: false  # nothing here decodes the registered version (its export: tests/test_registry.py)
  space:
    dropout: {low: 0.0, high: 0.3}
"""


def _command(tmp_path, shapes_dir):
    return [sys.executable, str(PROJECT / "tuning" / "search.py"), "--data", str(shapes_dir),
            "--experiment", str(tmp_path / "kill.yaml"), "--study", "k",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]


def _runs(state_filter=""):
    experiment = MlflowClient().get_experiment_by_name("kill")
    if experiment is None:
        return []
    return MlflowClient().search_runs([experiment.experiment_id],
                                      "tags.`captioning.role` = 'trial'" + state_filter)


def _start_search(tmp_path, shapes_dir):
    """The search in the background, its output into search.log (a pipe nobody reads while the test polls could fill
    up and stall it)."""
    (tmp_path / "kill.yaml").write_text(EXPERIMENT)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "search.log", "w") as log:
        return subprocess.Popen(_command(tmp_path, shapes_dir), env=env, stdout=log, stderr=subprocess.STDOUT,
                                text=True, cwd=tmp_path), env


def _restart(tmp_path, shapes_dir, monkeypatch, capsys) -> str:
    """The same command again, as a user restarts it; run in this process (the killed search had one of its own), so
    without a second TensorFlow start-up. Its output."""
    from tuning import search as search_cli

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = search_cli.main(_command(tmp_path, shapes_dir)[2:])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    return out.out


def _wait_for(process, tmp_path, condition, what: str, timeout: float = 240):
    """Poll `condition` until it returns something true; fail, with the search's output, if the search ends first
    or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            pytest.fail(f"the search ended before {what}:\n{(tmp_path / 'search.log').read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; the search printed:\n"
                        f"{(tmp_path / 'search.log').read_text()}")
        time.sleep(0.2)


def test_sigkill_mid_trial_then_restart(tmp_path, shapes_dir, monkeypatch, capsys):
    process, _ = _start_search(tmp_path, shapes_dir)
    client = MlflowClient()

    def trial_1_mid_training():  # trial 0 complete, trial 1 running with its values and epoch 1 of 6 logged
        running = _runs(" and attributes.status = 'RUNNING' and tags.trial = '1'")
        return (_runs(" and tags.state = 'complete'") and running
                and client.get_metric_history(running[0].info.run_id, "dev_loss"))

    try:
        # Killed without warning as soon as trial 1 has finished an epoch: five epochs are left to it then.
        _wait_for(process, tmp_path, trial_1_mid_training, "trial 1 to finish an epoch after trial 0 completed")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    running = [r.data.tags["trial"] for r in _runs(" and attributes.status = 'RUNNING'")]
    assert running == ["1"], f"RUNNING trial runs after the kill: {running}"  # the victim, as the kill left it

    done = _restart(tmp_path, shapes_dir, monkeypatch, capsys)
    assert "as KILLED" in done and "registered: captioner" in done
    runs = _runs()
    assert not [r for r in runs if r.info.status == "RUNNING"]
    by_trial = {r.data.tags["trial"]: r for r in runs}
    assert by_trial["1"].info.status == "KILLED" and by_trial["0"].data.tags["state"] == "complete"
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]  # trial 0 kept, 1 killed, 2 ran in its place
    assert study.trials[2].params == study.trials[1].params and study.trials[2].user_attrs["resumes"] == 1
    assert "its values run again first" in done
    assert len([r for r in runs if r.data.tags["trial"] == "0"]) == 1  # trial 0 was not re-run


def test_ctrl_c_mid_trial_is_a_clean_stop_and_the_rerun_resumes_that_trial(tmp_path, shapes_dir, monkeypatch,
                                                                         capsys):
    process, env = _start_search(tmp_path, shapes_dir)
    client = MlflowClient()

    def two_epochs_of_trial_0():
        running = _runs(" and attributes.status = 'RUNNING' and tags.trial = '0'")
        return running and len(client.get_metric_history(running[0].info.run_id, "dev_loss")) >= 2

    try:
        _wait_for(process, tmp_path, two_epochs_of_trial_0, "trial 0 to finish two epochs")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    out = (tmp_path / "search.log").read_text()
    assert process.returncode == 130, out
    assert "interrupted; the running trial does not count yet" in out and "Traceback" not in out
    run, = _runs()
    assert run.info.status == "KILLED" and run.data.tags["state"] == "interrupted"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    interrupted, queued = optuna.load_study(study_name="k", storage=storage).trials
    assert interrupted.state.name == "FAIL" and "fail_reason" not in interrupted.user_attrs  # lost: not counted
    assert queued.state.name == "WAITING" and queued.user_attrs[QUEUED] == interrupted.params  # runs next
    checkpoints = Path(env["CAPTIONING_CACHE"]) / "checkpoints" / f"k-{hashlib.sha256(storage.encode()).hexdigest()[:8]}"
    assert [p.name for p in checkpoints.glob("*.npz")] == ["trial-0.npz"]

    done = _restart(tmp_path, shapes_dir, monkeypatch, capsys)
    resumed, = _runs(" and tags.trial = '1'")
    epochs = int(resumed.data.tags["resumed_after_epoch"])  # 2, or 3 if the Ctrl-C came just after a checkpoint
    assert epochs >= 2 and f"trial   1  resumes an interrupted run of the same values after its epoch {epochs}" \
        in done
    study = optuna.load_study(study_name="k", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].params == interrupted.params and study.trials[1].user_attrs["resumes"] == 0
    assert len(client.get_metric_history(resumed.info.run_id, "dev_loss")) == 6  # the whole curve, in one run
    assert not checkpoints.exists()  # the finished study leaves no checkpoint behind


def test_interrupted_values_are_queued_once_and_give_way_after_repeated_kills():
    from tuning.optuna_engine import ATTEMPT, MAX_ATTEMPTS, RESUMES, requeue

    study = optuna.create_study(direction="maximize")
    values = {"dropout": 0.25}
    assert requeue(study, 0, values, attempt=1) and requeue(study, 0, values, attempt=1)  # the second: already queued
    waiting, = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert waiting.user_attrs == {RESUMES: 0, ATTEMPT: 2, QUEUED: values}
    trial = study.ask()  # the queued values come first
    assert trial.suggest_float("dropout", 0.0, 0.3) == 0.25 and trial.user_attrs[RESUMES] == 0
    assert not requeue(study, trial.number, values, attempt=MAX_ATTEMPTS)  # killed every time: new values instead
    assert not requeue(study, 5, {}, attempt=1)  # interrupted before it had values: nothing to resume
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))


def test_a_ctrl_c_that_a_library_swallowed_still_stops_the_trial_after_its_epoch(tmp_path, shapes_dir):
    """Python only prints a KeyboardInterrupt raised inside a garbage-collection callback; the search's handler
    remembers it, and the trial stops at the end of the epoch, its checkpoint kept for the rerun."""
    from captioning.config import load_config
    from captioning.core.tracking import ensure_experiment
    from captioning.features.prepare import load_and_report
    from tuning.settings import read_settings
    from tuning.trials import INTERRUPTED, TrialRunner

    (tmp_path / "kill.yaml").write_text(EXPERIMENT)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = read_settings(tmp_path / "kill.yaml")
    runner = TrialRunner(load_config(tmp_path / "kill.yaml"), load_and_report(shapes_dir, log=lambda _: None),
                         settings, "swallowed", "optuna", ensure_experiment("kill"), "none",
                         checkpoints=tmp_path / "checkpoints")
    INTERRUPTED.set()  # as if the handler had run and its exception had been swallowed
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run(0, {"dropout": 0.1})
    finally:
        INTERRUPTED.clear()
    run, = _runs()
    assert run.info.status == "KILLED" and run.data.tags["state"] == "interrupted"
    assert len(MlflowClient().get_metric_history(run.info.run_id, "dev_loss")) == 1  # stopped after epoch 1
    assert (tmp_path / "checkpoints" / "trial-0.npz").exists()
