"""A tiny end-to-end run on generated scenes: the model learns, deterministically, and its bundle round-trips."""
import numpy as np
import pytest

from captioning.decoding.bundle import BundleError
from captioning.decoding.captioner import Captioner
from captioning.evaluation.evaluate import evaluate
from captioning.features.prepare import load_and_report, prepare
from captioning.models.merge import build_decoder
from captioning.training.batches import seed_everything
from captioning.training.run import train_and_evaluate
from captioning.training.selection import TrainingError
from captioning.training.teacher import StopTraining


@pytest.fixture(scope="module")
def trained(shapes_dir, tmp_path_factory):
    from captioning.config import Config

    config = Config(encoder="pixels", image_size=32, feature_grid=4, vocab_min_count=1, max_length=24,
                    embedding_size=32, units=64, dropout=0.1, learning_rate=0.01, batch_size=32, epochs=8,
                    patience=8, beam_width=3)
    prepared = prepare(config, load_and_report(shapes_dir, log=lambda line: None), progress=False)
    return config, prepared, train_and_evaluate(config, prepared, verbose=False)


def test_training_learns_far_beyond_an_untrained_model(trained):
    config, prepared, result = trained
    seed_everything(0)
    untrained = Captioner(config, result.captioner.vocab,
                          build_decoder(config, len(result.captioner.vocab), prepared.features["train"].shape[1]))
    before = evaluate(untrained, prepared, "test", 1).scores["bleu4"]
    after = result.metrics()
    assert after["test_greedy_bleu4"] > before + 0.2 and after["test_bleu4"] > before + 0.2
    history = result.training.history
    assert history[-1]["loss"] < history[0]["loss"] and result.training.best["dev_bleu4"] == max(
        h["dev_bleu4"] for h in history)


def test_training_is_deterministic_with_a_seed(trained):
    config, prepared, result = trained
    again = train_and_evaluate(config.replace(epochs=2), prepared, eval_splits=(), verbose=False)
    twice = train_and_evaluate(config.replace(epochs=2), prepared, eval_splits=(), verbose=False)
    assert [h["loss"] for h in again.training.history] == [h["loss"] for h in twice.training.history]


def test_bundle_round_trip_gives_the_same_captions(trained, tmp_path, shapes_dir):
    _, prepared, result = trained
    directory = result.captioner.save(tmp_path / "bundle")
    loaded = Captioner.load(directory)
    features = prepared.features["test"][:5]
    assert loaded.decode_features(features) == result.captioner.decode_features(features)
    path = shapes_dir / "Images" / prepared.dataset.splits["test"][0]
    from_path = loaded.caption(path, beam_width=1)
    assert from_path == loaded.caption(path.read_bytes(), beam_width=1) == loaded.caption([path], beam_width=1)[0]
    assert from_path == result.captioner.decode_features(prepared.features["test"][:1], 1)[0][0][0]
    alternatives = loaded.caption_alternatives([path], beam_width=3)[0]
    assert len(alternatives) == 3 and alternatives[0][1] >= alternatives[1][1] >= alternatives[2][1]


def test_incomplete_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="missing config.json, vocab.json, decoder.keras"):
        Captioner.load(tmp_path)


def test_nan_loss_stops_with_advice(trained):
    config, prepared, _ = trained
    with pytest.raises(TrainingError, match="learning_rate"):
        train_and_evaluate(config.replace(learning_rate=1e12, epochs=2), prepared, verbose=False)


