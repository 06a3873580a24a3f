"""The OpenVINO encoder runtime: its maps against TensorFlow's, its cache keys (TensorFlow's unchanged), the IR
cached once per setting, and bf16 only where the CPU has it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioning.config import Config, ConfigError, load_config
from captioning.core.locks import FileLock
from captioning.data.images import load_rgb
from captioning.data.synthetic import make_scene
from captioning.features import encoders
from captioning.features.encoders import feature_key, make_encoder
from captioning.features.openvino_runtime import compiled_ir, converted_ir, ir_key, native_bf16
from captioning.features.weights import xception_weights

SIZE = 71  # Xception's smallest input: a 3 x 3 map, converted and run in seconds
TENSORFLOW = Config(image_size=SIZE)
OPENVINO = TENSORFLOW.replace(encoder_runtime="openvino")
BF16 = OPENVINO.replace(inference_precision="bf16")
NATIVE_BF16 = native_bf16()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache root of this module's own (the IR is converted in it once), with the session's verified weights."""
    xception_weights()  # resolved into the session's cache first, then shared
    root = tmp_path_factory.mktemp("openvino-cache")
    os.symlink(Path(os.environ["CAPTIONING_CACHE"]) / "weights", root / "weights")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPTIONING_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Six generated scenes of different sizes and aspect ratios."""
    scenes = [np.asarray(make_scene(index, seed=3)[0].convert("RGB")) for index in range(6)]
    return [scene[: 80 + 17 * i, : 120 - 9 * i] for i, scene in enumerate(scenes)]


_built: dict[tuple, encoders.Encoder] = {}


def _maps(config: Config, images: list[np.ndarray], mirrored: bool = False) -> np.ndarray:
    """float32 maps of the images as the encoder computes them (before the cache's float16 rounding)."""
    setting = (config.encoder_runtime, config.inference_precision, mirrored)
    encoder = _built.setdefault(setting, make_encoder(config, mirrored))  # each network built once in this module
    batch = np.stack([np.asarray(encoder.preprocess(image)) for image in images])
    return np.asarray(encoder.encode_maps(batch))


def test_tensorflow_cache_keys_are_the_keys_of_existing_caches(monkeypatch):
    """The keys of TensorFlow features are those made before the runtime could be chosen (with the pinned library
    versions), so that no existing cache is extracted again."""
    pinned = {"PIL": "PIL-13.0.0", "tensorflow": "tensorflow-2.21.0", "keras": "keras-3.15.1"}
    monkeypatch.setattr(encoders, "library_versions", lambda modules: "|".join(pinned[m] for m in modules))
    keys = lambda config, mirrored=False: (lambda e: (e.key, e.map_key, e.colour_key))(make_encoder(config, mirrored))
    assert keys(Config()) == ("xception-299px-g1-5c2001c1c1c9", "xception-299px-129a68ffa449",
                              "colour-299px-c0-614983dcd35d")
    assert keys(Config(), mirrored=True) == ("xception-299px-g1-mirrored-923e7bf10d75",
                                             "xception-299px-mirrored-be63e00f5bc1", "colour-299px-c0-2e2a1a97add3")
    assert keys(Config(image_size=96, feature_grid=2, colour_grid=3)) == (
        "xception-96px-g2-c3-5cc2789fc0a7", "xception-96px-7182366d3d87", "colour-96px-c3-0f516a9ec58a")
    assert keys(Config(encoder="pixels", image_size=32, feature_grid=4)) == (
        "pixels-32px-g4-b66594efd3b9", "pixels-32px-dd45a1943282", "colour-32px-c0-12e94a0adea6")
    assert feature_key(Config(feature_flip=True)) == "xception-299px-g1-5c2001c1c1c9+flip-average"


def test_openvino_keys_name_the_runtime_and_precision_and_share_the_colour_part():
    config = OPENVINO.replace(colour_grid=2)
    tensorflow, openvino = make_encoder(config.replace(encoder_runtime="tensorflow")), make_encoder(config)
    assert openvino.key.startswith(f"xception-{SIZE}px-openvino-f32-g1-c2-") and openvino.key != tensorflow.key
    assert openvino.map_key.startswith(f"xception-{SIZE}px-openvino-f32-") and openvino.map_key != tensorflow.map_key
    assert openvino.colour_key == tensorflow.colour_key  # TensorFlow computes it from the pixels either way
    assert make_encoder(config, mirrored=True).map_key not in (openvino.map_key, tensorflow.map_key)
    bf16 = make_encoder(config.replace(inference_precision="bf16"))
    if NATIVE_BF16:
        assert "-openvino-bf16-" in bf16.map_key and bf16.map_key != openvino.map_key
    else:  # runs in f32, so it reads and writes the f32 cache
        assert (bf16.precision, bf16.key, bf16.map_key) == ("f32", openvino.key, openvino.map_key)


@pytest.mark.parametrize("overrides, message", [
    (["encoder_runtime=onnx"], "'encoder_runtime' must be one of tensorflow, openvino, got 'onnx'"),
    (["encoder=pixels", "encoder_runtime=openvino"], "the pixels encoder runs on tensorflow only, not openvino; "
                                                     "set encoder_runtime=tensorflow"),
    (["inference_precision=bf16"], "inference_precision bf16 needs encoder_runtime=openvino"),
    (["encoder_runtime=openvino", "inference_precision=fp16"], "'inference_precision' must be one of f32, bf16"),
])
def test_runtime_and_precision_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bf16_is_native_only_with_avx512_bf16_or_amx_or_where_openvino_says_so():
    assert native_bf16({"avx2", "avx512f", "avx512_bf16"}, capabilities=[])
    assert native_bf16({"amx_bf16", "amx_tile"}, capabilities=[])
    assert native_bf16(set(), capabilities=["FP32", "BF16", "INT8"])
    assert not native_bf16({"avx2", "avx512f", "avx512_vnni"}, capabilities=["FP32", "INT8", "BIN"])


@pytest.mark.skipif(NATIVE_BF16, reason="this CPU has native bf16: nothing falls back")
def test_bf16_falls_back_to_f32_once_and_says_so_without_tensorflow():
    code = ("import sys\nfrom captioning.features.openvino_runtime import inference_precision as p\n"
            "print(p('bf16'), p('bf16'), p('f32'))\nassert 'tensorflow' not in sys.modules")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 2 and lines[1] == "f32 f32 f32", lines
    assert lines[0].startswith("inference_precision bf16: this CPU has no native bfloat16") and "f32" in lines[0]


def test_openvino_sends_no_telemetry(tmp_path):
    """OpenVINO's import and conversion would report to Google Analytics and leave a client id in the home folder;
    through the encoder they do neither, and CI (the switch that declines it) is left as it was."""
    code = ("import os\nimport keras\nfrom captioning.config import Config\n"
            "from captioning.features.encoders import make_encoder\n"
            "from captioning.features.openvino_runtime import compiled_ir\n"
            "make_encoder(Config(encoder_runtime='openvino')).key\n"
            "inputs = keras.Input((8, 8, 3))\nmodel = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))\n"
            "compiled_ir('tiny', lambda: model, 'f32')\nprint('CI' in os.environ)")
    environment = {**os.environ, "HOME": str(tmp_path), "CAPTIONING_CACHE": str(tmp_path / "cache")}
    environment.pop("CI", None)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=environment)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "False"
    assert (tmp_path / "cache" / "openvino" / "tiny" / "model.xml").is_file()
    assert not (tmp_path / "intel").exists()  # where the package keeps its client id and usage count


