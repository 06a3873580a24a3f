import itertools

import numpy as np
import pytest

from captioning.config import Config
from captioning.decode import beam_search, greedy_search
from captioning.model import StepDecoder, build_decoder
from captioning.text import Vocabulary
from captioning.train import seed_everything


@pytest.fixture(scope="module")
def tiny():
    seed_everything(0)
    vocab = Vocabulary(["red", "blue", "circle"])
    config = Config(encoder="pixels", embedding_size=8, units=16, lstm_layers=2, dropout=0.0)
    model = build_decoder(config, len(vocab), feature_dim=5)
    for weights in model.weights:  # larger random weights, so that the distributions are far from uniform
        weights.assign(weights.numpy() * 3)
    features = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    return vocab, model, StepDecoder(model, vocab), features


def test_stepping_with_carried_state_equals_teacher_forcing(tiny):
    vocab, model, decoder, features = tiny
    tokens = np.array([[vocab.start_id, 4, 5, 6, 4]] * len(features), np.int32)
    full = model([features, tokens], training=False).numpy()
    banned = decoder.banned.numpy()
    states, image = decoder.initial_states(len(features)), decoder.image_vectors(features)
    for t in range(tokens.shape[1]):
        logp, states = decoder.step(tokens[:, t], states, image)
        expected = full[:, t] + banned
        expected = expected - np.log(np.exp(expected - expected.max(1, keepdims=True)).sum(1, keepdims=True)) \
            - expected.max(1, keepdims=True)
        np.testing.assert_allclose(logp.numpy(), expected, atol=1e-4)


def _sequence_logp(decoder, feature, words, end_id):
    states, image = decoder.initial_states(1), decoder.image_vectors(feature[None])
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
        for i, feature in enumerate(features):
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


def _reference_beam(decoder, feature, max_length, k, alpha, end_id):
    """Plain beam search for one image, every word of the vocabulary considered at every step."""
    image = decoder.image_vectors(feature[None])
    beams = [([], 0.0, decoder.initial_states(1), False)]  # words (end included), log-probability, states, done
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
                if np.isfinite(logp[word]):
                    candidates.append((words + [word], score + logp[word], new_states, word == end_id))
        beams = sorted(candidates, key=rank, reverse=True)[:k]
        if all(done for *_, done in beams):
            break
    return [([w for w in words if w != end_id], rank((words, score))) for words, score, _, _ in beams]


@pytest.mark.parametrize("width", [2, 3])
def test_pruned_beam_search_equals_a_full_vocabulary_beam(tiny, width):
    vocab, _, decoder, features = tiny
    beams = beam_search(decoder, features, 6, width, 0.5)
    for feature, found in zip(features, beams):
        expected = _reference_beam(decoder, feature, 6, width, 0.5, vocab.end_id)
        assert [ids for ids, _ in found] == [ids for ids, _ in expected]
        np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], atol=1e-4)


def test_a_beam_wider_than_the_vocabulary_is_the_vocabulary(tiny):
    vocab, _, decoder, features = tiny
    assert beam_search(decoder, features, 5, 50, 0.5) == beam_search(decoder, features, 5, len(vocab), 0.5)
