import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from captioning.config import Config
from captioning.data import load_dataset
from captioning.encoders import _grid_pool, make_encoder
from captioning.features import extract_features
from captioning.images import load_rgb


def _extract(dataset, config):
    names = sorted(dataset.images)
    return names, extract_features(names, dataset.images, dataset.info, make_encoder(config), progress=False)


def test_cache_second_run_extracts_nothing_and_changed_image_is_redone(tmp_path, shapes_dir):
    root = shutil.copytree(shapes_dir, tmp_path / "data")
    config = Config(encoder="pixels", image_size=16, feature_grid=2)
    names, (first, stats) = _extract(load_dataset(root), config)
    assert stats.extracted == len(names) and stats.cache_hits == 0 and first.shape == (len(names), 12)
    _, (again, stats) = _extract(load_dataset(root), config)
    assert stats.extracted == 0 and stats.cache_hits == len(names) and np.array_equal(first, again)
    Image.new("RGB", (64, 64), "white").save(root / "Images" / names[0])
    _, (changed, stats) = _extract(load_dataset(root), config)
    assert stats.extracted == 1 and np.allclose(changed[0], 1.0) and np.array_equal(changed[1:], first[1:])
    # Another input size is another cache key: nothing is reused by mistake.
    _, (_, stats) = _extract(load_dataset(root), config.replace(image_size=8))
    assert stats.extracted == len(names)