def test_openvino_f32_maps_equal_tensorflows(cache, images):
    tensorflow, openvino = _maps(TENSORFLOW, images), _maps(OPENVINO, images)
    assert openvino.shape == tensorflow.shape == (len(images), 3, 3, 2048)
    assert np.abs(tensorflow).max() > 5.0  # real features (ImageNet Xception's reach about 12)
    assert np.abs(openvino - tensorflow).max() <= 1e-3
    # Mirrored: the maps of the mirrored images with their columns put back (TensorFlow mirrors the same way).
    flipped = _maps(TENSORFLOW, [np.ascontiguousarray(image[:, ::-1]) for image in images])
    assert np.abs(_maps(OPENVINO, images, mirrored=True) - flipped[:, :, ::-1]).max() <= 1e-3


def test_bf16_maps_are_close_to_tensorflows_per_cell(cache, images):
    """Prints the cosine of each map cell (its 2048 channels) in bf16 against TensorFlow's f32."""
    if not NATIVE_BF16:
        pytest.skip("this CPU has no native bf16 (AVX512_BF16 or AMX): bf16 falls back to f32 here")
    tensorflow, bf16 = _maps(TENSORFLOW, images), _maps(BF16, images)
    norms = np.linalg.norm(tensorflow, axis=-1) * np.linalg.norm(bf16, axis=-1)  # (images, 3, 3)
    cosine = np.where(norms > 0, (tensorflow * bf16).sum(-1) / np.maximum(norms, 1e-30), np.nan)  # (a ReLU's zeros)
    print(f"\nbf16 against TensorFlow f32 at {SIZE} px, cosine per map cell (rows: images; nan: a cell of zeros):")
    for image, cells in enumerate(cosine):
        print(f"  image {image}: " + " ".join(f"{c:.4f}" for c in cells.ravel()))
    print(f"  min {np.nanmin(cosine):.5f}, mean {np.nanmean(cosine):.5f}")
    assert np.isfinite(cosine).sum() >= cosine.size // 2 and np.nanmin(cosine) > 0.98


