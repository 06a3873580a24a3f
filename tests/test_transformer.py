"""The transformer decoder, small (1 block, 2 heads) on generated scenes: its cached step decodes exactly what re-running
the whole prefix decodes, and it trains, runs the self-critical stage, saves and loads, draws attention and joins an
ensemble with an LSTM member. (tests/test_decode.py checks its step against teacher forcing and the exhaustive beam;
tests/test_serve.py serves a transformer champion over REST.)"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from captioning.config import Config, ConfigError
from captioning.decoding.captioner import Captioner
from captioning.decoding.search import beam_search, greedy_search
from captioning.features.prepare import load_and_report, prepare
from captioning.models.base import SmoothedCrossEntropy, masked_cross_entropy
from captioning.training.batches import WarmUp
from captioning.training.run import train_and_evaluate


@pytest.fixture(scope="module")
def trained(shapes_dir):
    config = Config(encoder="pixels", image_size=32, feature_grid=4, vocab_min_count=1, max_length=20,
                    decoder="transformer", embedding_size=32, transformer_layers=1, transformer_heads=2,
                    transformer_ff=64, dropout=0.1, learning_rate=3e-3, warmup_steps=10, label_smoothing=0.1,
                    batch_size=32, epochs=3, patience=8, beam_width=3, scst_epochs=1, scst_samples=2,
                    scst_learning_rate=1e-3)
    prepared = prepare(config, load_and_report(shapes_dir, log=lambda line: None), progress=False)
    return config, prepared, train_and_evaluate(config, prepared, eval_splits=("dev",), verbose=False)


class PrefixStepDecoder:
    """A transformer decoded without a cache: each step runs the teacher-forcing model over the row's whole prefix
    and reads the logits at the row's position (the reference the cached step must equal)."""

    has_attention = False
    context_count, state_count = 2, 2
    signature = training_signature = None

    def __init__(self, model, cached):
        self.model, self.max_length = model, model.get_layer("word_positions").count
        self.banned, self.start_id, self.end_id = cached.banned, cached.start_id, cached.end_id

    def start(self, inputs):
        rows = len(inputs)
        context = (tf.constant(inputs.maps.reshape(rows, -1, inputs.maps.shape[-1]), tf.float32),
                   tf.constant(inputs.features, tf.float32))
        return context, [tf.zeros((rows, self.max_length), tf.int32), tf.zeros((rows,), tf.int32)]

    def step(self, tokens, states, context, with_attention=False):
        prefix, positions = states
        prefix = tf.where(tf.one_hot(positions, self.max_length) > 0, tf.cast(tokens, tf.int32)[:, None], prefix)
        rows = tf.range(tf.shape(prefix)[0])
        logits = self.model([context[0], context[1], rows, prefix], training=False)
        logp = tf.nn.log_softmax(tf.gather(logits, positions, batch_dims=1) + self.banned)
        return (logp, [prefix, positions + 1], None) if with_attention else (logp, [prefix, positions + 1])

    def step_top(self, tokens, states, context, k, with_attention=False):
        logp, states = self.step(tokens, states, context)
        values, ids = tf.math.top_k(logp, k)
        return values.numpy(), ids.numpy(), states


def test_the_cached_step_decodes_what_rerunning_the_prefix_decodes(trained):
    config, prepared, result = trained
    cached = result.captioner.decoder
    reference = PrefixStepDecoder(result.captioner.model, cached)
    inputs = prepared.inputs("test", config.decoder)[:12].load()
    assert greedy_search(cached, inputs, config.max_length) == greedy_search(reference, inputs, config.max_length)
    fast, slow = (beam_search(d, inputs, config.max_length, 3, 0.5) for d in (cached, reference))
    assert [[ids for ids, _ in beams] for beams in fast] == [[ids for ids, _ in beams] for beams in slow]
    np.testing.assert_allclose([s for beams in fast for _, s in beams], [s for beams in slow for _, s in beams],
                               rtol=1e-4)


