"""Ensembles: several decoders' mean next-word distribution, decoded, saved and loaded as one captioner."""
import numpy as np
import pytest

from captioning.config import Config
from captioning.data.text import Vocabulary
from captioning.decoding.captioner import Captioner
from captioning.features.store import ImageInputs, MemberInputs
from captioning.models.attention import build_attention_decoder
from captioning.models.ensemble import EnsembleError
from captioning.models.merge import build_decoder
from captioning.training.batches import seed_everything

VOCAB = Vocabulary(["red", "blue", "circle", "square"])
_rng = np.random.default_rng(0)
INPUTS = ImageInputs(_rng.normal(size=(6, 5)).astype(np.float32), _rng.normal(size=(6, 4, 3)).astype(np.float32))


def _captioner(decoder: str, seed: int, vocab: Vocabulary = VOCAB, **changes) -> Captioner:
    seed_everything(seed)
    config = Config(encoder="pixels", embedding_size=8, units=16, attention_units=6, dropout=0.0, decoder=decoder,
                    **changes)
    if decoder == "merge":
        model = build_decoder(config, len(vocab), feature_dim=5)
    else:
        model = build_attention_decoder(config, len(vocab), feature_dim=5, positions=4, channels=3)
    for weights in model.weights:  # larger random weights: distributions far from uniform, members far apart
        weights.assign(weights.numpy() * 3)
    return Captioner(config, vocab, model)


def _probabilities(decoder, inputs, tokens, steps: int = 1):
    """The next-word distributions after feeding `tokens`, then (steps > 1) "red" at each further step."""
    context, states = decoder.start(inputs)
    distributions = []
    for step in range(steps):
        logp, states = decoder.step(tokens if step == 0 else np.full(len(tokens), VOCAB.index["red"], np.int32),
                                    states, context)
        distributions.append(np.exp(logp.numpy()))
    return distributions[0] if steps == 1 else np.stack(distributions)


def test_the_ensemble_predicts_the_mean_of_its_members_distributions():
    merge, attention = _captioner("merge", 1), _captioner("attention", 2)
    ensemble = Captioner.ensemble([merge, attention])
    tokens = np.full(len(INPUTS), VOCAB.start_id, np.int32)
    expected = (_probabilities(merge.decoder, INPUTS.features, tokens)
                + _probabilities(attention.decoder, INPUTS, tokens)) / 2
    np.testing.assert_allclose(_probabilities(ensemble.decoder, INPUTS, tokens), expected, atol=1e-5)
    assert ensemble.config.decoder == "attention" and ensemble.has_attention  # it reads the maps


def test_a_two_layer_merge_model_first_and_an_attention_model_decode_together():
    merge, attention = _captioner("merge", 9, lstm_layers=2), _captioner("attention", 10)
    ensemble = Captioner.ensemble([merge, attention])
    assert ensemble.config.decoder == "attention" and len(ensemble.decode_features(INPUTS, 3)) == len(INPUTS)
    assert ensemble.model is merge.model and ensemble.members == [attention.model]  # the members themselves
    # Each member's states (two layers' for the merge one) go on to its next step: the mean, step after step.
    tokens = np.full(len(INPUTS), VOCAB.start_id, np.int32)
    expected = (_probabilities(merge.decoder, INPUTS.features, tokens, steps=3)
                + _probabilities(attention.decoder, INPUTS, tokens, steps=3)) / 2
    np.testing.assert_allclose(_probabilities(ensemble.decoder, INPUTS, tokens, steps=3), expected, atol=1e-5)


def test_a_model_ensembled_with_itself_captions_as_the_model():
    single = _captioner("attention", 3)
    twice = Captioner.ensemble([single, single])
    for width in (1, 3):
        assert [c[0][0] for c in twice.decode_features(INPUTS, width)] == \
            [c[0][0] for c in single.decode_features(INPUTS, width)]


def test_a_saved_ensemble_loads_and_captions_the_same(tmp_path):
    ensemble = Captioner.ensemble([_captioner("attention", 4), _captioner("merge", 5), _captioner("attention", 6)])
    ensemble.save(tmp_path / "bundle")
    assert sorted(p.name for p in (tmp_path / "bundle").glob("decoder*.keras")) == \
        ["decoder-1.keras", "decoder-2.keras", "decoder.keras"]
    loaded = Captioner.load(tmp_path / "bundle")
    assert len(loaded.members) == 2
    captions, maps = loaded.decode_features(INPUTS, 3, with_attention=True)
    expected = ensemble.decode_features(INPUTS, 3)
    assert [[text for text, _ in c] for c in captions] == [[text for text, _ in c] for c in expected]
    np.testing.assert_allclose([s for c in captions for _, s in c], [s for c in expected for _, s in c], rtol=1e-5)
    assert all(m.shape == (len(c[0][0].split()), 4) for c, m in zip(captions, maps) if c[0][0])