def test_extraction_with_openvino_caches_what_captioning_computes(cache, tmp_path, images):
    """The file pipeline (tf.data decoding, the OpenVINO network) fills the runtime's own store with TensorFlow's
    maps (to float16), and captioning-time encoding of the same files gives the same vectors."""
    from captioning.data.dataset import load_dataset
    from captioning.features.store import extract

    (tmp_path / "Images").mkdir()
    names = [f"scene_{i}.png" for i in range(len(images))]
    for name, image in zip(names, images):
        Image.fromarray(image).save(tmp_path / "Images" / name)
    (tmp_path / "captions.txt").write_text("image,caption\n" + "".join(f"{n},a scene\n" for n in names))
    with pytest.warns(UserWarning, match="no official split files"):
        dataset = load_dataset(tmp_path)
    encoder = make_encoder(OPENVINO.replace(feature_grid=2))
    vectors, maps, stats = extract(names, dataset.images, dataset.info, encoder, progress=False)
    assert stats.extracted == len(names) and (cache / "maps" / encoder.map_key / "maps.f16").is_file()
    tensorflow = _maps(TENSORFLOW, images)
    assert np.abs(maps.read().reshape(tensorflow.shape) - tensorflow).max() <= 1e-3 + np.abs(tensorflow).max() / 2048
    direct = encoder.encode([load_rgb(tmp_path / "Images" / n) for n in names])
    np.testing.assert_allclose(vectors, direct, rtol=1e-4, atol=1e-4)


