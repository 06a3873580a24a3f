"""Real searches (Optuna and Keras Tuner) on generated scenes, logged to a temporary MLflow database."""
import base64
import sys
import time
import types
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from captioning.decoding.captioner import Captioner
from captioning.features.prepare import FeatureCache, load_and_report
from captioning.serving.mlflow_model import download_bundle, pip_requirements
from reports.collect import registry_marks
from tuning import search as search_cli
from tuning import summary
from tuning.decoding_choice import choose_decoding
from tuning.settings import read_settings

TINY = """
config:
  encoder: pixels
  image_size: 32
  feature_grid: 4
  vocab_min_count: 1
  max_length: 24
  embedding_size: 32
  units: 64
  learning_rate: 0.01
  dropout: 0.1
  epochs: 2
  patience: 3
search:
  trials: 2
  samples: 4
  pruner: median
  pruner_startup_trials: 1
  space:
    units: {choices: [32, 64]}
    dropout: {low: 0.0, high: 0.3}
    learning_rate: %s
"""


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CAPTIONING_STORAGE", raising=False)  # the defaults: ./mlflow.db and ./optuna.db
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(TINY % "{low: 0.005, high: 0.02, log: true}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # run state (databases, artifacts, Keras Tuner's folder) goes where the command runs
    return tmp_path, experiment, uri


def _search(workspace, shapes_dir, *extra):
    """No --tracking-uri or --storage: the defaults, ./mlflow.db and ./optuna.db where the command runs."""
    return search_cli.main(["--data", str(shapes_dir), "--experiment", str(workspace[1]), *extra])


def _trial_runs(study):
    experiment = MlflowClient().get_experiment_by_name("tiny")
    if experiment is None:
        return []
    return MlflowClient().search_runs(
        [experiment.experiment_id],
        f"tags.`captioning.study` = '{study}' and tags.`captioning.role` = 'trial'", order_by=["tags.trial"])


def test_optuna_search_logs_registers_resumes_and_serves(workspace, shapes_dir, capsys, monkeypatch):
    assert _search(workspace, shapes_dir, "--study", "s1") == 0
    out = capsys.readouterr().out
    assert "trial   0" in out and "trial   1" in out and "registered: captioner version 1 as @champion" in out
    assert "mlflow ui   (in this directory)" in out
    assert {"mlflow.db", "optuna.db", "mlruns"} <= {p.name for p in workspace[0].iterdir()}  # not the package's folder
    runs = _trial_runs("s1")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert runs[0].data.tags["state"] == "complete"  # the pruner's start-up trial
    assert runs[1].data.tags["state"] in ("complete", "pruned")  # the median pruner may stop the second one
    client = MlflowClient()
    run = runs[0]
    for key in ("dev_bleu1", "dev_bleu4", "dev_greedy_bleu4", "wall_seconds", "feature_cache_hits"):
        assert key in run.data.metrics
    # The test split is scored for the registered version alone: its run and its tags, no other trial.
    champion = client.get_model_version_by_alias("captioner", "champion")
    assert champion.tags["inference_export"] == "openvino"  # search.export, by default: served without TensorFlow
    # ... and its environment names what serving the export needs: no TensorFlow, Keras or NLTK
    needs = Path(mlflow.pyfunc.get_model_dependencies("models:/captioner@champion")).read_text().split()
    assert sorted(needs) == sorted(pip_requirements(inference_only=True)) and "openvino==" in " ".join(needs)
    assert not [n for n in needs if n.startswith(("tensorflow", "keras", "nltk"))]
    assert [r.info.run_id for r in runs if "test_bleu4" in r.data.metrics] == [champion.run_id]
    test_bleu4 = client.get_run(champion.run_id).data.metrics["test_bleu4"]
    assert float(champion.tags["test_bleu4"]) == pytest.approx(test_bleu4, abs=1e-6)
    assert run.data.params["units"] in ("32", "64") and run.data.params["encoder"] == "pixels"
    assert len(client.get_metric_history(run.info.run_id, "dev_loss")) == 2  # one point per epoch
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples.json", "gallery.png"} <= artifacts
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.params["engine"] == "optuna" and parent.info.status == "FINISHED"
    assert parent.data.params["sampler"] == "random" and parent.data.params["pruner"].startswith("median(startup=")
    assert {"optimization_history.png", "param_importances.png"} <= {a.path for a in client.list_artifacts(
        parent.info.run_id)}
    _dashboard_lists(f"sqlite:///{workspace[0] / 'optuna.db'}", "s1")

    # The registered champion loads by alias and captions bytes, and paths where the serving machine allows them.
    # Its captions are those of its bundle, loaded as a Captioner: with its own beam width, and greedy.
    monkeypatch.setenv("CAPTIONING_SERVE_LOCAL_PATHS", "1")  # trusted batch scoring, read when the model loads
    model = mlflow.pyfunc.load_model("models:/captioner@champion")
    saved = Captioner.load(download_bundle("models:/captioner@champion"))
    image = shapes_dir / "Images" / "scene_00002.jpg"
    frame = pd.DataFrame({"image": [str(image), base64.b64encode(image.read_bytes()).decode()]})
    beam, greedy = saved.caption(str(image)), saved.caption(str(image), beam_width=1)
    assert beam and greedy
    assert model.predict(frame)["caption"].tolist() == [beam] * 2
    assert model.predict(pd.DataFrame({"image": [str(image)]}), params={"beam_width": 1})["caption"][0] == greedy

    # The CLI captions with it by alias, and an unknown alias is one line naming what is registered.
    from captioning.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", workspace[2])
    capsys.readouterr()
    other = shapes_dir / "Images" / "scene_00005.jpg"
    assert main(["caption", str(other), "--model", "models:/captioner@champion"]) == 0
    caption = saved.caption(str(other))
    assert caption.strip() and capsys.readouterr().out == caption + "\n"
    assert main(["caption", str(image), "--model", "models:/captioner@nope"]) == 2
    err = capsys.readouterr().err
    assert "no registered model models:/captioner@nope" in err and "captioner (@champion)" in err

    # The same command again: the study already holds 2 trials, nothing is re-run.
    assert _search(workspace, shapes_dir, "--study", "s1") == 0
    assert len(_trial_runs("s1")) == 2
    # Asking for more continues the numbering; completed trials stay as they were.
    assert _search(workspace, shapes_dir, "--study", "s1", "--trials", "3", "--verbose") == 0
    out = capsys.readouterr().out
    assert "trial   2  epoch  1/2  loss " in out  # --verbose: a line per epoch
    assert "trial   2" in out and "trial   0 " not in out.split("resuming")[-1]
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{workspace[0] / 'optuna.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert len(_trial_runs("s1")) == 3


def _dashboard_lists(storage: str, study: str) -> None:
    """`optuna-dashboard STORAGE` (the README's command) serves the study: its API lists it, with its record of the
    search space."""
    import json
    import subprocess
    import time
    import urllib.request

    from captioning.serving.infra import free_port

    port = free_port()
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    server = subprocess.Popen([str(dashboard), storage, "--port", str(port), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("optuna-dashboard did not answer")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [s["study_name"] for s in studies] == [study] and "search" in {a["key"] for a in studies[0]["user_attrs"]}


def test_failing_trials_are_recorded_and_the_search_goes_on(workspace, shapes_dir, capsys):
    tmp_path, experiment, uri = workspace
    # The loss becomes NaN in every trial (the base config, run first, has the same learning rate).
    experiment.write_text((TINY % "{choices: [1.0e+12]}").replace("learning_rate: 0.01", "learning_rate: 1.0e+12"))
    assert _search(workspace, shapes_dir, "--study", "bad") == 0
    out = capsys.readouterr().out
    assert out.count("FAILED: TrainingError") == 2 and "no trial completed, so nothing was registered" in out
    runs = _trial_runs("bad")
    assert len(runs) == 2 and all(r.info.status == "FAILED" and "learning_rate" in r.data.tags["error"] for r in runs)
    study = optuna.load_study(study_name="bad", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert all(t.state == optuna.trial.TrialState.FAIL and "NaN" in t.user_attrs["fail_reason"].replace("nan", "NaN")
               for t in study.trials)


def test_a_single_worker_stopped_by_the_timeout_and_budget_still_registers_its_best(workspace, shapes_dir, capsys,
                                                                                    monkeypatch):
    # (With CIDEr-D as the metric: any dev score can be; and another sampler and pruner than the defaults.)
    # The budget of 2 s ends trial 0's training after its first of 2 epochs: complete with that epoch. However fast
    # that epoch was, it ends once the budget has: the search reports it to the trial only then.
    from tuning.trials import TrialRunner

    run, reported = TrialRunner.run, []

    def run_until_the_budget_ends(self, number, params, report=None, **kwargs):
        def report_once_the_budget_ended(epoch: int, value: float) -> None:
            while epoch == 1 and time.monotonic() < self.deadline:  # until the instant the search checks
                time.sleep(max(0.0, self.deadline - time.monotonic()))
            reported.append((number, epoch))
            report(epoch, value)

        return run(self, number, params, report_once_the_budget_ended, **kwargs)

    monkeypatch.setattr(TrialRunner, "run", run_until_the_budget_ends)
    experiment = workspace[1]
    experiment.write_text(experiment.read_text().replace("  pruner: median\n",
                                                         "  sampler: tpe\n  pruner: hyperband\n  export: false\n"))
    assert _search(workspace, shapes_dir, "--study", "short", "--timeout", "2", "--budget", "2",
                   "--metric", "dev_cider") == 0
    out = capsys.readouterr().out
    assert "trial   0" in out and "trial   1" not in out and "dev_cider" in out and reported == [(0, 1)]
    assert "(the budget ended it after epoch 1)" in out
    assert "registered: captioner version 1 as @champion" in out and "other workers" not in out
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("captioner", "champion")
    assert version.tags["inference_export"] == "none"  # search.export: false registers the trial's bundle as it is
    run = client.get_run(version.run_id)
    assert run.data.metrics["dev_cider"] >= 0 and {"dev_rouge_l", "dev_epoch_cider"} <= set(run.data.metrics)
    assert run.data.tags["cut_by_budget_after_epoch"] == "1" and run.data.metrics["best_epoch"] == 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "dev_epoch_cider")] == [1]
    trial = optuna.load_study(study_name="short", storage="sqlite:///optuna.db").trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs["cut_by_budget_after_epoch"] == 1


def test_keras_tuner_hyperband_trains_each_trial_for_its_rung_and_resumes(workspace, shapes_dir, capsys):
    # (Keras Tuner's Bayesian oracle, its default, runs end to end in tests/test_reports.py.)
    experiment = workspace[1]
    experiment.write_text(experiment.read_text().replace(
        "search:\n", "search:\n  tuner: hyperband\n  pruner_max_epochs: 3\n  pruner_reduction: 3\n  export: false\n"))
    assert _search(workspace, shapes_dir, "--engine", "keras-tuner", "--study", "kth") == 0
    assert "as @champion" in capsys.readouterr().out
    runs = _trial_runs("kth")  # the first rung of the 3-epoch bracket: one epoch each, and --trials caps them at 2
    assert len(runs) == 2 and all(r.data.tags["engine"] == "keras-tuner" for r in runs)
    assert [r.data.params["epochs"] for r in runs] == ["1", "1"]
    parent = MlflowClient().get_run(runs[0].data.tags["mlflow.parentRunId"]).data.params  # what the study ran with
    assert parent["sampler"] == "keras-tuner hyperband"
    assert parent["pruner"].startswith("hyperband brackets(max_epochs=3")
    assert _search(workspace, shapes_dir, "--engine", "keras-tuner", "--study", "kth") == 0  # resumes: no new trial
    assert len(_trial_runs("kth")) == 2


def test_a_second_worker_on_a_sqlite_study_is_refused_with_the_alternative(workspace, shapes_dir, capsys):
    tmp_path, _, _ = workspace
    held = search_cli._single_worker_lock(f"sqlite:///{tmp_path / 'optuna.db'}", "busy")  # as another process would
    try:
        assert _search(workspace, shapes_dir, "--study", "busy") == 2
    finally:
        held.close()
        search_cli._LOCKS.clear()
    err = capsys.readouterr().err
    assert "already running study 'busy'" in err and "SQLite storage serves one process" in err
    assert "postgresql://" in err
    assert _trial_runs("busy") == []  # refused before any trial started


def test_a_search_ensembles_two_families_and_registers_the_decoding_it_chose_on_dev(workspace, shapes_dir, capsys):
    # Trial 0 (merge, plain features) and trial 1 (attention, flip-averaged: the seeded sampler's draw) are decoded
    # together when the study ends; then the beam width and re-ranking of the better model are chosen on dev (the
    # small grid: 6 settings) and registered with it.
    text = TINY % "{low: 0.005, high: 0.02, log: true}"
    text = text.replace("search:\n", "search:\n  ensemble: 2\n  pruner: none\n  decoding_choice: small\n"
                                     "  export: false\n")
    workspace[1].write_text(text + "    feature_flip: {choices: [false, true]}\n"
                                   "    decoder: {choices: [merge, attention]}\n")
    assert _search(workspace, shapes_dir, "--study", "together") == 0
    out = capsys.readouterr().out
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tiny")
    trials = _trial_runs("together")
    assert [(r.data.params["decoder"], r.data.params["feature_flip"]) for r in trials] == [("merge", "False"),
                                                                                          ("attention", "True")]
    [run] = client.search_runs([experiment.experiment_id], "tags.`captioning.role` = 'ensemble'")
    assert sorted(run.data.tags["members"].split(",")) == ["0", "1"] and run.data.tags["state"] == "complete"
    assert f"decodes with length_penalty {float(run.data.params['length_penalty']):g}, chosen on dev bleu4" in out
    assert "dev_bleu4" in run.data.metrics and "dev_greedy_bleu4" in run.data.metrics
    ensemble = Captioner.load(download_bundle(run.data.tags["model_uri"]))
    assert sorted(c.decoder for c in ensemble.decoder_configs) == ["attention", "merge"]
    assert len(ensemble.feature_groups) == 2  # each member reads its own features
    best_single = max(trials, key=lambda r: r.data.metrics["dev_bleu4"])
    if run.data.metrics["dev_bleu4"] > best_single.data.metrics["dev_bleu4"]:  # the rule, whichever way it went
        best, label = run, f"the ensemble of trials {run.data.tags['members'].replace(',', ', ')}"
        assert "beats the best trial" in out
    else:
        best, label = best_single, f"trial {best_single.data.tags['trial']}"
        assert "does not beat the best trial" in out

    # The decoding: every setting's dev scores printed and logged, the best by dev BLEU-4 (among re-rankings and the
    # model's own beam) registered, with its index when it re-ranks.
    assert f"search: the decoding of {label}, chosen on dev bleu4 among 6 settings" in out
    assert sum(line.startswith(("  | 3 |", "  | 5 |")) for line in out.splitlines()) == 6
    champion = client.get_model_version_by_alias("captioner", "champion")
    registered = client.get_run(champion.run_id)
    rows = mlflow.artifacts.load_dict(f"runs:/{registered.info.run_id}/decoding_choice.json")
    assert {(r["beam_width"], r["rerank_neighbours"], r["rerank_weight"]) for r in rows} == {
        (3, 0, 0.5), (5, 0, 0.5), (3, 10, 0.25), (3, 10, 0.5), (5, 10, 0.25), (5, 10, 0.5)}
    [chosen] = [r for r in rows if r["chosen"]]
    eligible = [r for r in rows if r["rerank_neighbours"] or r["beam_width"] == 3]
    assert chosen == max(eligible, key=lambda r: r["dev_bleu4"])  # the first of equals: the plainest
    setting = (chosen["beam_width"], chosen["rerank_neighbours"], chosen["rerank_weight"])
    tags = champion.tags
    assert (int(tags["beam_width"]), int(tags["rerank_neighbours"]), float(tags["rerank_weight"])) == setting
    saved = Captioner.load(download_bundle("models:/captioner@champion"))
    assert (saved.config.beam_width, saved.config.rerank_neighbours, saved.config.rerank_weight) == setting
    assert (saved.neighbours is not None) == (setting[1] > 0)
    assert registered.data.metrics["dev_bleu4"] == pytest.approx(chosen["dev_bleu4"])
    assert "decoding_choice.md" in {a.path for a in client.list_artifacts(registered.info.run_id)}
    if setting == (3, 0, 0.5):  # its own decoding: the best model's run is registered, the table logged on it
        assert registered.info.run_id == best.info.run_id and registered.data.tags["decoding_choice"] == "kept"
    else:  # a run of its own, its params the chosen decoding, its dev scores that decoding's
        assert registered.data.tags["captioning.role"] == "decoding"
        assert registered.data.tags["source_run"] == best.info.run_id
        assert registered.data.params["beam_width"] == str(setting[0])
        assert registered.data.params["rerank_neighbours"] == str(setting[1])
        assert "dev_greedy_bleu4" in registered.data.metrics and "decoding_choice_seconds" in registered.data.metrics
        assert registry_marks(client, "captioner")[best.info.run_id] == "champion (v1), decoding chosen on dev"
        # Chosen again for the model it made, its own decoding wins: that run goes on as it is, the tables on it.
        runner = types.SimpleNamespace(settings=read_settings(workspace[1]), experiment_id=experiment.experiment_id,
                                       study="together", features=FeatureCache(load_and_report(shapes_dir)),
                                       say=print)
        capsys.readouterr()
        assert choose_decoding(registered, runner).info.run_id == registered.info.run_id
        assert "no other decoding beat the " in capsys.readouterr().out
        kept = client.get_run(registered.info.run_id)
        assert kept.data.tags["decoding_choice"] == "kept"
        [again] = [r for r in mlflow.artifacts.load_dict(f"runs:/{kept.info.run_id}/decoding_choice.json")
                   if r["chosen"]]
        assert (again["beam_width"], again["rerank_neighbours"], again["rerank_weight"]) == setting
        assert again["dev_bleu4"] == pytest.approx(chosen["dev_bleu4"])
    assert _search(workspace, shapes_dir, "--study", "together") == 0  # the finished study again: nothing new
    assert "chosen on dev bleu4 among" not in capsys.readouterr().out
    assert len(client.search_runs([experiment.experiment_id], "tags.`captioning.role` = 'ensemble'")) == 1
    assert len(client.search_runs([experiment.experiment_id], "tags.`captioning.role` = 'decoding'")) <= 1
    assert len(client.search_model_versions("name = 'captioner'")) == 1


def test_an_ensemble_grows_only_by_trials_that_raise_the_dev_metric(workspace, capsys):
    # The selection rule on runs logged to MLflow: trial runs "a" (best), "b", "c", "d", and ensembles whose dev
    # scores are given here; "x" cannot be decoded with the others and is left out, and an ensemble of members logged
    # before is that run again, as trials.TrialRunner.ensemble does.
    mlflow.set_tracking_uri(workspace[2])
    client = MlflowClient()
    runs = {}

    def logged(label: str, value: float):
        if label not in runs:
            with mlflow.start_run(run_name=label, tags={"label": label}) as run:
                mlflow.log_metric("dev_bleu4", value)
            runs[label] = client.get_run(run.info.run_id)
        return runs[label]

    trial = {name: logged(name, 0.22 if name == "a" else 0.2).info.run_id for name in "abcdx"}
    name_of = {run_id: name for name, run_id in trial.items()}
    dev = {"a+b": 0.25, "a+b+c": 0.24, "a+b+d": 0.27}
    tried = []

    def ensemble(run_ids):
        names = [name_of[r] for r in run_ids]
        tried.append("+".join(names))
        kept = [n for n in names if n != "x"]
        return logged(f"ensemble of {'+'.join(kept)}", dev["+".join(kept)]) if len(kept) > 1 else None

    best = summary.grow_ensemble(runs["a"], [trial[n] for n in "xbxcd"], ensemble, "dev_bleu4")
    assert best.data.tags["label"] == "ensemble of a+b+d" and tried == ["a+x", "a+b", "a+b+x", "a+b+c", "a+b+d"]
    out = capsys.readouterr().out
    assert "the ensemble of a+b beats the best trial on dev_bleu4 (0.2500 against 0.2200)" in out
    assert "the ensemble of a+b+c does not beat the ensemble of a+b on dev_bleu4" in out
    assert "a+b does not beat the ensemble of a+b" not in out and out.count("beats") == 2
    # A best trial that no ensemble beats goes on alone.
    alone = summary.grow_ensemble(logged("e", 0.3), [trial["b"]], lambda ids: logged("ensemble of e+b", 0.29),
                                     "dev_bleu4")
    assert alone.data.tags["label"] == "e"
