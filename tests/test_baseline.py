"""The baseline first: a new study's trial 0 runs the experiment's base config (Optuna on a temporary SQLite study, and
on a local PostgreSQL server for workers opening a study together; Keras Tuner's own oracle in a temporary folder); a
resumed study does not run it again."""
import dataclasses
import secrets
import shutil
import tempfile
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from captioning.config import Config
from captioning.core.locks import Guard
from captioning.serving import infra as local_infra
from markers import requires_postgres
from tuning import search as search_cli
from tuning.keras_tuner_engine import CaptionTuner
from tuning.optuna_engine import (
    ATTEMPT,
    BASELINE,
    QUEUED,
    RESUMES,
    WORKER,
    fail_interrupted_trials,
    fail_lost_trials,
    open_study,
)
from tuning.settings import SearchSettings
from tuning.space import base_values, parse_space, suggest_optuna

SPACE = parse_space({"units": {"choices": [32, 64, 128]}, "lstm_layers": {"low": 1, "high": 3},
                     "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "dropout": {"low": 0.0, "high": 0.5}})
# Nowhere near what either engine would pick by itself (the first choice, the lower bounds, or a random point).
BASE = dataclasses.replace(Config(), units=64, lstm_layers=2, learning_rate=1e-3, dropout=0.25)
BASELINE_VALUES = {"units": 64, "lstm_layers": 2, "learning_rate": 1e-3, "dropout": 0.25}


@pytest.fixture()
def settings():
    return SearchSettings(space=SPACE, trials=4, metric="dev_bleu4")


def _open(tmp_path, settings):
    return open_study("s", f"sqlite:///{tmp_path / 'optuna.db'}", settings, lambda trial, **kw: None,
                      base_values(SPACE, BASE))


def _baselines(study):
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(BASELINE)]


def test_a_new_study_runs_the_base_config_as_trial_0(tmp_path, settings):
    assert base_values(SPACE, BASE) == BASELINE_VALUES
    study = _open(tmp_path, settings)
    first = study.ask()
    assert first.number == 0 and first.user_attrs[BASELINE] is True
    assert suggest_optuna(first, SPACE) == BASELINE_VALUES
    study.tell(first, 0.1)
    second = study.ask()  # then the sampler's own values
    assert BASELINE not in second.user_attrs and suggest_optuna(second, SPACE) != BASELINE_VALUES


def test_a_resumed_study_gets_no_second_baseline(tmp_path, settings):
    study = _open(tmp_path, settings)
    assert len(_baselines(_open(tmp_path, settings))) == 1  # reopened before the baseline ran: still one, waiting
    trial = study.ask()
    study.tell(trial, 0.1)
    resumed = _open(tmp_path, settings)
    assert len(resumed.trials) == 1 and len(_baselines(resumed)) == 1
    assert not resumed.get_trials(states=(TrialState.WAITING,))
    assert BASELINE not in resumed.ask().user_attrs


def test_a_study_that_already_holds_trials_gets_no_baseline(tmp_path, settings):
    """A study begun before baselines existed, or by another worker that got there first, is not new."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    old = open_study("s", storage, settings, lambda trial, **kw: None)  # no baseline given
    old.tell(old.ask(), 0.1)
    assert _baselines(_open(tmp_path, settings)) == []


def test_an_interrupted_baseline_runs_again_as_the_baseline(tmp_path, settings):
    study = _open(tmp_path, settings)
    suggest_optuna(study.ask(), SPACE)  # trial 0 starts, then its process is killed: left RUNNING
    lost = []
    resumed = _open(tmp_path, settings)
    assert fail_interrupted_trials(resumed, lambda trial, **kw: lost.append((trial.number, kw))) == 1
    assert lost == [(0, {"rerun": True})]
    rerun = resumed.ask()
    assert rerun.number == 1 and rerun.user_attrs[BASELINE] is True and rerun.user_attrs[RESUMES] == 0
    assert suggest_optuna(rerun, SPACE) == BASELINE_VALUES and len(_baselines(resumed)) == 2  # the lost one, its rerun


def test_a_baseline_lost_on_a_server_runs_again_instead_of_new_values(tmp_path, settings):
    """A worker that dies between creating the baseline trial and claiming it: fail_lost_trials (which a server's
    workers call under the study's lock; it needs no server for unclaimed trials) queues its values again."""
    study = _open(tmp_path, settings)
    unclaimed = study.ask()
    other = study.ask()
    other.set_user_attr(WORKER, "host:1")  # claimed and alive: left alone
    lost = []
    fail_lost_trials(study, grace_seconds=60, on_lost=lambda trial, **kw: lost.append((trial.number, kw)))
    assert lost == [(unclaimed.number, {"rerun": True})]
    waiting, = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs == {BASELINE: True, RESUMES: 0, ATTEMPT: 2, QUEUED: BASELINE_VALUES}


def test_a_base_value_outside_the_space_stops_the_search_before_anything_runs(tmp_path, capsys):
    experiment = tmp_path / "outside.yaml"
    experiment.write_text("config: {units: 1024}\nsearch:\n  space:\n    units: {choices: [256, 512]}\n")
    code = search_cli.main(["--data", str(tmp_path / "no-such-data"), "--experiment", str(experiment),
                            "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
                            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err
    assert code == 2 and "config.units = 1024" in err and "units in [256, 512]" in err
    assert "add it to search.space.units or change config.units" in err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()  # before the data, too


def _tuner(tmp_path, settings):
    # No runner: these tests ask the oracle for trials, as search() does, without training them.
    return CaptionTuner(None, settings, base_values(SPACE, BASE), directory=str(tmp_path), project_name="kt",
                        overwrite=False)


def _complete(tuner, trial, value):
    tuner.oracle.update_trial(trial.trial_id, {"dev_bleu4": value})
    trial.status = "COMPLETED"
    tuner.on_trial_end(trial)  # as search() does: the oracle ends the trial, the tuner saves its state


def test_keras_tuner_runs_the_base_config_first_and_not_again_after_a_reload(tmp_path, settings):
    tuner = _tuner(tmp_path, settings)
    first = tuner.oracle.create_trial(tuner.tuner_id)
    assert first.trial_id == "0" and first.hyperparameters.values == BASELINE_VALUES
    _complete(tuner, first, 0.1)
    second = tuner.oracle.create_trial(tuner.tuner_id)
    assert second.hyperparameters.values != BASELINE_VALUES
    _complete(tuner, second, 0.2)

    reloaded = _tuner(tmp_path, settings)  # the same study again: its trials are reloaded
    assert reloaded.oracle.trials["0"].hyperparameters.values == BASELINE_VALUES
    third = reloaded.oracle.create_trial(reloaded.tuner_id)
    assert third.trial_id == "2" and third.hyperparameters.values != BASELINE_VALUES


def test_keras_tuner_reruns_an_interrupted_baseline_with_its_values(tmp_path, settings):
    tuner = _tuner(tmp_path, settings)
    first = tuner.oracle.create_trial(tuner.tuner_id)  # then the process is killed
    assert first.hyperparameters.values == BASELINE_VALUES
    reloaded = _tuner(tmp_path, settings)
    again = reloaded.oracle.create_trial(reloaded.tuner_id)
    assert again.trial_id == "0" and again.hyperparameters.values == BASELINE_VALUES


@requires_postgres
def test_workers_opening_a_new_shared_study_together_queue_one_baseline(settings):
    """As search.py opens the study: under the study's lock (without it, four workers here queued two or three)."""
    root = Path(tempfile.mkdtemp(prefix="captioning-baseline-", dir="/tmp"))
    root.chmod(0o755)  # PostgreSQL runs as its own user when the tests run as root
    server = local_infra.Infra(root, local_infra.free_port(), 0, secrets.token_urlsafe(18))
    server.save()
    try:
        local_infra.start_postgres(server)
        start = threading.Barrier(4, timeout=60)
        errors = []

        def worker():
            try:
                start.wait()
                with Guard(server.storage, "shared").hold("opening the study"):
                    open_study("shared", server.storage, settings, lambda trial, **kw: None, BASELINE_VALUES)
            except BaseException as exc:  # raised again below: a thread's exception is otherwise only printed
                errors.append(exc)

        workers = [threading.Thread(target=worker) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        assert not [w for w in workers if w.is_alive()], "a worker did not open the study within 2 minutes"
        if errors:
            raise errors[0]
        trials = optuna.load_study(study_name="shared", storage=server.storage).trials
        assert [t.user_attrs for t in trials] == [{BASELINE: True, QUEUED: BASELINE_VALUES}]
    finally:
        local_infra.stop(root)
        shutil.rmtree(root, ignore_errors=True)
