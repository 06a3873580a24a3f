"""The champion rule on a real MLflow registry: fresh scores, a margin, a lock that really blocks (and a lost one or a
champion moved meanwhile that stop a promotion), an unscoreable champion kept, and moves by hand."""
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from captioning.serving import registry
from markers import requires_postgres


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
    # Registered with its inference export (the trial's model has none): served and captioned without TensorFlow.
    from captioning.serving.mlflow_model import download_bundle

    assert tags["inference_export"] == "openvino" and (download_bundle("models:/captioner/2") / "export").is_dir()

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


def _register(store, name: str, *runs: str) -> None:
    """`name` version 1, 2 ... from these runs' models, version 1 @champion, nothing scored (a fixture's shortcut)."""
    uri, _, run_ids, _ = store
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    for run in runs:
        mlflow.register_model(client.get_run(run_ids[run]).data.tags["model_uri"], name)
    client.set_registered_model_alias(name, "champion", "1")


def _prepare_acting_under_the_lock(store, action):
    """A `prepare` for promote_best that calls action() once, at its first call under the registry lock. The
    challenger is scored first, before the lock, all its calls for its own Config; the first call for another
    Config is the champion's, loaded and scored under the lock."""
    prepared, challenger, acted = store[3], [], []

    def prepare(config):
        if not challenger:
            challenger.append(config)
        elif config is not challenger[0] and not acted:
            acted.append(config)
            action()
        return prepared(config)
    return prepare


def _promote_with(store, run: str, name: str, prepare, storage=None):
    uri, dataset, run_ids, _ = store
    mlflow.set_tracking_uri(uri)
    return registry.promote_best(MlflowClient().get_run(run_ids[run]), name, "dev_bleu4", 0.005, dataset, "s",
                                 storage, prepare=prepare, log=lambda line: None)