def test_every_epoch_sees_all_batches_in_a_new_order():
    import keras

    from captioning.training.batches import CaptionBatches, run_pass

    features = np.arange(40, dtype=np.float32).reshape(40, 1)
    captions = [[[1, 4, 5, 2]] for _ in range(40)]
    batches = CaptionBatches(features, captions, batch_size=4, shuffle=True, seed=0)
    seen = []

    class Record(keras.layers.Layer):  # records which images each training batch holds
        def call(self, x, training=None):
            if training:
                seen.append(x.numpy()[:, 0].astype(int).tolist())
            return x

    inputs = [keras.Input((1,)), keras.Input((None,), dtype="int32")]
    logits = keras.layers.Dense(8)(keras.layers.RepeatVector(3)(Record()(inputs[0])))
    model = keras.Model(inputs, logits)
    model.compile("sgd", "sparse_categorical_crossentropy", run_eagerly=True)
    for _ in range(3):
        run_pass(model, batches, train=True)
        batches.on_epoch_end()
    epochs = [sum(seen[i * 10:(i + 1) * 10], []) for i in range(3)]
    assert len(seen) == 30 and all(sorted(e) == list(range(40)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]


def test_learning_rate_halves_after_each_epoch_that_does_not_improve(trained):
    config, _, result = trained
    history = result.training.history
    assert history[0]["learning_rate"] == pytest.approx(config.learning_rate)
    best = history[0]["dev_bleu4"]
    for before, after in zip(history, history[1:]):
        improved = before["dev_bleu4"] > best or before is history[0]
        best = max(best, before["dev_bleu4"])
        expected = before["learning_rate"] * (1.0 if improved else config.lr_decay)
        assert after["learning_rate"] == pytest.approx(expected, rel=1e-5)
    assert any(h["learning_rate"] < config.learning_rate for h in history)  # the run did hit a plateau


def test_an_interrupted_training_resumes_from_its_checkpoint(trained, tmp_path):
    config, prepared, _ = trained
    config = config.replace(epochs=4)
    checkpoint = tmp_path / "trial.npz"
    seen = []

    def stop_after_epoch_2(epoch, record):
        seen.append((epoch, record.get("resumed_after")))
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, prepared, stop_after_epoch_2, eval_splits=(), verbose=False, checkpoint=checkpoint)
    assert checkpoint.exists() and seen == [(1, None), (2, None)]

    seen.clear()
    resumed = train_and_evaluate(config, prepared, lambda e, r: seen.append((e, r.get("resumed_after"))),
                                 eval_splits=(), verbose=False, checkpoint=checkpoint)
    assert seen == [(1, 2), (2, 2), (3, None), (4, None)]  # the finished epochs are reported again, then new ones
    whole = train_and_evaluate(config, prepared, eval_splits=(), verbose=False)
    # The resumed training is the uninterrupted one: same batches, dropout draws, optimizer state, learning rates.
    assert resumed.training.history == [{**h, "seconds": r["seconds"]}
                                        for h, r in zip(whole.training.history, resumed.training.history)]
    model, reference = resumed.training.model, whole.training.model
    assert int(model.optimizer.iterations.numpy()) == int(reference.optimizer.iterations.numpy())
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), reference.get_weights()))

    # A checkpoint saved at the last epoch: nothing is left to train, the epochs are only reported again.
    seen.clear()
    again = train_and_evaluate(config, prepared, lambda e, r: seen.append((e, r.get("resumed_after"))),
                               eval_splits=(), verbose=False, checkpoint=checkpoint)
    assert seen == [(e, 4) for e in range(1, 5)] and again.training.best_epoch == resumed.training.best_epoch
    assert all(np.array_equal(a, b) for a, b in zip(again.training.model.get_weights(), model.get_weights()))

    # A checkpoint of other values, or a damaged one, is not resumed: training starts at epoch 1.
    seen.clear()
    train_and_evaluate(config.replace(learning_rate=0.005, epochs=1), prepared,
                       lambda e, r: seen.append((e, r.get("resumed_after"))), eval_splits=(), verbose=False,
                       checkpoint=checkpoint)
    checkpoint.write_bytes(b"not a checkpoint")
    train_and_evaluate(config.replace(epochs=1), prepared, lambda e, r: seen.append((e, r.get("resumed_after"))),
                       eval_splits=(), verbose=False, checkpoint=checkpoint)
    assert seen == [(1, None), (1, None)]


def test_patience_zero_stops_after_the_first_epoch_that_does_not_improve(trained):
    config, prepared, _ = trained
    result = train_and_evaluate(config.replace(patience=0, epochs=6, learning_rate=0.05), prepared,
                                eval_splits=(), verbose=False)
    history = [h["dev_bleu4"] for h in result.training.history]
    first_without_gain = next((e for e in range(2, len(history) + 1) if history[e - 1] <= max(history[:e - 1])),
                              None)
    assert len(history) == (first_without_gain or 6) and result.training.best_epoch >= 1
    assert result.training.stopped_early == (first_without_gain is not None)


def test_a_callback_can_end_training_after_an_epoch_keeping_the_best_so_far(trained):
    config, prepared, _ = trained

    def stop_after_epoch_2(epoch, record):
        if epoch == 2:
            raise StopTraining

    result = train_and_evaluate(config.replace(epochs=4, scst_epochs=1), prepared, stop_after_epoch_2,
                                eval_splits=("dev",), verbose=False)
    training = result.training
    assert [h["epoch"] for h in training.history] == [1, 2] and training.cut_after == 2  # no self-critical epoch
    assert training.stopped_early and training.best == training.history[training.best_epoch - 1]
    assert result.metrics()["dev_greedy_bleu4"] == pytest.approx(training.best["dev_bleu4"])


def test_selection_on_beam_search_scores_each_epoch_as_the_final_beam_evaluation(trained):
    config, prepared, _ = trained
    result = train_and_evaluate(config.replace(epochs=3, selection_beam=3), prepared, eval_splits=("dev",),
                                verbose=False)
    training, metrics = result.training, result.metrics()
    assert metrics["dev_bleu4"] == pytest.approx(training.best["dev_bleu4"])  # beam 3: the config's beam_width
    assert metrics["dev_greedy_bleu4"] != pytest.approx(training.best["dev_bleu4"])  # (they differ here)
