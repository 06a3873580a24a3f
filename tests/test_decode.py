import itertools

import keras
import numpy as np
import pytest

from captioning.config import Config
from captioning.data.text import Vocabulary
from captioning.decoding.search import beam_search, greedy_search
from captioning.features.store import ImageInputs
from captioning.models import make_step_decoder
from captioning.models.attention import build_attention_decoder
from captioning.models.merge import build_decoder
from captioning.models.transformer import build_transformer_decoder
from captioning.training.batches import seed_everything


@pytest.fixture(scope="module", params=["merge", "attention", "transformer"])
def tiny(request):
    """Either decoder, small, with random weights; `features` is what its decoding reads for 6 images."""
    seed_everything(0)
    vocab = Vocabulary(["red", "blue", "circle"])
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 5)).astype(np.float32)
    if request.param == "merge":
        config = Config(encoder="pixels", embedding_size=8, units=16, lstm_layers=2, dropout=0.0)
        model = build_decoder(config, len(vocab), feature_dim=5)
    elif request.param == "attention":
        config = Config(encoder="pixels", embedding_size=8, units=16, attention_units=6, dropout=0.0,
                        decoder="attention")
        model = build_attention_decoder(config, len(vocab), feature_dim=5, positions=4, channels=3)
        features = ImageInputs(features, rng.normal(size=(6, 4, 3)).astype(np.float32))
    else:  # the step with its cache of keys and values
        config = Config(encoder="pixels", embedding_size=8, transformer_layers=2, transformer_heads=2,
                        transformer_ff=16, dropout=0.0, decoder="transformer", max_length=40)
        model = build_transformer_decoder(config, len(vocab), feature_dim=5, positions=4, channels=3)
        features = ImageInputs(features, rng.normal(size=(6, 4, 3)).astype(np.float32))
    for weights in model.weights:  # larger random weights, so that the distributions are far from uniform
        weights.assign(weights.numpy() * 3)
    if request.param == "transformer":  # its random captions end at once: make the end token less likely
        bias = model.get_layer("logits").bias
        bias.assign(bias.numpy() - 2.0 * (np.arange(len(vocab)) == vocab.end_id))
    return vocab, model, make_step_decoder(model, vocab), features


def _model_inputs(model, features, tokens):
    """Teacher-forcing inputs: caption row i belongs to image i."""
    if model.name in ("attention_decoder", "transformer_decoder"):
        return [features.maps, features.features, np.arange(len(tokens), dtype=np.int32), tokens]
    return [features, tokens]


def test_stepping_with_carried_state_equals_teacher_forcing(tiny):
    vocab, model, decoder, features = tiny
    tokens = np.array([[vocab.start_id, 4, 5, 6, 4]] * len(features), np.int32)
    full = model(_model_inputs(model, features, tokens), training=False).numpy()
    banned = decoder.banned.numpy()
    image, states = decoder.start(features)
    for t in range(tokens.shape[1]):
        logp, states = decoder.step(tokens[:, t], states, image)
        expected = full[:, t] + banned
        expected = expected - np.log(np.exp(expected - expected.max(1, keepdims=True)).sum(1, keepdims=True)) \
            - expected.max(1, keepdims=True)
        np.testing.assert_allclose(logp.numpy(), expected, atol=1e-4)


def _sequence_logp(decoder, feature, words, end_id):
    image, states = decoder.start(feature)
    token, total = decoder.start_id, 0.0
    for word in [*words, end_id]:
        logp, states = decoder.step(np.array([token], np.int32), states, image)
        total += float(logp.numpy()[0, word])
        token = word
    return total


def test_beam_search_finds_the_exhaustive_best_with_length_normalisation(tiny):
    vocab, _, decoder, features = tiny
    max_length = 4  # start + up to 2 words + end
    words = [4, 5, 6]
    for alpha in (0.0, 1.0):
        beams = beam_search(decoder, features, max_length, width=len(vocab), length_penalty=alpha)
        for i in range(len(features)):
            feature = features[[i]]
            candidates = [list(c) for n in range(0, 3) for c in itertools.product(words + [vocab.end_id], repeat=n)
                          if vocab.end_id not in c]
            scored = {tuple(c): _sequence_logp(decoder, feature, c, vocab.end_id) / (len(c) + 1) ** alpha
                      for c in candidates}
            finished = [(ids, score) for ids, score in beams[i] if len(ids) < max_length - 1]
            best = max(scored, key=scored.get)
            assert tuple(beams[i][0][0]) == best and beams[i][0][1] == pytest.approx(scored[best], abs=1e-4)
            scores = [s for _, s in beams[i]]
            assert scores == sorted(scores, reverse=True) and finished