def test_pipeline_and_captioning_path_see_the_same_pixels(tmp_path):
    """Files TensorFlow decodes and files PIL converts (CMYK, RGBA, palette) give the features load_rgb gives."""
    root = tmp_path / "mixed"
    (root / "Images").mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "Images" / "rgb.png")
    Image.fromarray(pixels).save(root / "Images" / "rgb.jpg", quality=80)
    Image.fromarray(pixels).convert("L").save(root / "Images" / "gray.jpg")
    Image.fromarray(pixels).convert("CMYK").save(root / "Images" / "cmyk.jpg")
    rgba = np.dstack([pixels, np.full((40, 50), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "Images" / "rgba.png")
    names = ["cmyk.jpg", "gray.jpg", "rgb.jpg", "rgb.png", "rgba.png"]
    (root / "captions.txt").write_text("image,caption\n" + "".join(f"{n},a picture\n" for n in names))
    with pytest.warns(UserWarning):
        dataset = load_dataset(root)
    config = Config(encoder="pixels", image_size=16, feature_grid=4)
    _, (features, _) = _extract(dataset, config)
    direct = make_encoder(config).encode([load_rgb(root / "Images" / n) for n in names])
    np.testing.assert_allclose(features, direct, atol=1e-4)


def test_xception_weights_are_real_imagenet_weights():
    from captioning.weights import XCEPTION_SHA256, arrays_sha256, xception_weights

    arrays = xception_weights()
    assert len(arrays) == 234 and arrays_sha256(arrays) == XCEPTION_SHA256


def test_damaged_weights_cache_is_rebuilt_not_used(tmp_path, monkeypatch):
    from captioning.weights import XCEPTION_SHA256, arrays_sha256, xception_weights

    monkeypatch.setenv("CAPTIONING_CACHE", str(tmp_path))
    arrays = xception_weights()  # fills tmp_path/weights from the offline source
    cached = tmp_path / "weights" / "xception_imagenet_notop.npz"
    np.savez(cached, **{f"w{i:03d}": a * 0 for i, a in enumerate(arrays)})  # wrong values, right shapes
    with pytest.warns(UserWarning, match="damaged weights cache"):
        assert arrays_sha256(xception_weights()) == XCEPTION_SHA256


def test_xception_features_are_not_random(shapes_dir):
    """Two crops of one scene are closer than two different scenes (random weights would not do this reliably)."""
    encoder = make_encoder(Config(image_size=96, feature_grid=1))
    scenes = [load_rgb(shapes_dir / "Images" / f"scene_{i:05d}.jpg") for i in range(6)]
    crops = [s[4:124, 4:124] for s in scenes] + [s[8:120, 0:112] for s in scenes]
    features = encoder.encode(crops)
    assert features.shape == (12, 2048) and np.isfinite(features).all()
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    same = np.array([similarity[i, i + 6] for i in range(6)])
    different = np.array([similarity[i, j] for i in range(6) for j in range(6) if i != j])
    assert same.min() > np.median(different) and same.mean() > different.mean() + 0.05


def test_grid_pooling_keeps_where_things_are():
    """A g x g grid of averages puts what is in a corner of the feature map into that corner's cell."""
    maps = np.zeros((1, 4, 4, 3), np.float32)
    maps[0, :2, :2, 0] = 1.0  # top left
    maps[0, 2:, 2:, 1] = 1.0  # bottom right
    maps[0, :, :, 2] = 1.0  # everywhere
    cells = _grid_pool(tf.constant(maps), 2).numpy().reshape(2, 2, 3)  # row-major cells
    np.testing.assert_allclose(cells[..., 0], [[1, 0], [0, 0]], atol=1e-6)
    np.testing.assert_allclose(cells[..., 1], [[0, 0], [0, 1]], atol=1e-6)
    np.testing.assert_allclose(cells[..., 2], np.ones((2, 2)), atol=1e-6)
    np.testing.assert_allclose(_grid_pool(tf.constant(maps), 1).numpy(), [[0.25, 0.25, 1.0]], atol=1e-6)


def test_grid_features_average_to_the_globally_pooled_vector():
    """At 128 px Xception's map is 4 x 4, so the mean of the 2 x 2 grid cells is exactly global average pooling."""
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    grid = make_encoder(Config(image_size=128, feature_grid=2)).encode([image])
    pooled = make_encoder(Config(image_size=128, feature_grid=1)).encode([image])
    assert grid.shape == (1, 4 * 2048) and pooled.shape == (1, 2048)
    np.testing.assert_allclose(grid.reshape(4, 2048).mean(axis=0), pooled[0], rtol=1e-4, atol=1e-5)
    assert np.linalg.norm(grid.reshape(4, 2048).std(axis=0)) > 0.1 * np.linalg.norm(pooled)  # the cells differ


def _halves(left, right, size=(72, 72)) -> np.ndarray:
    """An image whose left half is one RGB colour and right half another."""
    image = np.zeros((*size, 3), np.uint8)
    image[:, : size[1] // 2], image[:, size[1] // 2:] = left, right
    return image


def _colour_cells(encoder, images) -> np.ndarray:
    """The colour part of the features, as (images, g, g, bins)."""
    from captioning.encoders import COLOUR_BINS

    g = encoder.colour_grid
    return encoder.encode(images)[:, encoder.base_dim:].reshape(len(images), g, g, COLOUR_BINS ** 3)


def test_colour_grid_tells_red_from_blue_where_they_are():
    """Xception's colour part: a red and a blue image differ; in a red|blue image the left cells are the red ones."""
    from captioning.encoders import COLOUR_SCALE

    encoder = make_encoder(Config(image_size=72, feature_grid=1, colour_grid=2))
    red, blue = (220, 40, 40), (40, 80, 220)
    cells = _colour_cells(encoder, [_halves(red, red), _halves(blue, blue), _halves(red, blue)])
    np.testing.assert_allclose(cells.sum(axis=-1), COLOUR_SCALE, rtol=1e-4)  # each cell: shares of its pixels
    red_cells, blue_cells, halves = cells[0].reshape(4, -1), cells[1].reshape(4, -1), cells[2]
    np.testing.assert_allclose(red_cells, red_cells[[0]].repeat(4, 0), atol=1e-5)  # a plain image: equal cells
    unit = lambda v: v / np.linalg.norm(v)
    assert unit(red_cells[0]) @ unit(blue_cells[0]) < 0.05  # different bins, not just other amounts
    for row in range(2):
        np.testing.assert_allclose(halves[row, 0], red_cells[0], atol=1e-4)
        np.testing.assert_allclose(halves[row, 1], blue_cells[0], atol=1e-4)


def test_colour_grid_is_in_key_and_dim_only_when_on():
    import hashlib

    from captioning.encoders import COLOUR_BINS, PREPROCESSING

    plain = make_encoder(Config(encoder="pixels", image_size=16, feature_grid=2))
    text = f"pixels|none|16|2|{PREPROCESSING}"  # the key caches had before colour_grid existed
    assert plain.key == "pixels-16px-g2-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    keys = {plain.key}
    for g in (1, 2, 3):
        config = Config(encoder="pixels", image_size=16, feature_grid=2, colour_grid=g)
        encoder = make_encoder(config)
        assert encoder.dim == 2 * 2 * 3 + g * g * COLOUR_BINS ** 3
        assert encoder.encode([_halves((250, 0, 0), (0, 0, 250))]).shape == (1, encoder.dim)
        keys |= {encoder.key, make_encoder(config, mirrored=True).key}
    assert len(keys) == 7  # off, and three grids each plain and mirrored


@pytest.mark.parametrize("encoder_name", ["pixels", "xception"])
def test_mirrored_colour_grid_is_mirrored_back(encoder_name):
    """The mirrored image's colour cells, mirrored back, are the plain image's (and without that they would not be)."""
    config = Config(encoder=encoder_name, image_size=72, feature_grid=2, colour_grid=2)
    image = _halves((220, 40, 40), (40, 170, 60))
    plain = _colour_cells(make_encoder(config), [image])
    mirrored = _colour_cells(make_encoder(config, mirrored=True), [image])
    np.testing.assert_allclose(mirrored, plain, atol=1e-4)
    assert not np.allclose(plain[:, :, 0], plain[:, :, 1], atol=1e-2)  # left and right cells do differ


@pytest.mark.parametrize("encoder_name", ["pixels", "xception"])
def test_colour_features_at_captioning_time_equal_extracted_ones(tmp_path, shapes_dir, encoder_name):
    """The cache (file pipeline, extract_features) and Encoder.encode (captioning) give the same colour features."""
    root = tmp_path / "few"
    (root / "Images").mkdir(parents=True)
    names = sorted(p.name for p in (shapes_dir / "Images").iterdir())[:4]
    for name in names:
        shutil.copy(shapes_dir / "Images" / name, root / "Images" / name)
    (root / "captions.txt").write_text("image,caption\n" + "".join(f"{n},a picture\n" for n in names))
    dataset = load_dataset(root)
    for mirrored in (False, True):
        encoder = make_encoder(Config(encoder=encoder_name, image_size=96, feature_grid=2, colour_grid=3), mirrored)
        extracted, _ = extract_features(names, dataset.images, dataset.info, encoder, progress=False)
        direct = encoder.encode([load_rgb(root / "Images" / n) for n in names])
        assert extracted.shape == direct.shape == (4, encoder.dim)
        np.testing.assert_allclose(extracted, direct, rtol=1e-4, atol=1e-4)
