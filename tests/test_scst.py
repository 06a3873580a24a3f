"""Self-critical sequence training on generated scenes: it raises the reward it optimises, continues the dev
selection, and resumes exactly after an interruption."""
import numpy as np
import pytest

from captioning.config import ConfigError, load_config
from captioning.features.prepare import load_and_report, prepare
from captioning.training.run import train_and_evaluate


@pytest.fixture(scope="module")
def prepared(shapes_dir):
    from captioning.config import Config

    config = Config(encoder="pixels", image_size=32, feature_grid=4, vocab_min_count=1, max_length=20,
                    embedding_size=32, units=64, dropout=0.1, learning_rate=0.01, batch_size=32, epochs=3,
                    patience=8, beam_width=2, scst_samples=3, scst_learning_rate=3e-3)
    return config, prepare(config, load_and_report(shapes_dir, log=lambda line: None), progress=False)


def test_scst_raises_the_cider_reward_and_continues_the_selection(prepared):
    config, data = prepared
    result = train_and_evaluate(config.replace(scst_epochs=3, selection_metric="cider"), data, eval_splits=(),
                                verbose=False)
    history = result.training.history
    assert [h["stage"] for h in history] == ["teacher"] * 3 + ["scst"] * 3
    assert [h["epoch"] for h in history] == list(range(1, 7))
    rewards = [h["reward"] for h in history[3:]]
    assert rewards[-1] > rewards[0]  # the policy gradient raises what it optimises
    assert history[3]["learning_rate"] == pytest.approx(config.scst_learning_rate)  # its own optimizer
    best = max(history, key=lambda h: h["dev_cider"])
    assert result.training.best_epoch == best["epoch"] and result.training.best == best


def test_an_interrupted_scst_stage_resumes_exactly(prepared, tmp_path):
    config, data = prepared
    # (With the greedy caption's reward as the baseline and one sample per image, the other baseline.)
    config = config.replace(epochs=2, scst_epochs=2, scst_samples=1, scst_baseline="greedy")
    checkpoint = tmp_path / "trial.npz"
    seen = []

    def stop_after_epoch_3(epoch, record):
        seen.append((epoch, record.get("resumed_after")))
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, data, stop_after_epoch_3, eval_splits=(), verbose=False, checkpoint=checkpoint)
    assert seen == [(1, None), (2, None), (3, None)]
    seen.clear()
    resumed = train_and_evaluate(config, data, lambda e, r: seen.append((e, r.get("resumed_after"))),
                                 eval_splits=(), verbose=False, checkpoint=checkpoint)
    assert seen == [(1, 3), (2, 3), (3, 3), (4, None)]
    whole = train_and_evaluate(config, data, eval_splits=(), verbose=False)
    assert resumed.training.history == [{**h, "seconds": r["seconds"]}
                                        for h, r in zip(whole.training.history, resumed.training.history)]
    assert all(np.array_equal(a, b) for a, b in zip(resumed.training.model.get_weights(),
                                                     whole.training.model.get_weights()))
    assert [h["stage"] for h in whole.training.history] == ["teacher", "teacher", "scst", "scst"]
    assert all(np.isfinite(h["reward"]) for h in whole.training.history[2:])


def test_a_bleu_weighted_reward_is_raised_too(prepared):
    config, data = prepared
    result = train_and_evaluate(config.replace(epochs=2, scst_epochs=3, scst_bleu_weight=2.0), data,
                                eval_splits=(), verbose=False)
    rewards = [h["reward"] for h in result.training.history[2:]]
    assert len(rewards) == 3 and rewards[-1] > rewards[0]
    # From the same teacher-forced weights, the first SCST epoch's samples earn 2 x their BLEU-4 more than with
    # CIDEr-D alone (here BLEU-4 is about 0.27 a sample): the weight is in the reward, not ignored.
    plain = train_and_evaluate(config.replace(epochs=2, scst_epochs=1), data, eval_splits=(), verbose=False)
    assert rewards[0] > plain.training.history[2]["reward"] + 0.2