def test_the_agreement_benchmark_compares_every_cell_of_a_dataset(cache, tmp_path, images):
    """benchmarks/feature_agreement.py over a folder of scenes: f32 cells agree with TensorFlow's to float16 rounding,
    bf16 (where native) and int8 less closely; a variant it does not know is one line."""
    from benchmarks import feature_agreement

    (tmp_path / "Images").mkdir()
    names = [f"scene_{i}.png" for i in range(len(images))]
    for name, image in zip(names, images):
        Image.fromarray(image).save(tmp_path / "Images" / name)
    (tmp_path / "captions.txt").write_text("image,caption\n" + "".join(f"{n},a scene\n" for n in names))
    variants = "openvino-f32,openvino-int8" + (",openvino-bf16" if NATIVE_BF16 else "")
    out = tmp_path / "agreement.json"
    with pytest.warns(UserWarning, match="no official split files"):
        feature_agreement.main(["--data", str(tmp_path), "--set", f"image_size={SIZE}", "--variants", variants,
                                "--images", "4", "--out", str(out)])
    result = json.loads(out.read_text())["variants"]
    f32 = result["openvino-f32"]
    assert f32["images"] == 4 and f32["cells"] == 4 * 9
    assert f32["cell_cosine"]["min"] > 0.9999 and f32["max_abs_difference"] <= 1e-2  # float16 steps
    if NATIVE_BF16:
        assert 0.98 < result["openvino-bf16"]["cell_cosine"]["min"] < f32["cell_cosine"]["min"]
    int8 = result["openvino-int8"]  # (quantized here, or read: the module's cache may hold it already)
    assert 0.9 < int8["pooled_cosine"]["mean"] < 1 and int8["cell_cosine"]["mean"] < f32["cell_cosine"]["mean"]
    for bad in (["--variants", "tensorflow-f32"], ["--images", "-1"]):
        with pytest.raises(SystemExit, match="--variants|--images"):
            feature_agreement.main(["--data", str(tmp_path), *bad])


