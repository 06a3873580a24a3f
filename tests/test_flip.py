"""Mirrored-image features: cached apart, aligned with the plain ones, averaged or used as augmentation, and the
captioner sees at captioning time what the decoder was trained on."""
import numpy as np
import pytest

from captioning.config import Config
from captioning.features.encoders import feature_key, make_encoder
from captioning.features.prepare import load_and_report, prepare
from captioning.training.batches import CaptionBatches
from captioning.training.run import train_and_evaluate


def _asymmetric_image() -> np.ndarray:
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :8, 0] = 255  # red on the left only
    image[4:12, 20:, 2] = 200  # blue at the top right
    return image


def test_mirrored_features_are_mirrored_back_into_the_plain_layout():
    config = Config(encoder="pixels", image_size=32, feature_grid=4)
    image = _asymmetric_image()
    plain = make_encoder(config).encode([image])
    mirrored = make_encoder(config, mirrored=True).encode([image])
    # Average pooling commutes with the mirror: once the cells are put back, the features are the plain ones.
    np.testing.assert_allclose(mirrored, plain, atol=1e-6)
    # ... which they would not be without putting the cells back.
    flipped = make_encoder(config).encode([image[:, ::-1]])
    assert not np.allclose(flipped, plain, atol=1e-3)
    assert make_encoder(config, mirrored=True).key != make_encoder(config).key


def test_average_and_augment_modes(shapes_dir):
    dataset = load_and_report(shapes_dir, log=lambda line: None)
    config = Config(encoder="pixels", image_size=32, feature_grid=2)
    plain = prepare(config, dataset, progress=False)
    average = prepare(config.replace(feature_flip=True), dataset, progress=False)
    augment = prepare(config.replace(feature_flip=True, flip_mode="augment"), dataset, progress=False)
    mirrored = prepare(config, dataset, progress=False)  # the mirrored encoder's cache, read back through prepare
    from captioning.features.store import extract_features

    names = dataset.split("train")
    mirrored_train, stats = extract_features(names, dataset.images, dataset.info,
                                             make_encoder(config, mirrored=True), progress=False)
    assert stats.cache_hits == len(names)  # extracted once, by the flip settings above
    np.testing.assert_allclose(average.features["train"], (plain.features["train"] + mirrored_train) / 2, atol=1e-6)
    assert average.mirrored is None and np.array_equal(augment.features["train"], mirrored.features["train"])
    np.testing.assert_array_equal(augment.mirrored["train"], mirrored_train)
    assert len({feature_key(config), feature_key(config.replace(feature_flip=True)),
                feature_key(config.replace(feature_flip=True, flip_mode="augment"))}) == 3


def test_augmentation_draws_either_image_per_caption_anew_every_epoch():
    features, mirrored = np.zeros((6, 2), np.float32), np.ones((6, 2), np.float32)
    captions = [[[2, 5, 3], [2, 6, 6, 3]] for _ in range(6)]
    batches = CaptionBatches(features, captions, batch_size=4, shuffle=True, seed=0, mirrored=mirrored)
    first = np.concatenate([batches[i][0][0][:, 0] for i in range(len(batches))])
    batches.on_epoch_end()
    second = np.concatenate([batches[i][0][0][:, 0] for i in range(len(batches))])
    assert set(first) == {0.0, 1.0} and set(second) == {0.0, 1.0}  # both images are used, 12 captions an epoch
    again = CaptionBatches(features, captions, batch_size=4, shuffle=True, seed=0, mirrored=mirrored)
    assert np.array_equal(first, np.concatenate([again[i][0][0][:, 0] for i in range(len(again))]))  # seeded


def test_captioning_an_image_uses_the_features_it_was_trained_on(shapes_dir):
    # (Averaged: the captioner must encode the photo twice; with augment it captions the plain image's features.)
    config = Config(encoder="pixels", image_size=32, feature_grid=2, vocab_min_count=1, max_length=16,
                    embedding_size=16, units=32, epochs=1, feature_flip=True, flip_mode="average")
    prepared = prepare(config, load_and_report(shapes_dir, log=lambda line: None), progress=False)
    result = train_and_evaluate(config, prepared, eval_splits=(), verbose=False)
    name = prepared.dataset.split("test")[0]
    expected = result.captioner.decode_features(prepared.features["test"][:1], 1)[0][0][0]
    assert result.captioner.caption(prepared.dataset.images[name], beam_width=1) == expected
    features = result.captioner.encoder.encode([_asymmetric_image()])
    assert features.shape[1] == prepared.features["test"].shape[1]


def test_an_ensemble_of_flipped_and_plain_members_captions_images_as_it_scores_them(shapes_dir, tmp_path):
    # Each member reads the features it was trained on, from the feature cache and from an image alike.
    from captioning.decoding.captioner import Captioner
    from captioning.evaluation.choices import choose_length_penalty
    from captioning.evaluation.evaluate import evaluate
    from captioning.features.prepare import FeatureCache

    config = Config(encoder="pixels", image_size=32, feature_grid=2, vocab_min_count=1, max_length=16,
                    embedding_size=16, units=32, epochs=1)
    features = FeatureCache(load_and_report(shapes_dir, log=lambda line: None), progress=False)
    members = [train_and_evaluate(c, features(c), eval_splits=(), verbose=False).captioner
               for c in (config.replace(feature_flip=True), config.replace(decoder="attention", seed=1))]
    ensemble = Captioner.ensemble(members)
    assert [c.decoder for c in ensemble.feature_groups] == ["merge", "attention"]  # only the second reads maps
    tried = choose_length_penalty(ensemble, features, "bleu4")  # the member's own (0.5) first, then 1 and 1.5
    assert list(tried) == [0.5, 1.0, 1.5] and all(ev.split == "dev" and ev.beam_width == 3 for ev in tried.values())
    assert ensemble.config.length_penalty == max(tried, key=lambda penalty: tried[penalty].scores["bleu4"])
    scored = evaluate(ensemble, features, "test", 3)
    names = features.dataset.split("test")[:4]
    assert ensemble.caption([features.dataset.images[n] for n in names]) == [scored.captions[n] for n in names]
    ensemble.save(tmp_path / "both")
    assert evaluate(Captioner.load(tmp_path / "both"), features, "test", 3).captions == scored.captions
    with pytest.raises(ValueError, match="pass a FeatureCache"):
        evaluate(ensemble, features(config), "test", 3)