@pytest.mark.parametrize("override, message", [
    ("scst_bleu_weight=-1", "'scst_bleu_weight' must be 0 \\(CIDEr-D alone\\) or more"),
    ("scst_samples=0", "'scst_samples' must be at least 2"),
    ("scst_baseline=best", "'scst_baseline' must be one of mean, greedy"),
    ("scst_epochs=-1", "'scst_epochs' must be 0"),
    ("scst_learning_rate=0", "'scst_learning_rate' must be positive"),
    ("selection_metric=cidr", "'selection_metric' must be one of .*cider"),
])
def test_bad_scst_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_the_attention_decoder_trains_both_stages_and_its_bundle_captions_with_attention(prepared, tmp_path,
                                                                                         shapes_dir):
    """decoder: attention through teacher forcing and the self-critical stage, far beyond an untrained model;
    its bundle loads (Keras safe mode) and gives the same captions, with one attention map per word."""
    from captioning.decoding.captioner import Captioner

    config, data = prepared
    config = config.replace(decoder="attention", attention_units=16, epochs=2, scst_epochs=1, scst_samples=2)
    result = train_and_evaluate(config, data, eval_splits=("dev",), verbose=False)
    assert [h["stage"] for h in result.training.history] == ["teacher", "teacher", "scst"]
    assert result.metrics()["dev_bleu4"] > 0.2 and np.isfinite(result.training.history[-1]["reward"])
    loaded = Captioner.load(result.captioner.save(tmp_path / "bundle"))
    images = [str(shapes_dir / "Images" / name) for name in data.dataset.split("test")[:3]]
    assert loaded.caption(images) == result.captioner.caption(images)
    caption, attention = loaded.caption_with_attention(images[0])
    assert attention.shape == (len(caption.split()), 8, 8)  # the pixel encoder's 8 x 8 map
    np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_fine_tuning_continues_a_trained_captioner_and_resumes_exactly(prepared, tmp_path):
    """Self-critical epochs from a teacher-forced captioner: its vocabulary stays, its weights are scored as epoch
    0 (the same dev score as its own best epoch) and kept unless an epoch beats them; an interrupted fine-tuning
    resumes from its checkpoint as if it had not stopped, and a checkpoint of another start is not resumed."""
    config, data = prepared
    config = config.replace(epochs=2, selection_metric="cider")
    start = train_and_evaluate(config, data, eval_splits=(), verbose=False)
    tuned_config = config.replace(scst_epochs=2, scst_samples=2)
    checkpoint = tmp_path / "finetune.npz"

    def stop_after_epoch_1(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(tuned_config, data, stop_after_epoch_1, eval_splits=(), verbose=False, start=start.captioner,
                           checkpoint=checkpoint)
    resumed = train_and_evaluate(tuned_config, data, eval_splits=(), verbose=False, start=start.captioner,
                                 checkpoint=checkpoint)
    whole = train_and_evaluate(tuned_config, data, eval_splits=("dev",), verbose=False, start=start.captioner)
    history = whole.training.history
    assert [(h["epoch"], h["stage"]) for h in history] == [(1, "scst"), (2, "scst")]
    assert whole.captioner.vocab is start.captioner.vocab
    assert resumed.training.history == [{**h, "seconds": r["seconds"]} for h, r in zip(history, resumed.training.history)]
    assert all(np.array_equal(a, b) for a, b in zip(resumed.training.model.get_weights(),
                                                     whole.training.model.get_weights()))
    start_cider = start.training.best["dev_cider"]
    assert whole.training.start["dev_cider"] == pytest.approx(start_cider)  # the same weights, scored again
    best = whole.training.best
    if whole.training.best_epoch == 0:  # no epoch beat the start: its weights are kept
        assert best["stage"] == "start" and best["dev_cider"] == pytest.approx(start_cider)
        assert all(np.array_equal(a, b) for a, b in
                   zip(whole.training.model.get_weights(), start.training.model.get_weights()))
    else:
        assert best["dev_cider"] > start_cider and best == max(history, key=lambda h: h["dev_cider"])
    assert np.isfinite(whole.metrics()["dev_bleu4"])

    from captioning.decoding.captioner import Captioner
    from captioning.models.merge import build_decoder

    trained = start.captioner  # the same config and vocabulary, other (untrained) weights
    other = Captioner(config, trained.vocab, build_decoder(config, len(trained.vocab), data.features["train"].shape[1]))
    seen = []

    def note_and_stop(epoch, record):
        seen.append((epoch, record.get("resumed_after")))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the leftover checkpoint (2 epochs) is the first start's: not resumed
        train_and_evaluate(tuned_config, data, note_and_stop, eval_splits=(), verbose=False, start=other,
                           checkpoint=checkpoint)
    assert seen == [(1, None)]

    # What the library refuses before any epoch: a config changed beyond the self-critical settings, other captions.
    from captioning.data.dataset import DataError
    from captioning.data.text import Vocabulary

    with pytest.raises(ConfigError, match="units shape the model"):
        train_and_evaluate(tuned_config.replace(units=32), data, eval_splits=(), verbose=False, start=trained)
    other_words = Captioner(trained.config, Vocabulary([*trained.vocab.words[4:-1], "zebra"]), trained.model)
    with pytest.raises(DataError, match="trained on other captions"):
        train_and_evaluate(tuned_config, data, eval_splits=(), verbose=False, start=other_words)