def test_the_ir_is_converted_once_and_then_read_without_converting(cache):
    key = ir_key("xception", make_encoder(OPENVINO).weights_id, SIZE)
    _maps(OPENVINO, [np.zeros((SIZE, SIZE, 3), np.uint8)])  # converts, unless an earlier test did
    xml = cache / "openvino" / key / "model.xml"
    assert xml.is_file() and (xml.parent / "model.bin").stat().st_size > 4 * 20_000_000  # float32 weights
    before = xml.stat().st_mtime_ns
    network = compiled_ir(key, lambda: pytest.fail("converted again"), "f32")
    assert network.precision == "f32" and xml.stat().st_mtime_ns == before
    assert not [p for p in xml.parent.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_process_that_waits_for_a_conversion_reads_its_ir(cache):
    """While another process holds the conversion lock, converted_ir waits, then reads the IR that one wrote."""
    source = converted_ir(ir_key("xception", make_encoder(OPENVINO).weights_id, SIZE),
                          lambda: pytest.fail("the module's IR is there"))
    waiting, result = threading.Event(), {}
    with FileLock(cache / "openvino" / "raced.lock"):  # the other process
        thread = threading.Thread(target=lambda: result.update(xml=converted_ir(
            "raced", lambda: pytest.fail("converted although the other process did"), log=lambda _: waiting.set())))
        thread.start()
        assert waiting.wait(60)
        shutil.copytree(source.parent, cache / "openvino" / "raced")  # what the other process renames into place
    thread.join(60)
    assert result["xml"] == cache / "openvino" / "raced" / "model.xml"


def test_a_damaged_ir_is_converted_again(cache):
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    lines = []
    first = compiled_ir("tiny", lambda: model, "f32", log=lines.append)
    batch = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    expected = first(batch)
    (cache / "openvino" / "tiny" / "model.xml").write_text("<net>damaged")
    again = compiled_ir("tiny", lambda: model, "f32", log=lines.append)
    assert "does not read" in lines[-1] and "converting it again" in lines[-1], lines
    np.testing.assert_array_equal(again(batch), expected)


INT8 = OPENVINO.replace(inference_precision="int8")


def _calibration(images: list[np.ndarray], calls: list | None = None):
    """A Calibration on the images, preprocessed by the plain encoder (counting its uses in `calls`)."""
    from captioning.features.openvino_runtime import Calibration

    encoder = make_encoder(OPENVINO)

    def preprocessed():
        if calls is not None:
            calls.append(1)
        return (np.asarray(encoder.preprocess(image))[None] for image in images)

    return Calibration(f"{len(images)} generated scenes", preprocessed)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """A cache root of the test's own (no IR, no int8 network yet), with the session's verified weights."""
    xception_weights()  # resolved into the session's cache first, then shared
    weights = Path(os.environ["CAPTIONING_CACHE"]) / "weights"
    root = tmp_path / "cache"
    root.mkdir()
    os.symlink(weights, root / "weights")
    monkeypatch.setenv("CAPTIONING_CACHE", str(root))
    return root


def test_int8_without_its_network_or_images_to_calibrate_says_how_to_get_one(fresh_cache):
    with pytest.raises(ConfigError, match="this machine has no int8 encoder yet") as caught:
        _ = make_encoder(INT8).key
    assert "python -m captioning train" in str(caught.value) and "export" in str(caught.value)


def test_int8_is_quantized_once_and_its_checksum_keys_its_features(fresh_cache, images):
    """The first int8 encoder with images quantizes the network (cached with what calibrated it); later ones, with
    or without images, read it: the same keys, which name int8 and differ from f32's; maps near f32's."""
    calls = []
    first = make_encoder(INT8)
    first.calibration = _calibration(images, calls)
    key, map_key = first.key, first.map_key
    assert calls == [1] and "-openvino-int8-" in key and "-openvino-int8-" in map_key
    assert key != make_encoder(OPENVINO).key and map_key != make_encoder(OPENVINO).map_key
    record = json.loads(next((fresh_cache / "openvino").glob("xception-*-int8/quantization.json")).read_text())
    assert record["images"] == len(images) and record["calibration"] == "6 generated scenes"
    again = make_encoder(INT8, mirrored=False)
    again.calibration = _calibration(images, calls)
    assert (again.key, again.map_key) == (key, map_key) and calls == [1]  # read, not quantized again
    assert make_encoder(INT8).key == key  # without images too
    int8, f32 = _maps(INT8, images), _maps(OPENVINO, images)
    pooled = lambda maps: maps.mean(axis=(1, 2))
    cosine = (pooled(int8) * pooled(f32)).sum(1) / np.linalg.norm(pooled(int8), axis=1) / np.linalg.norm(
        pooled(f32), axis=1)
    print(f"int8 against f32, pooled maps' cosine per image: {np.round(cosine, 4).tolist()}")
    assert cosine.min() > 0.9 and not np.array_equal(int8, f32)  # 0.95-0.99 here; Flickr8k: docs/results


def test_preparing_a_dataset_in_int8_calibrates_on_its_training_images(fresh_cache, tmp_path, monkeypatch, capsys):
    """Preparing features (a search's FeatureCache) quantizes the network on the dataset's training images, 5 spread
    over them here, says so once, and extracts with it; a second prepare reads both."""
    from captioning.data.synthetic import write_dataset
    from captioning.features import openvino_runtime
    from captioning.features.prepare import FeatureCache, load_and_report, prepare

    monkeypatch.setattr(openvino_runtime, "CALIBRATION_IMAGES", 5)
    dataset = load_and_report(write_dataset(tmp_path / "data", 20, seed=2), log=lambda line: None)
    capsys.readouterr()
    first = FeatureCache(dataset, progress=False)(INT8)  # (as a search's trials and the registry ask)
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("quantizing the encoder")]
    train = len(dataset.splits["train"])
    assert len(said) == 1 and f"calibrated on 5 of the {train} training images of {dataset.root}" in said[0]
    record = json.loads(next((fresh_cache / "openvino").glob("*-int8/quantization.json")).read_text())
    assert record["images"] == 5 and first.stats.extracted == len(dataset.images)
    again = prepare(INT8, dataset, progress=False)
    assert again.stats.cache_hits == len(dataset.images) and "quantizing" not in capsys.readouterr().out
    np.testing.assert_array_equal(again.features["train"], first.features["train"])
