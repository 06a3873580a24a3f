"""The champion rule on a real MLflow registry: fresh scores, a margin, a lock that really blocks, and moves by hand."""
import subprocess
import sys
import textwrap
import time

import mlflow
import pytest
from mlflow import MlflowClient

from captioning.serving import registry


@pytest.fixture(scope="module")
def store(tmp_path_factory, shapes_dir):
    """A temporary tracking database, the shapes dataset, and two logged models: untrained and trained."""
    from captioning.config import Config
    from captioning.core import tracking
    from captioning.data.text import Vocabulary
    from captioning.decoding.captioner import Captioner
    from captioning.features.prepare import load_and_report, prepare
    from captioning.models.merge import build_decoder
    from captioning.serving.mlflow_model import log_captioner
    from captioning.training.run import train_and_evaluate

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    dataset = load_and_report(shapes_dir, log=lambda line: None)
    config = Config(encoder="pixels", image_size=32, feature_grid=4, vocab_min_count=1, max_length=24,
                    embedding_size=32, units=64, dropout=0.1, learning_rate=0.01, batch_size=32, epochs=8,
                    beam_width=2)
    prepared = prepare(config, dataset, progress=False)
    trained = train_and_evaluate(config, prepared, eval_splits=(), verbose=False).captioner
    vocab = Vocabulary.build((c for n in dataset.split("train") for c in dataset.captions[n]), 1)
    untrained = Captioner(config, vocab, build_decoder(config, len(vocab), prepared.features["train"].shape[1]))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # artifacts beside the temporary database
        mlflow.set_tracking_uri(uri)
        experiment = tracking.ensure_experiment("registry")

        def log(captioner, name: str) -> str:  # a run that looks like a finished trial: its model under model_uri
            with mlflow.start_run(experiment_id=experiment) as run:
                info = log_captioner(captioner.save(root / name / "captioner"))
                mlflow.set_tag("model_uri", info.model_uri)
            return run.info.run_id

        runs = {"untrained": log(untrained, "untrained"), "trained": log(trained, "trained"),
                "trained again": log(trained, "trained-again"), "trained thrice": log(trained, "trained-thrice")}
    return uri, dataset, runs, (lambda config: prepared)


def _promote(store, run: str, margin: float):
    uri, dataset, runs, prepared = store
    mlflow.set_tracking_uri(uri)
    best = MlflowClient().get_run(runs[run])
    return registry.promote_best(best, "captioner", "dev_bleu4", margin, dataset, "s", prepare=prepared,
                                 log=lambda line: None)