def test_greedy_equals_beam_of_width_one_without_normalisation(tiny):
    vocab, _, decoder, features = tiny
    greedy = greedy_search(decoder, features, max_length=6)
    beams = beam_search(decoder, features, max_length=6, width=1, length_penalty=0.0)
    assert greedy == [b[0][0] for b in beams]
    assert all(vocab.start_id not in ids and 0 not in ids for ids in greedy)


def test_batches_give_the_same_captions_as_one_call(tiny):
    _, _, decoder, features = tiny
    assert greedy_search(decoder, features, 6, batch_size=4) == greedy_search(decoder, features, 6)
    split, whole = beam_search(decoder, features, 6, 3, 0.5, batch_size=4), beam_search(decoder, features, 6, 3, 0.5)
    assert [[ids for ids, _ in b] for b in split] == [[ids for ids, _ in b] for b in whole]
    assert np.allclose([[s for _, s in b] for b in split], [[s for _, s in b] for b in whole], atol=1e-5)


def _repeats(words: list, word: int, n: int) -> bool:
    """Whether `word` after `words` completes an n-gram that `words` already holds."""
    seq = [*words, word]
    return n > 0 and len(seq) >= n and any(seq[j:j + n] == seq[-n:] for j in range(len(seq) - n))


def _reference_beam(decoder, feature, max_length, k, alpha, end_id, no_repeat_ngram=0):
    """Plain beam search for one image, every word of the vocabulary considered at every step (except, with
    no_repeat_ngram, those that would repeat an n-gram)."""
    image, states = decoder.start(feature)
    beams = [([], 0.0, states, False)]  # words (end included), log-probability, states, done
    rank = lambda beam: beam[1] / len(beam[0]) ** alpha
    for t in range(max_length - 1):
        candidates = []
        for words, score, states, done in beams:
            if done:
                candidates.append((words, score, states, True))
                continue
            logp, new_states = decoder.step(np.array([words[-1] if words else decoder.start_id], np.int32),
                                            states, image)
            logp = logp.numpy()[0]
            for word in ([end_id] if t == max_length - 2 else range(len(logp))):
                if np.isfinite(logp[word]) and not (word != end_id and _repeats(words, word, no_repeat_ngram)):
                    candidates.append((words + [word], score + logp[word], new_states, word == end_id))
        beams = sorted(candidates, key=rank, reverse=True)[:k]
        if all(done for *_, done in beams):
            break
    return [([w for w in words if w != end_id], rank((words, score))) for words, score, _, _ in beams]


@pytest.mark.parametrize("width", [2, 3])
def test_pruned_beam_search_equals_a_full_vocabulary_beam(tiny, width):
    vocab, _, decoder, features = tiny
    beams = beam_search(decoder, features, 6, width, 0.5)
    for i, found in enumerate(beams):
        expected = _reference_beam(decoder, features[[i]], 6, width, 0.5, vocab.end_id)
        assert [ids for ids, _ in found] == [ids for ids, _ in expected]
        np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], atol=1e-4)


@pytest.fixture(scope="module")
def wide():
    """A merge decoder over 24 words with random weights, so that a hypothesis takes only some of the vocabulary
    as its candidates."""
    seed_everything(1)
    vocab = Vocabulary([f"w{i}" for i in range(24)])
    config = Config(encoder="pixels", embedding_size=8, units=16, dropout=0.0)
    model = build_decoder(config, len(vocab), feature_dim=5)
    for weights in model.weights:
        weights.assign(weights.numpy() * 4)
    return vocab, make_step_decoder(model, vocab), np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32)


