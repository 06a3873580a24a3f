"""The inference export (captioning.inference): small captioners of every decoder family and an ensemble of them,
exported, then loaded and decoded in a process where TensorFlow and Keras cannot be imported, caption what the Keras
path captions (greedy and beam-3), with the same attention maps; the NumPy image side computes the TensorFlow
encoders' features (Xception's, and its entry flow's with each cell's colour and place, from their IR); a stale
export, or none, decodes through Keras and says how to export."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from captioning.config import Config, ConfigError
from captioning.data.images import load_rgb
from captioning.data.synthetic import make_scene
from captioning.data.text import Vocabulary, pad_batch
from captioning.decoding import captioner as captioner_module
from captioning.decoding.captioner import Captioner
from captioning.decoding.consensus import Neighbours
from captioning.features import encoder_spec
from captioning.features.encoders import make_encoder
from captioning.features.inputs import ImageInputs
from captioning.features.numpy_encoding import ArrayEncoder
from captioning.features.prepare import load_and_report, prepare
from captioning.inference.export import export_captioner
from captioning.models import build_model, make_step_decoder
from captioning.models.base import masked_cross_entropy

BASE = Config(encoder="pixels", image_size=32, feature_grid=2, colour_grid=1, vocab_min_count=1, max_length=16,
              embedding_size=16, units=16, attention_units=16, dropout=0.0, learning_rate=0.02, beam_width=3,
              transformer_layers=1, transformer_heads=2, transformer_ff=32)
FAMILIES = {"merge": BASE.replace(feature_flip=True),  # mirrored features averaged: another feature group
            "attention": BASE.replace(decoder="attention"),
            "transformer": BASE.replace(decoder="transformer", rerank_neighbours=5)}  # consensus re-ranking
# Run in a fresh process: TensorFlow and Keras cannot be imported there, and none of their modules may be loaded.
BLOCKED = """
import importlib.abc, json, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "keras"):
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, Blocked())
from captioning.decoding.captioner import Captioner

def decoded(captioner, images):
    assert captioner.exported is not None
    greedy = [options[0][0] for options in captioner.caption_alternatives(images, 1)]
    beams = captioner.caption_alternatives(images, 3)
    caption, maps = captioner.caption_with_attention(images[0], 3)
    return {"greedy": greedy, "beam": [[c for c, _ in o] for o in beams],
            "scores": [[s for _, s in o] for o in beams], "maps": None if maps is None else maps.tolist()}

def none_loaded():
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ("tensorflow", "keras"))
    assert not loaded, loaded
"""
DECODE = BLOCKED + """
images, (tracking, served), out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), {}
for bundle in sys.argv[3:]:
    out[bundle] = decoded(Captioner.load(bundle), images)
import mlflow, pandas  # the served model (pyfunc_model.py): a logged bundle with its export
mlflow.set_tracking_uri(tracking)
rows = pandas.DataFrame({"image": [open(image, "rb").read() for image in images]})
out["served"] = list(mlflow.pyfunc.load_model(served).predict(rows, params={"beam_width": 3})["caption"])
none_loaded()
print(json.dumps(out))
"""
# ... and the export's encoder of a bundle's (one) feature group, plain and mirrored, into an .npz file.
ENCODE_AND_DECODE = BLOCKED + """
import numpy as np
from captioning.data.images import load_rgb

images, bundle, arrays = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
captioner = Captioner.load(bundle)
pixels, encoded = [load_rgb(image) for image in images], {}
for mirrored in (False, True):
    features, maps = captioner.exported.encoder_for(captioner.feature_groups[0], mirrored).encode_inputs(pixels)
    encoded.update({f"features-{mirrored}": features, f"maps-{mirrored}": maps})
