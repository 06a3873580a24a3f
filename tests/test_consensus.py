"""Consensus re-ranking: the neighbour index, its scores, its order, and the captioner that carries it."""
import numpy as np
import pytest

from captioning.config import Config, ConfigError
from captioning.data.text import Vocabulary
from captioning.decoding.bundle import BundleError
from captioning.decoding.captioner import Captioner
from captioning.decoding.consensus import Neighbours, order_by, query_features
from captioning.decoding.search import beam_search
from captioning.features.store import ImageInputs, MemberInputs
from captioning.models.attention import build_attention_decoder
from captioning.training.batches import seed_everything

# Four training images in two kinds: 0 and 1 (red circles) point one way, 2 and 3 (blue squares) the other.
FEATURES = np.array([[1.0, 0.1, 0.0], [2.0, 0.0, 0.3], [0.0, 1.0, 0.1], [0.1, 3.0, 0.0]], np.float32)
CAPTIONS = [["a red circle", "red circle on grass"], ["a red circle", "a red ball"],
            ["a blue square", "blue square on sand"], ["a blue square", "a blue box"]]


@pytest.fixture()
def index() -> Neighbours:
    return Neighbours(FEATURES, CAPTIONS)


def test_nearest_is_by_direction_not_length(index):
    queries = np.array([[10.0, 0.5, 0.0], [0.0, 0.2, 0.0]], np.float32)  # long and short vectors
    near = index.nearest(queries, 2)
    assert set(near[0]) == {0, 1} and set(near[1]) == {2, 3}
    assert index.nearest(queries, 99).shape == (2, 4)  # k above the index's size: all of it


def test_consensus_favours_what_the_neighbours_say_and_means_the_same_for_one_image(index):
    candidates = [["a red circle", "a blue square"], ["a red circle", "a blue square"]]
    queries = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    scores = index.consensus(candidates, queries, 2)
    assert scores[0][0] > scores[0][1] and scores[1][1] > scores[1][0]
    # Document frequencies are the training split's: a photo captioned alone scores as it does among others.
    alone = index.consensus(candidates[1:], queries[1:], 2)
    np.testing.assert_allclose(alone[0], scores[1])


def test_order_by_mixes_consensus_and_beam_score():
    alternatives = [[("first", -0.1), ("second", -0.5)]]
    consensus = [np.array([0.0, 1.0])]
    assert [c for c, _ in order_by(alternatives, consensus, 0.0)[0][0]] == ["first", "second"]  # the beam's order
    ranked, orders = order_by(alternatives, consensus, 1.0)
    assert [c for c, _ in ranked[0]] == ["second", "first"] and list(orders[0]) == [1, 0]
    ranked, _ = order_by(alternatives, consensus, 0.5)
    assert ranked[0][0] == ("second", pytest.approx(0.5 * 1.0 + 0.5 * -0.5))


def test_the_index_saves_and_loads(index, tmp_path):
    assert Neighbours.load(tmp_path) is None
    index.save(tmp_path)
    loaded = Neighbours.load(tmp_path)
    assert loaded.captions == CAPTIONS and loaded.features.dtype == np.float16
    np.testing.assert_array_equal(loaded.features, index.features)
    # The first indices held the captions as an array of strings; they load the same.
    np.savez(tmp_path / "neighbours.npz", features=index.features, caption_counts=[2, 2, 2, 2],
             captions=np.array([c for refs in CAPTIONS for c in refs], dtype=np.str_))
    assert Neighbours.load(tmp_path).captions == CAPTIONS


def test_bad_indices_and_queries_are_clear_errors(index):
    with pytest.raises(ValueError, match="one caption list per image"):
        Neighbours(FEATURES, CAPTIONS[:3])
    with pytest.raises(ValueError, match="built for another encoder setting"):
        index.consensus([["a red circle"]], np.ones((1, 5), np.float32), 2)


def test_query_features_are_the_first_groups_vectors():
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    inputs = ImageInputs(vectors, np.zeros((2, 4, 2), np.float32))
    for given in (vectors, inputs, MemberInputs([inputs, vectors + 1])):
        np.testing.assert_array_equal(query_features(given), vectors)


@pytest.mark.parametrize("changes, message", [({"rerank_neighbours": -1}, "'rerank_neighbours' must be 0"),
                                              ({"rerank_weight": 1.5}, "'rerank_weight' must be in [0, 1]")])
def test_bad_rerank_settings_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Config().replace(**changes)


def test_a_captioner_reranks_its_beam_and_keeps_the_chosen_captions_attention(tmp_path):
    vocab = Vocabulary(["red", "blue", "circle", "square"])
    seed_everything(3)
    config = Config(encoder="pixels", embedding_size=8, units=16, attention_units=6, dropout=0.0,
                    decoder="attention", beam_width=4, max_length=6, no_repeat_ngram=2)
    model = build_attention_decoder(config, len(vocab), feature_dim=3, positions=4, channels=2)
    for weights in model.weights:
        weights.assign(weights.numpy() * 3)
    rng = np.random.default_rng(0)
    inputs = ImageInputs(rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 4, 2)).astype(np.float32))
    plain = Captioner(config, vocab, model)
    beams = plain.decode_features(inputs)
    # Training captions that say the beam's last caption of each image: with the consensus alone it comes first.
    index = Neighbours(inputs.features, [[options[-1][0]] * 2 for options in beams])
    reranking = Captioner(config.replace(rerank_neighbours=1, rerank_weight=1.0), vocab, model, neighbours=index)
    reranking.save(tmp_path)
    loaded = Captioner.load(tmp_path)
    assert loaded.neighbours is not None and (tmp_path / "neighbours.npz").is_file()
    captions, attention = loaded.decode_features(inputs, with_attention=True)
    assert [c[0][0] for c in captions] == [options[-1][0] for options in beams]
    _, every = beam_search(plain.decoder, inputs, config.max_length, 4, config.length_penalty, with_attention=True,
                           no_repeat_ngram=2)
    for image, weights in enumerate(attention):  # the attention of the caption shown, not of the beam's best
        np.testing.assert_array_equal(weights, every[image][len(beams[image]) - 1])
    # Greedy decoding has one caption: nothing to re-rank. Saving without the index removes a stale one.
    assert [c[0][0] for c in loaded.decode_features(inputs, 1)] == [c[0][0] for c in plain.decode_features(inputs, 1)]
    Captioner(config, vocab, model).save(tmp_path)
    assert not (tmp_path / "neighbours.npz").exists()
    with pytest.raises(ValueError, match="has no neighbour index"):
        Captioner(reranking.config, vocab, model).decode_features(inputs)
    with pytest.raises(ValueError, match="no neighbour index to save"):
        Captioner(reranking.config, vocab, model).save(tmp_path / "other")

    # A bundle that re-ranks without its index, or with a damaged one, is a BundleError naming the fix.
    reranking.save(tmp_path)
    (tmp_path / "neighbours.npz").unlink()
    with pytest.raises(BundleError, match="has no neighbours.npz; rebuild it with python -m captioning rerank"):
        Captioner.load(tmp_path)
    (tmp_path / "neighbours.npz").write_bytes(b"not an index")
    with pytest.raises(BundleError, match="cannot read .*neighbours.npz"):
        Captioner.load(tmp_path)
    np.savez(tmp_path / "neighbours.npz", features=index.features, caption_counts=[2] * 5,
             captions=np.frombuffer("a\nb".encode(), np.uint8))
    with pytest.raises(BundleError, match="lists 10 captions by image but holds 2"):
        Captioner.load(tmp_path)