@pytest.mark.parametrize("width, n", [(2, 2), (3, 2), (3, 3)])
def test_beam_search_blocking_repeats_equals_a_full_vocabulary_beam_that_skips_them(tiny, wide, width, n):
    for vocab, decoder, features in ((tiny[0], tiny[2], tiny[3]), wide):
        beams = beam_search(decoder, features, 10, width, 0.5, no_repeat_ngram=n)
        unblocked = beam_search(decoder, features, 10, width, 0.5)
        assert any(_has_repeat(ids, n) for found in unblocked for ids, _ in found)  # blocking has work to do
        for i, found in enumerate(beams):
            expected = _reference_beam(decoder, features[[i]], 10, width, 0.5, vocab.end_id, no_repeat_ngram=n)
            assert [ids for ids, _ in found] == [ids for ids, _ in expected]
            np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], atol=1e-4)
            assert not any(_has_repeat(ids, n) for ids, _ in found)


def _has_repeat(ids: list, n: int) -> bool:
    grams = [tuple(ids[j:j + n]) for j in range(len(ids) - n + 1)]
    return len(set(grams)) < len(grams)


@pytest.mark.parametrize("n", [2, 3])
def test_greedy_blocking_repeats_equals_a_blocking_beam_of_width_one(tiny, wide, n):
    for _, decoder, features in ((tiny[0], tiny[2], tiny[3]), wide):
        greedy = greedy_search(decoder, features, 12, no_repeat_ngram=n)
        assert greedy == [b[0][0] for b in beam_search(decoder, features, 12, 1, 0.0, no_repeat_ngram=n)]
        assert not any(_has_repeat(ids, n) for ids in greedy)
        assert greedy != greedy_search(decoder, features, 12)  # random weights repeat themselves unblocked


def test_a_beam_wider_than_the_vocabulary_is_the_vocabulary(tiny):
    vocab, _, decoder, features = tiny
    assert beam_search(decoder, features, 5, 50, 0.5) == beam_search(decoder, features, 5, len(vocab), 0.5)


def test_attention_weights_of_decoding_equal_teacher_forcing_and_images_are_projected_once(tiny):
    """Greedy and beam return, per caption, the attention the model computes for that caption under teacher
    forcing (a distribution over positions per word); captions that share an image through
    `owner` get what they get with a copy of the image each."""
    vocab, model, decoder, features = tiny
    if model.name == "merge_decoder":
        assert greedy_search(decoder, features, 6, with_attention=True)[1] == [None] * len(features)
        assert beam_search(decoder, features, 6, 2, 0.5, with_attention=True)[1] == [None] * len(features)
        return
    if model.name == "attention_decoder":
        attention_model = keras.Model(model.inputs, model.get_layer("attention_lstm").output[2])
    else:  # the last block's cross-attention, mean of heads, over the map cells (the pooled token is the last)
        attention_model = keras.Model(model.inputs, model.get_layer("transformer").output[1][:, :, :-1])
    greedy, greedy_maps = greedy_search(decoder, features, 6, with_attention=True)
    beams, beam_maps = beam_search(decoder, features, 6, 3, 0.5, with_attention=True)
    assert [len(m) for m in beam_maps] == [len(b) for b in beams] == [3] * len(features)
    checked = [(i, ids, weights) for i, (ids, weights) in enumerate(zip(greedy, greedy_maps))]
    checked += [(i, ids, weights) for i, (image_beams, maps) in enumerate(zip(beams, beam_maps))
                for (ids, _), weights in zip(image_beams, maps)]  # every caption of the beam, not only the best
    for i, ids, weights in checked:
        tokens = np.array([[vocab.start_id, *ids]], np.int32)
        expected = attention_model(_model_inputs(model, features[[i]], tokens), training=False).numpy()[0]
        assert weights.shape == (len(ids), 4)
        np.testing.assert_allclose(weights, expected[:len(ids)], atol=1e-5)
        if model.name == "attention_decoder":
            np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    tokens = np.array([[vocab.start_id, 4, 5], [vocab.start_id, 6, 4], [vocab.start_id, 5, 5]], np.int32)
    shared = model([features.maps[:2], features.features[:2], np.array([0, 1, 0], np.int32), tokens], training=False)
    copied = model([features.maps[[0, 1, 0]], features.features[[0, 1, 0]], np.arange(3, dtype=np.int32), tokens],
                   training=False)
    np.testing.assert_allclose(shared.numpy(), copied.numpy(), atol=1e-5)