def test_a_promotion_by_hand_waits_for_the_lock_a_search_holds_while_it_compares(store):
    """A second process (captioning-registry promote) started while a search scores the champion under the lock:
    it says it waits, moves nothing until the search is done, then moves the champion after it."""
    uri = store[0]
    _register(store, "contended", "untrained")
    client = MlflowClient()
    other = {}

    def start_the_other_process():
        process = other["process"] = subprocess.Popen(
            [sys.executable, "-m", "captioning.serving.registry", "--tracking-uri", uri, "--name", "contended",
             "promote", "1", "--reason", "after the other process"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        other["said"] = process.stdout.readline().strip()  # its first line: it found the lock taken
        other["champion while held"] = str(client.get_model_version_by_alias("contended", "champion").version)
        other["running while held"] = process.poll() is None

    try:
        outcome = _promote_with(store, "trained", "contended",
                                _prepare_acting_under_the_lock(store, start_the_other_process))
        out, _ = other["process"].communicate(timeout=120)
    finally:
        if "process" in other and other["process"].poll() is None:
            other["process"].kill()
    assert other["said"] == "registry: waiting for another process that is moving contended's aliases", out
    assert other["champion while held"] == "1" and other["running while held"]  # it waited: nothing moved
    assert outcome["alias"] == "champion" and str(outcome["version"].version) == "2"  # the search's move, first
    assert other["process"].returncode == 0 and "contended version 1 is now @champion" in out
    champion = client.get_model_version_by_alias("contended", "champion")  # the by-hand move, after it
    assert str(champion.version) == "1" and "after the other process" in champion.tags["promotion"]
    assert client.get_registered_model("contended").tags[registry.HISTORY] == "1,2,1"


def test_a_champion_moved_meanwhile_without_the_lock_is_not_overwritten(store):
    """Another process moves the champion without the lock (as the MLflow UI does) while a search compares: the
    search stops with one line instead of overwriting it, and its version is compared on the next run."""
    uri = store[0]
    _register(store, "moved", "untrained", "trained")
    client = MlflowClient()

    def move_the_champion_elsewhere():
        subprocess.run([sys.executable, "-c", "import sys; from mlflow import MlflowClient; "
                        "MlflowClient(sys.argv[1]).set_registered_model_alias('moved', 'champion', '2')", uri],
                       check=True, timeout=120)

    with pytest.raises(registry.RegistryError) as refused:
        _promote_with(store, "trained again", "moved",
                      _prepare_acting_under_the_lock(store, move_the_champion_elsewhere))
    assert "moved's champion moved to version 2 while version 3 was being compared" in str(refused.value)
    # The move stands; the search's version is registered (its score on it), without an alias.
    assert {a: str(v) for a, v in client.get_registered_model("moved").aliases.items()} == {"champion": "2"}
    assert "champion_dev_bleu4" in client.get_model_version("moved", "3").tags

    again = _promote_with(store, "trained again", "moved", store[3])  # the next run compares it, against version 2
    assert str(again["version"].version) == "3" and again["alias"] == "challenger" and "does not beat" in again["why"]
    assert "(version 2)" in again["why"] and len(client.search_model_versions("name = 'moved'")) == 3
    assert str(client.get_model_version_by_alias("moved", "champion").version) == "2"


def test_a_champion_that_cannot_be_scored_keeps_its_place(store, tmp_path, monkeypatch):
    """A damaged champion (its decoder file overwritten) is not compared, so not replaced; the line says so."""
    from captioning.core import tracking
    from captioning.serving.mlflow_model import download_bundle, log_captioner

    uri, _, runs, _ = store
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    with mlflow.start_run(experiment_id=tracking.ensure_experiment("registry")):
        info = log_captioner(download_bundle(client.get_run(runs["untrained"]).data.tags["model_uri"]))
        mlflow.set_tag("model_uri", info.model_uri)
    decoder = Path(mlflow.get_logged_model(info.model_id).artifact_location.removeprefix("file://")) / \
        "artifacts" / "captioner" / "decoder.keras"
    assert decoder.is_file()
    decoder.write_bytes(b"not a Keras file")
    mlflow.register_model(info.model_uri, "damaged")
    client.set_registered_model_alias("damaged", "champion", "1")

    uri, dataset, _, prepared = store
    outcome = registry.promote_best(client.get_run(runs["trained"]), "damaged", "dev_bleu4", 0.005, dataset, "s",
                                    prepare=prepared, log=lambda line: None)
    assert outcome["alias"] == "challenger" and str(outcome["version"].version) == "2"
    assert outcome["why"].startswith("the champion (version 1) cannot be scored here (")
    assert "promote by hand if you trust it: captioning-registry promote VERSION" in outcome["why"]
    assert str(client.get_model_version_by_alias("damaged", "champion").version) == "1"
    assert "champion_dev_bleu4" not in client.get_model_version("damaged", "2").tags
    assert outcome["test"]["test_bleu4"] >= 0  # the registered version is still scored on test


@requires_postgres
def test_a_promotion_whose_lock_was_lost_moves_nothing(store):
    """Workers share a PostgreSQL study storage: the registry also holds an advisory lock there. Its connection cut
    by the server while the champion is scored (as a restart does) stops the promotion before anything is written."""
    import secrets
    import shutil
    import tempfile

    import sqlalchemy

    from captioning.serving import infra

    _register(store, "lost", "untrained")
    client = MlflowClient()
    root = Path(tempfile.mkdtemp(prefix="captioning-registry-", dir="/tmp"))
    root.chmod(0o755)  # PostgreSQL runs as its own user when the tests run as root
    server = infra.Infra(root, infra.free_port(), 0, secrets.token_urlsafe(18))
    server.save()
    cut = []
    try:
        infra.start_postgres(server)
        engine = sqlalchemy.create_engine(server.storage, poolclass=sqlalchemy.pool.NullPool)

        def cut_the_lock_holder():
            with engine.connect() as connection:
                cut.extend(row[0] for row in connection.execute(sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted")))

        with pytest.raises(registry.RegistryError) as refused:
            _promote_with(store, "trained", "lost", _prepare_acting_under_the_lock(store, cut_the_lock_holder),
                          storage=server.storage)
        engine.dispose()
    finally:
        infra.stop(root)
        shutil.rmtree(root, ignore_errors=True)
    assert cut == [True]  # the one advisory lock, the registry's, was held then
    assert "the lock on lost's aliases was lost" in str(refused.value) and "nothing was moved" in str(refused.value)
    assert [str(v.version) for v in client.search_model_versions("name = 'lost'")] == ["1"]  # nothing registered
    assert {a: str(v) for a, v in client.get_registered_model("lost").aliases.items()} == {"champion": "1"}


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