@pytest.mark.parametrize("other, message", [
    (lambda: _captioner("merge", 7, Vocabulary(["red", "circle"])), "another vocabulary"),
    (lambda: _captioner("merge", 7, max_length=12), "max_length"),
])
def test_members_that_cannot_be_decoded_together_are_refused(other, message):
    with pytest.raises(EnsembleError, match=message):
        Captioner.ensemble([_captioner("merge", 8), other()])


def test_attention_members_must_share_one_map_grid():
    with pytest.raises(EnsembleError, match="maps of different grids"):
        Captioner.ensemble([_captioner("attention", 11), _captioner("attention", 12, image_size=64)])
    merge, attention = _captioner("merge", 11), _captioner("attention", 12, image_size=64)
    ensemble = Captioner.ensemble([merge, attention])  # a merge one may differ: each reads its own features
    assert ensemble.models == [merge.model, attention.model]
    assert ensemble.decoder_configs[1] == attention.config  # (the first: the ensemble's, reading the maps)
    assert [c.image_size for c in ensemble.feature_groups] == [merge.config.image_size, 64]
    maps = ImageInputs(_rng.normal(size=(6, 5)).astype(np.float32), _rng.normal(size=(6, 4, 3)).astype(np.float32))
    tokens = np.full(len(INPUTS), VOCAB.start_id, np.int32)
    expected = (_probabilities(merge.decoder, INPUTS.features, tokens)
                + _probabilities(attention.decoder, maps, tokens)) / 2
    np.testing.assert_allclose(_probabilities(ensemble.decoder, MemberInputs([INPUTS.features, maps]), tokens),
                               expected, atol=1e-5)


def test_members_reading_other_features_each_read_their_own_part(tmp_path):
    # One trained on flip-averaged features, one on plain ones: two parts, each member's distribution from its own.
    flipped, plain = _captioner("attention", 13, feature_flip=True), _captioner("merge", 14)
    ensemble = Captioner.ensemble([flipped, plain])
    assert [c.feature_flip for c in ensemble.feature_groups] == [True, False]
    assert [c.decoder for c in ensemble.feature_groups] == ["attention", "merge"]
    other = ImageInputs(_rng.normal(size=(6, 5)).astype(np.float32), _rng.normal(size=(6, 4, 3)).astype(np.float32))
    inputs = MemberInputs([INPUTS, other.features])
    tokens = np.full(len(INPUTS), VOCAB.start_id, np.int32)
    expected = (_probabilities(flipped.decoder, INPUTS, tokens)
                + _probabilities(plain.decoder, other.features, tokens)) / 2
    np.testing.assert_allclose(_probabilities(ensemble.decoder, inputs, tokens), expected, atol=1e-5)
    # Saved and loaded: each member keeps the config that names its features, and captions the same.
    ensemble.save(tmp_path / "bundle")
    loaded = Captioner.load(tmp_path / "bundle")
    assert [c.feature_flip for c in loaded.decoder_configs] == [True, False]
    for width in (1, 3):
        assert [c[0][0] for c in loaded.decode_features(inputs, width)] == \
            [c[0][0] for c in ensemble.decode_features(inputs, width)]
    assert len(loaded.decode_features(inputs[2:5], 3)) == 3  # sliced as the decoders batch it
    with pytest.raises(ValueError, match="members read different features"):  # not one part for all of them
        loaded.decode_features(INPUTS, 1)


def test_a_bundle_saved_before_member_configs_reads_one_feature_setting(tmp_path):
    ensemble = Captioner.ensemble([_captioner("attention", 15), _captioner("merge", 16)])
    ensemble.save(tmp_path / "bundle")
    (tmp_path / "bundle" / "config-1.json").unlink()  # as bundles were written before members had their own
    loaded = Captioner.load(tmp_path / "bundle")
    assert loaded.member_configs == [loaded.config] and len(loaded.feature_groups) == 1
    assert [c[0][0] for c in loaded.decode_features(INPUTS, 3)] == \
        [c[0][0] for c in ensemble.decode_features(INPUTS, 3)]
