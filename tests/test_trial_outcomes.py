"""A trial whose final dev metric is not a finite number is recorded as failed, with its reason, and the search goes
on (a metric registered from a test file makes the final score NaN while training itself goes well)."""
import math

import mlflow
import optuna
import pytest
import yaml

from captioning import metrics
from tuning import search as search_cli


def _nan_scorer(references, raw_references=None):
    return lambda hypotheses: {"undefined": math.nan}


@pytest.fixture()
def undefined_metric():
    metrics.register_metric(metrics.MetricSpec("undefined", _nan_scorer, watch="bleu4"))  # final scores only
    yield
    metrics.REGISTRY.pop("undefined")


def test_a_trial_whose_final_metric_is_not_finite_is_failed_and_the_search_goes_on(undefined_metric, shapes_dir,
                                                                                   tiny_config, tmp_path,
                                                                                   monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CAPTIONING_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    experiment = tmp_path / "nan.yaml"
    experiment.write_text(yaml.safe_dump({"config": tiny_config.replace(epochs=1).to_dict(), "search": {
        "trials": 2, "samples": 2, "pruner": "none", "space": {"units": {"choices": [32, 64]}}}}))
    assert search_cli.main(["--data", str(shapes_dir), "--experiment", str(experiment), "--study", "nan",
                            "--metric", "dev_undefined"]) == 0
    out = capsys.readouterr().out
    assert out.count("FAILED: TrainingError: dev_undefined is nan") == 2, out
    assert "no trial completed, so nothing was registered" in out
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("nan").experiment_id],
                              "tags.`captioning.role` = 'trial'")
    assert len(runs) == 2 and all(r.info.status == "FAILED" and "dev_undefined is nan" in r.data.tags["error"]
                                  for r in runs)
    study = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
