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