def test_the_champion_moves_only_by_the_margin_on_fresh_scores_and_by_hand(store, capsys):
    client = MlflowClient()
    first = _promote(store, "untrained", 0.005)
    assert first["alias"] == "champion" and first["why"] == "first registered model"
    assert set(first["test"]) >= {"test_bleu4", "test_greedy_bleu4"}  # the registered version gets test scores

    # Much better on dev, but not by the (absurd) margin: registered, not promoted.
    second = _promote(store, "trained", 1.0)
    assert second["alias"] == "challenger" and "does not beat" in second["why"] and "margin 1" in second["why"]
    assert client.get_model_version_by_alias("captioner", "champion").version == 1
    tags = client.get_model_version("captioner", "2").tags
    assert float(tags["dev_bleu4"]) > float(tags["champion_dev_bleu4"]) and tags["decoding"] == "beam-2"

    third = _promote(store, "trained again", 0.0)
    assert third["alias"] == "champion" and "beats the champion's" in third["why"]
    # The same weights again: equal fresh scores never move the champion, even with no margin.
    fourth = _promote(store, "trained thrice", 0.0)
    assert fourth["alias"] == "challenger" and "does not beat" in fourth["why"]
    champion = client.get_model_version_by_alias("captioner", "champion")
    assert champion.version == 3 and "search s" in champion.tags["promotion"]
    # The same run again is not registered twice.
    assert _promote(store, "trained again", 0.0)["why"] == "this run is already registered as version 3"

    # By hand: promote, then roll back along the history (3 <- 1 <- manual 1), then nothing is left.
    assert registry.main(["--tracking-uri", store[0], "promote", "1", "--reason", "keep the old one"]) == 0
    assert client.get_model_version_by_alias("captioner", "champion").version == 1
    assert "by hand: keep the old one" in client.get_model_version("captioner", "1").tags["promotion"]
    assert registry.main(["--tracking-uri", store[0], "rollback", "--reason", "no"]) == 0
    assert client.get_model_version_by_alias("captioner", "champion").version == 3
    assert registry.main(["--tracking-uri", store[0], "rollback", "--reason", "no"]) == 0
    assert client.get_model_version_by_alias("captioner", "champion").version == 1
    capsys.readouterr()
    assert registry.main(["--tracking-uri", store[0], "rollback", "--reason", "no"]) == 2
    assert "no earlier champion to roll back to" in capsys.readouterr().err
    assert registry.main(["--tracking-uri", store[0], "promote", "9", "--reason", "x"]) == 2
    assert "has no version 9" in capsys.readouterr().err
    assert registry.main(["--tracking-uri", store[0], "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:3] == ["version", "aliases", "study"] and len(listing) == 5
    assert "@champion" in listing[1] and "@challenger" in listing[4]
    # The challenger promoted by hand is the champion, and no longer the challenger.
    assert registry.main(["--tracking-uri", store[0], "promote", "4", "--reason", "the challenger"]) == 0
    assert {a: str(v) for a, v in client.get_registered_model("captioner").aliases.items()} == {"champion": "4"}


def test_a_second_promotion_waits_for_the_lock_held_by_another_process(store):
    uri = store[0]
    mlflow.set_tracking_uri(uri)
    if not MlflowClient().search_model_versions("name = 'captioner'"):
        _promote(store, "untrained", 0.005)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        import mlflow
        from captioning.core.locks import registry_lock
        mlflow.set_tracking_uri({uri!r})
        with registry_lock("captioner"):
            print("held", flush=True)
            time.sleep(3)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        said = []
        started = time.monotonic()
        registry.promote("captioner", "1", "after the other process", log=said.append)
        waited = time.monotonic() - started
    finally:
        holder.wait(timeout=60)
    assert waited > 1.5 and said == ["registry: waiting for another process that is moving captioner's aliases"]
    champion = MlflowClient().get_model_version_by_alias("captioner", "champion")
    assert champion.version == 1 and "after the other process" in champion.tags["promotion"]


def test_a_captioner_from_outside_a_search_is_registered_under_the_same_rule(store, capsys, tmp_path, monkeypatch):
    from captioning.serving.mlflow_model import download_bundle

    uri, dataset, runs, _ = store
    monkeypatch.chdir(tmp_path)  # the new experiment's artifacts
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    model_uri = client.get_run(runs["trained"]).data.tags["model_uri"]
    command = ["--tracking-uri", uri, "--name", "outside", "register"]
    data = ["--data", str(dataset.root)]
    assert registry.main([*command, model_uri, *data, "--label", "fine-tuned by hand"]) == 0
    out = capsys.readouterr().out
    assert "outside version 1 as @champion (first registered model)" in out and "test BLEU-1..4: " in out
    version = client.get_model_version("outside", "1")
    run = client.get_run(version.run_id)
    assert run.info.run_name == "fine-tuned by hand" and run.data.tags["source"] == model_uri
    assert run.data.tags["captioning.role"] == "registered" and version.tags["study"] == "fine-tuned by hand"
    assert 0 <= float(version.tags["test_bleu4"]) <= 1 and float(version.tags["dev_bleu4"]) > 0

    # The same weights as a bundle directory: scored against the champion now, equal, so not promoted.
    assert registry.main([*command, str(download_bundle(model_uri)), *data, "--label", "again", "--margin", "0"]) == 0
    assert "outside version 2 as @challenger" in capsys.readouterr().out
    assert client.get_model_version_by_alias("outside", "champion").version == 1

    for argv, message in (([str(tmp_path), *data], "is not a captioner bundle"),
                          ([model_uri, "--data", str(tmp_path / "none")], "does not exist"),
                          ([model_uri, *data, "--metric", "dev_bleu9"], "unknown metric 'dev_bleu9'"),
                          ([model_uri, *data, "--metric", "dev_spice"], "'dev_spice' cannot be computed here"),
                          ([model_uri, *data, "--margin", "-1"], "--margin must be a number >= 0")):
        assert registry.main([*command, *argv, "--label", "x"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert len(client.search_model_versions("name = 'outside'")) == 2  # nothing registered by a refused command
