"""Extensions are a file each: a toy decoder (tests/toy_decoder.py) and a toy metric (tests/toy_metric.py), imported
and nothing else, train, select epochs, decode greedy and beam, save and load, join an ensemble and drive a search."""
import importlib

import numpy as np
import pytest
import yaml

from captioning import metrics, models
from captioning.config import ConfigError
from captioning.decoding.captioner import Captioner
from captioning.features.prepare import load_and_report, prepare
from captioning.serving.registry import check_metric
from captioning.training.run import train_and_evaluate
from tuning import search as search_cli


@pytest.fixture()
def toys():
    """The two toy modules imported (registering what they define), and unregistered afterwards, so that other
    tests in this process see the built-in registries only."""
    decoder = importlib.reload(importlib.import_module("toy_decoder"))
    metric = importlib.reload(importlib.import_module("toy_metric"))
    yield decoder, metric
    models.REGISTRY.pop("toy", None)
    metrics.REGISTRY.pop("distinct", None)


@pytest.fixture()
def shapes(shapes_dir):
    return load_and_report(shapes_dir, log=lambda line: None)


def test_a_toy_decoder_and_metric_train_decode_save_and_ensemble(toys, shapes, tiny_config, tmp_path):
    config = tiny_config.replace(decoder="toy", selection_metric="distinct", epochs=3)
    prepared = prepare(config, shapes, progress=False)
    result = train_and_evaluate(config, prepared, eval_splits=("dev",), verbose=False)
    assert result.captioner.model.name == "toy_decoder"
    history = result.training.history
    assert len(history) == 3 and all(0 < record["dev_distinct"] <= 1 for record in history)
    best = max(range(3), key=lambda i: history[i]["dev_distinct"])  # the toy metric chose the epoch kept
    assert result.training.best_epoch == best + 1
    assert 0 < result.metrics()["dev_distinct"] <= 1  # and it is among the final scores
    inputs = prepared.inputs("test", config.decoder)
    greedy = result.captioner.decode_features(inputs, beam_width=1)
    beam = result.captioner.decode_features(inputs, beam_width=3)
    assert all(len(options) == 1 and options[0][0] for options in greedy)
    assert all(1 <= len(options) <= 3 and options[0][0] for options in beam)

    loaded = Captioner.load(result.captioner.save(tmp_path / "toy"))  # safe mode: built-in Keras layers only
    assert [o[0][0] for o in loaded.decode_features(inputs, beam_width=3)] == [o[0][0] for o in beam]

    merge = train_and_evaluate(tiny_config.replace(epochs=2), prepared, eval_splits=(), verbose=False).captioner
    ensemble = Captioner.ensemble([loaded, merge])
    assert [m.name for m in ensemble.models] == ["toy_decoder", "merge_decoder"]
    captions = ensemble.decode_features(inputs, beam_width=3)
    assert len(captions) == len(inputs) and all(options[0][0] for options in captions)
    # The ensemble's step is the mean of its members' distributions.
    context, states = ensemble.decoder.start(inputs[:2])
    tokens = np.full(2, ensemble.decoder.start_id, np.int32)
    mean, _ = ensemble.decoder.step(tokens, states, context)
    parts = []
    for member in (loaded.decoder, merge.decoder):
        own_context, own_states = member.start(inputs[:2])
        parts.append(np.exp(member.step(tokens, own_states, own_context)[0].numpy()))
    np.testing.assert_allclose(np.exp(mean.numpy()), np.mean(parts, axis=0), rtol=1e-4, atol=1e-6)


def test_unregistered_names_are_clear_errors(toys, tiny_config):
    with pytest.raises(ConfigError, match="'decoder' must be one of merge, attention, transformer, toy, got 'gru'"):
        tiny_config.replace(decoder="gru")
    with pytest.raises(ConfigError, match="'selection_metric' must be one of .*distinct, loss"):
        tiny_config.replace(selection_metric="spice")
    metrics.register_metric(metrics.MetricSpec("shortness", toys[1].distinct_scorer, higher_is_better=False))
    try:
        with pytest.raises(ConfigError, match="'dev_shortness' is better when lower, but the searches"):
            check_metric("dev_shortness", "--metric")
    finally:
        metrics.REGISTRY.pop("shortness")
    models.REGISTRY.pop("toy")
    with pytest.raises(models.DecoderLookupError, match="'toy_decoder' is of no registered decoder family"):
        models.spec_of_model(type("Model", (), {"name": "toy_decoder"})())


def test_a_search_over_the_toy_decoder_driven_by_the_toy_metric(toys, shapes_dir, tiny_config, tmp_path, monkeypatch,
                                                                 capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CAPTIONING_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    config = tiny_config.replace(decoder="toy", selection_metric="distinct", embedding_size=16, units=32, epochs=1)
    experiment = tmp_path / "toy.yaml"  # (ensembles of the toy decoder: the test above)
    experiment.write_text(yaml.safe_dump({"config": config.to_dict(), "search": {
        "trials": 2, "samples": 0, "pruner": "none", "export": False, "space": {"units": {"choices": [16, 32]}}}}))
    assert search_cli.main(["--data", str(shapes_dir), "--experiment", str(experiment),
                            "--metric", "dev_distinct"]) == 0
    out = capsys.readouterr().out
    assert "trial   0" in out and "trial   1" in out and "best:" in out and "dev_distinct" in out
    assert "registered: captioner version 1 as @champion" in out


def test_the_encoders_registered_map_shapes_are_their_maps(tiny_config):
    import keras

    from captioning.features import encoder_spec
    from captioning.features.encoders import make_encoder

    for size in (71, 128, 299):  # Xception's own arithmetic, without its weights
        network = keras.applications.Xception(weights=None, include_top=False, input_shape=(size, size, 3))
        assert encoder_spec("xception").map_shape(size) == tuple(network.output_shape[1:]), size
        # the entry flow's channels at the same side, each cell's colours and place
        assert encoder_spec("xception-entry").map_shape(size) == (*network.output_shape[1:3], 728 + 217 + 2), size
    for size in (4, 32):
        encoder = make_encoder(tiny_config.replace(image_size=size))
        maps = encoder.encode_maps(encoder.preprocess(np.zeros((size + 3, size, 3), np.float32))[None])
        assert encoder_spec("pixels").map_shape(size) == tuple(maps.shape[1:]), size