def test_it_trains_both_stages_saves_loads_draws_attention_and_ensembles(trained, tmp_path, shapes_dir):
    config, prepared, result = trained
    history = result.training.history
    assert [h["stage"] for h in history] == ["teacher"] * 3 + ["scst"]
    assert result.metrics()["dev_bleu4"] > 0.2 and np.isfinite(history[-1]["reward"])
    loaded = Captioner.load(result.captioner.save(tmp_path / "bundle"))  # Keras safe mode: registered layers only
    images = [str(shapes_dir / "Images" / name) for name in prepared.dataset.split("test")[:3]]
    assert loaded.caption(images) == result.captioner.caption(images)
    caption, attention = loaded.caption_with_attention(images[0])
    assert attention.shape == (len(caption.split()), 8, 8)  # the pixel encoder's 8 x 8 map
    # The last block's cross-attention over the map cells: the pooled token has the rest of each row.
    assert np.all(attention.sum(axis=(1, 2)) <= 1 + 1e-5) and attention.sum() > 0

    merge = train_and_evaluate(config.replace(decoder="merge", units=32, epochs=1, scst_epochs=0,
                                              label_smoothing=0.0, warmup_steps=0),
                               prepared, eval_splits=(), verbose=False).captioner
    ensemble = Captioner.ensemble([merge, loaded])
    assert [m.name for m in ensemble.models] == ["merge_decoder", "transformer_decoder"]
    inputs = prepared.inputs("test", config.decoder)[:4].load()
    context, states = ensemble.decoder.start(inputs)
    tokens = np.full(4, ensemble.decoder.start_id, np.int32)
    mean, _ = ensemble.decoder.step(tokens, states, context)
    parts = []
    for member in (loaded.decoder, merge.decoder):
        own_context, own_states = member.start(inputs if member.has_attention else inputs.features)
        parts.append(np.exp(member.step(tokens, own_states, own_context)[0].numpy()))
    np.testing.assert_allclose(np.exp(mean.numpy()), np.mean(parts, axis=0), rtol=1e-4, atol=1e-6)
    captions, maps = ensemble.caption_with_attention(images[0])
    assert captions and maps.shape[1:] == (8, 8)


def test_label_smoothing_and_warm_up():
    targets = tf.constant([[3, 1, 0]])
    logits = tf.constant(np.random.default_rng(0).normal(size=(1, 3, 5)), tf.float32)
    np.testing.assert_allclose(SmoothedCrossEntropy(0.0)(targets, logits), masked_cross_entropy(targets, logits),
                               rtol=1e-6)
    logp = tf.nn.log_softmax(logits).numpy()[0]
    expected = np.mean([0.8 * -logp[t, w] - 0.2 * logp[t].mean() for t, w in enumerate([3, 1])])
    np.testing.assert_allclose(SmoothedCrossEntropy(0.2)(targets, logits), expected, rtol=1e-5)

    optimizer = keras.optimizers.Adam(0.01)
    variable = keras.Variable(1.0)
    warmup, rates = WarmUp(0.01, steps=4), []
    for _ in range(6):
        warmup.before_update(optimizer)
        rates.append(float(optimizer.learning_rate.numpy()))
        optimizer.apply_gradients([(tf.constant(1.0), variable)])
    np.testing.assert_allclose(rates, [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01], rtol=1e-6)


@pytest.mark.parametrize("override, message", [
    ({"embedding_size": 30, "transformer_heads": 4}, "must divide into transformer_heads .* transformer_heads=3"),
    ({"transformer_layers": 0}, "'transformer_layers' must be at least 1"),
    ({"transformer_ff": 0}, "'transformer_ff' must be at least 1"),
    ({"label_smoothing": 1.0}, r"'label_smoothing' must be in \[0, 1\)"),
    ({"warmup_steps": -1}, "'warmup_steps' must be 0"),
])
def test_bad_transformer_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        Config(decoder="transformer").replace(**override)


def test_cross_attention_per_image_equals_the_memory_gathered_per_caption():
    """Teacher forcing attends per image (queries grouped by image); bundles saved before pass the memory gathered
    per caption: the same outputs, attention and gradients, for captions in any order and any count per image."""
    from captioning.models.transformer import TransformerStack

    keras.utils.set_random_seed(0)
    stack = TransformerStack(2, 4, 32, 0.0, 12)
    rng = np.random.default_rng(0)
    owner = tf.constant([2, 0, 0, 1, 2, 2, 0], tf.int32)  # image 0: 3 captions, 1: one, 2: three; not sorted
    x = tf.constant(rng.normal(size=(7, 5, 16)), tf.float32)
    memory = tf.constant(rng.normal(size=(3, 6, 2 * 16 * 2)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, memory])
        per_image = stack([x, memory, owner])
        gathered = stack([x, tf.gather(memory, owner)])
        losses = [tf.reduce_sum(h * tf.range(16, dtype=tf.float32)) for h, _ in (per_image, gathered)]
    for a, b in zip(per_image, gathered):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert per_image[1].shape == (7, 5, 6)
    for a, b in zip(tape.gradient(losses[0], [x, memory, *stack.trainable_weights]),
                    tape.gradient(losses[1], [x, memory, *stack.trainable_weights])):
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(), atol=1e-4)