np.savez(arrays, **encoded)
out = decoded(captioner, images)
none_loaded()
print(json.dumps(out))
"""


def _train(config: Config, prepared, steps: int = 30) -> Captioner:
    """A captioner trained for a few batches of teacher forcing (seconds: one traced step of fixed shapes), through
    the step decoder's training_inputs as training.teacher does."""
    keras.utils.set_random_seed(0)
    dataset = prepared.dataset
    names = dataset.split("train")
    vocab = Vocabulary.build((c for n in sorted(dataset.captions) for c in dataset.captions[n]), 1)
    inputs = prepared.inputs("train", config.decoder)
    model = build_model(config, len(vocab), inputs)
    decoder = make_step_decoder(model, vocab)
    optimizer = keras.optimizers.Adam(config.learning_rate)

    @tf.function(autograph=False, reduce_retracing=True)
    def train_step(batch, targets):
        with tf.GradientTape() as tape:
            loss = masked_cross_entropy(targets, model(batch, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    rng = np.random.default_rng(0)
    for _ in range(steps):
        images = np.sort(rng.choice(len(names), 24, replace=False))
        captions = [dataset.captions[names[i]][rng.integers(len(dataset.captions[names[i]]))] for i in images]
        tokens = pad_batch([vocab.encode(words, config.max_length) for words in captions], config.max_length)
        train_step(decoder.training_inputs(inputs[images], np.arange(len(images)), tokens[:, :-1]), tokens[:, 1:])
    neighbours = None
    if config.rerank_neighbours:
        neighbours = Neighbours(prepared.features["train"], [[" ".join(c) for c in dataset.captions[n]] for n in names])
    return Captioner(config, vocab, model, neighbours=neighbours)


@pytest.fixture(scope="module")
def exported(shapes_dir, tmp_path_factory):
    """Bundles of the three families and of their ensemble, each exported; and a few test images."""
    dataset = load_and_report(shapes_dir, log=lambda line: None)
    root = tmp_path_factory.mktemp("exported")
    captioners = {name: _train(config, prepare(config, dataset, progress=False))
                  for name, config in FAMILIES.items()}
    captioners["ensemble"] = Captioner.ensemble(list(captioners.values()))
    bundles = {}
    for name, captioner in captioners.items():
        bundles[name] = captioner.save(root / name)
        export_captioner(Captioner.load(bundles[name], use_export=False), bundles[name], log=lambda line: None)
    images = [str(shapes_dir / "Images" / name) for name in dataset.split("test")[:6]]
    return bundles, images


def _keras_path(bundle: Path, images: list[str]) -> dict:
    captioner = Captioner.load(bundle, use_export=False)
    assert captioner.exported is None
    beams = captioner.caption_alternatives(images, 3)
    caption, maps = captioner.caption_with_attention(images[0], 3)
    return {"greedy": [options[0][0] for options in captioner.caption_alternatives(images, 1)],
            "beam": [[c for c, _ in o] for o in beams], "scores": [[s for _, s in o] for o in beams], "maps": maps}


def _assert_decodes_alike(export: dict, keras_path: dict, name: str) -> None:
    assert export["greedy"] == keras_path["greedy"], name
    assert export["beam"] == keras_path["beam"], name
    np.testing.assert_allclose(export["scores"], keras_path["scores"], rtol=1e-4, err_msg=name)
    if keras_path["maps"] is None:
        assert export["maps"] is None, name
    else:
        np.testing.assert_allclose(export["maps"], keras_path["maps"], atol=1e-4, err_msg=name)


def _decoding_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_the_export_decodes_and_serves_without_tensorflow_what_keras_decodes(exported, tmp_path, monkeypatch):
    bundles, images = exported
    import mlflow

    from captioning.serving.mlflow_model import log_captioner

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # (artifacts beside the database)
    mlflow.set_tracking_uri(tracking)
    with mlflow.start_run():
        served = log_captioner(bundles["transformer"]).model_uri
    done = subprocess.run([sys.executable, "-c", DECODE, json.dumps(images), json.dumps([tracking, served]),
                           *map(str, bundles.values())], capture_output=True, text=True, env=_decoding_env(),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "decoding with the OpenVINO export" in done.stderr
    decoded = json.loads(done.stdout)
    for name, bundle in bundles.items():
        keras_path = _keras_path(bundle, images)
        assert (keras_path["maps"] is None) == (name == "merge")  # (a merge decoder has no attention)
        _assert_decodes_alike(decoded[str(bundle)], keras_path, name)
    assert len({caption for captions in decoded[str(bundles["ensemble"])]["beam"] for caption in captions}) > 3
    assert decoded["served"] == [beams[0] for beams in decoded[str(bundles["transformer"])]["beam"]]


def test_a_stale_export_or_none_decodes_through_keras_and_says_how_to_export(exported, tmp_path, monkeypatch):
    bundles, images = exported
    monkeypatch.setattr(captioner_module, "_said", set())  # (what this process has said already is not said again)
    said = []
    copy = tmp_path / "copy"
    Captioner.load(bundles["merge"], use_export=False).save(copy)  # new decoder files: the export is dropped
    assert Captioner.load(copy, log=said.append).exported is None
    assert said == [f"captioner: {copy} has no inference export, so it decodes through Keras (TensorFlow); python -m "
                    f"captioning export {copy} makes one, which decodes without TensorFlow"]
    export_captioner(Captioner.load(copy, use_export=False), copy, log=said.append)
    assert Captioner.load(copy, log=said.append).exported is not None
    vocab = copy / "vocab.json"
    vocab.write_text(vocab.read_text() + "\n")  # another vocabulary file than the export's
    assert Captioner.load(copy, log=said.append).exported is None
    assert "was made from other decoder or vocabulary files" in said[-1] and "captioning export" in said[-1]


@pytest.mark.parametrize("mirrored", [False, True])
def test_the_numpy_image_side_computes_the_tensorflow_encoders_features(mirrored):
    """Resizing, the pixel map, grid pooling and the colour part without TensorFlow, on scenes and noise of
    several sizes and aspect ratios."""
    rng = np.random.default_rng(1)
    images = [np.asarray(make_scene(i, seed=2)[0].convert("RGB"))[: 90 + 13 * i, : 128 - 11 * i] for i in range(3)]
    images += [rng.integers(0, 256, size, dtype=np.uint8) for size in ((17, 40, 3), (300, 200, 3))]
    for config in (BASE, BASE.replace(feature_grid=1, colour_grid=3), BASE.replace(image_size=12, feature_grid=3)):
        encoder = make_encoder(config, mirrored=mirrored)
        ours = ArrayEncoder(config.encoder, config.image_size, config.feature_grid, config.colour_grid, mirrored,
                            encoder.key)
        features, maps = encoder.encode_inputs(images)
        our_features, our_maps = ours.encode_inputs(images)
        np.testing.assert_allclose(our_maps.astype(np.float32), maps.astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(our_features, features, atol=1e-4)


def test_an_xception_captioner_exports_its_network_and_encodes_as_tensorflow(tmp_path):
    """Xception at its smallest input (71 px: a 3 x 3 map): the export carries its IR, and the exported encoder's
    maps and features are TensorFlow's to float32 rounding (values reach about 10)."""
    config = Config(image_size=71, feature_grid=1, vocab_min_count=1, max_length=8, embedding_size=8, units=8)
    vocab = Vocabulary(["red", "blue", "circle", "square"])
    keras.utils.set_random_seed(0)
    model = build_model(config, len(vocab), np.zeros((1, 2048), np.float32))
    bundle = Captioner(config, vocab, model).save(tmp_path / "xception")
    export_captioner(Captioner.load(bundle, use_export=False), bundle, log=lambda line: None)
    assert len(list((bundle / "export").glob("encoder-xception-71px-*.bin"))) == 1
    images = [np.asarray(make_scene(i, seed=4)[0].convert("RGB"))[: 100 + 20 * i] for i in range(2)]
    keras_path, export = Captioner.load(bundle, use_export=False), Captioner.load(bundle, log=lambda line: None)
    features, maps = keras_path.encoder.encode_inputs(images)
    our_features, our_maps = export.encoder.encode_inputs(images)
    np.testing.assert_allclose(our_maps.astype(np.float32), maps.astype(np.float32), atol=1e-2)  # float16 steps
    np.testing.assert_allclose(our_features, features, atol=1e-3)
    assert export.caption(images, beam_width=1) == keras_path.caption(images, beam_width=1)


def test_an_int8_captioner_exports_its_quantized_network_and_encodes_as_its_keras_path(tmp_path, monkeypatch):
    """inference_precision int8: the network quantized on a few scenes (as preparing a dataset's features does), the
    export carries the int8 IR, whose maps are the Keras path's (which runs the same IR) and whose captions match;
    on another machine the bundle installs that IR (or refuses a different one)."""
    from captioning.features.openvino_runtime import Calibration

    config = Config(image_size=71, feature_grid=1, vocab_min_count=1, max_length=8, embedding_size=8, units=8,
                    encoder_runtime="openvino", inference_precision="int8")
    scenes = [np.asarray(make_scene(i, seed=5)[0].convert("RGB")) for i in range(4)]
    encoder = make_encoder(config)
    plain = make_encoder(config.replace(inference_precision="f32"))
    encoder.calibration = Calibration("4 scenes", lambda: (np.asarray(plain.preprocess(s))[None] for s in scenes))
    assert "-openvino-int8-" in encoder.key  # quantized now (or read, if another test of this session did)
    vocab = Vocabulary(["red", "blue", "circle", "square"])
    keras.utils.set_random_seed(0)
    bundle = Captioner(config, vocab, build_model(config, len(vocab), np.zeros((1, 2048), np.float32))).save(
        tmp_path / "int8")
    export_captioner(Captioner.load(bundle, use_export=False), bundle, log=lambda line: None)
    assert [p.name for p in (bundle / "export").glob("encoder-*.xml")] == [f"encoder-{encoder.network_key}-int8.xml"]
    images = [np.asarray(make_scene(i, seed=4)[0].convert("RGB"))[: 100 + 20 * i] for i in range(2)]
    keras_path, export = Captioner.load(bundle, use_export=False), Captioner.load(bundle, log=lambda line: None)
    features, maps = keras_path.encoder.encode_inputs(images)
    our_features, our_maps = export.encoder.encode_inputs(images)
    np.testing.assert_allclose(our_maps.astype(np.float32), maps.astype(np.float32), atol=1e-2)
    np.testing.assert_allclose(our_features, features, atol=1e-3)
    assert export.caption(images, beam_width=1) == keras_path.caption(images, beam_width=1)

    # Another machine (a cache of its own): the bundle installs its export's int8 network and computes the same
    # features through Keras; a machine whose int8 network is another one is told so.
    weights = Path(os.environ["CAPTIONING_CACHE"]) / "weights"
    for name in ("other", "differs"):
        (tmp_path / name).mkdir()
        os.symlink(weights, tmp_path / name / "weights")
    monkeypatch.setenv("CAPTIONING_CACHE", str(tmp_path / "other"))
    lines = []
    elsewhere = Captioner.load(bundle, use_export=False, log=lines.append)
    assert any("it now uses the one of the export of" in line for line in lines), lines
    assert elsewhere.encoder.key == encoder.key
    assert elsewhere.caption(images, beam_width=1) == keras_path.caption(images, beam_width=1)
    monkeypatch.setenv("CAPTIONING_CACHE", str(tmp_path / "differs"))
    own = tmp_path / "differs" / "openvino" / f"{encoder.network_key}-int8"
    shutil.copytree(tmp_path / "other" / "openvino" / own.name, own)
    (own / "quantization.json").write_text('{"checksum": "0123456789ab"}')
    with pytest.raises(ConfigError, match="is not the one the export of .* carries"):
        Captioner.load(bundle, use_export=False, log=lambda line: None)


def test_an_xception_entry_captioner_exports_its_entry_flow_and_decodes_without_tensorflow(tmp_path):
    """make run's encoder, Xception's entry flow with each cell's colour and place, at its smallest input (71 px:
    3 x 3 cells) under a tiny untrained transformer of 3 blocks (as make run's: more than 10 outputs, which OpenVINO
    orders by name) that averages plain and mirrored features: the export carries the entry flow's IR, and a
    process without TensorFlow computes the TensorFlow encoder's maps and features (plain and mirrored; maps reach
    about 10) and decodes what the Keras path decodes."""
    config = BASE.replace(encoder="xception-entry", image_size=71, feature_grid=1, feature_flip=True,
                          decoder="transformer", transformer_layers=3, max_length=8)  # 3 blocks: 14 start outputs
    vocab = Vocabulary(["a", "red", "blue", "green", "circle", "square", "triangle", "left", "of"])
    height, width, channels = encoder_spec(config.encoder).map_shape(config.image_size)
    inputs = ImageInputs(np.zeros((1, make_encoder(config).dim), np.float32),
                         np.zeros((1, height * width, channels), np.float32))
    keras.utils.set_random_seed(0)
    bundle = Captioner(config, vocab, build_model(config, len(vocab), inputs)).save(tmp_path / "entry")
    export_captioner(Captioner.load(bundle, use_export=False), bundle, log=lambda line: None)
    assert len(list((bundle / "export").glob("encoder-xception-entry-71px-*.bin"))) == 1
    images = []
    for i in range(3):  # (several sizes and aspect ratios)
        images.append(str(tmp_path / f"scene-{i}.png"))
        Image.fromarray(np.asarray(make_scene(i, seed=4)[0].convert("RGB"))[: 100 + 20 * i, 9 * i:]).save(images[-1])
    arrays = tmp_path / "export.npz"
    done = subprocess.run([sys.executable, "-c", ENCODE_AND_DECODE, json.dumps(images), str(bundle), str(arrays)],
                          capture_output=True, text=True, env=_decoding_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    exported = np.load(arrays)
    pixels = [load_rgb(image) for image in images]
    for mirrored in (False, True):
        features, maps = make_encoder(config, mirrored=mirrored).encode_inputs(pixels)
        assert maps.shape == exported[f"maps-{mirrored}"].shape == (3, height, width, channels)
        what = f"mirrored {mirrored}"
        np.testing.assert_allclose(exported[f"maps-{mirrored}"].astype(np.float32), maps.astype(np.float32),
                                   atol=1e-2, err_msg=what)  # float16 steps
        np.testing.assert_allclose(exported[f"features-{mirrored}"], features, atol=1e-3, err_msg=what)
    _assert_decodes_alike(json.loads(done.stdout), _keras_path(bundle, images), "xception-entry")
