"""Loading a captioner runs no pickle: a logged model is code plus JSON and a .keras file, a version with a pickled
wrapper is refused with the command that re-logs it, a decoder with a Lambda layer is refused in one line, and the
served model's input rules (no server paths, limits, the bad row named)."""
import base64
from pathlib import Path

import keras
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from captioning.cli import main
from captioning.config import Config
from captioning.data.images import load_rgb
from captioning.data.text import Vocabulary
from captioning.decoding.bundle import BundleError
from captioning.decoding.captioner import Captioner
from captioning.serving.mlflow_model import PickledModelError, download_bundle, load_model, log_captioner
from captioning.serving.requests import RequestError, RequestRules, beam_width


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, shapes_dir) -> Path:
    """A merge captioner trained for one epoch, saved as a bundle."""
    from captioning.features.prepare import load_and_report, prepare
    from captioning.training.run import train_and_evaluate

    config = Config(encoder="pixels", image_size=32, feature_grid=4, vocab_min_count=1, max_length=24,
                    embedding_size=16, units=32, epochs=1)
    result = train_and_evaluate(config, prepare(config, load_and_report(shapes_dir, log=lambda line: None),
                                                progress=False), eval_splits=(), verbose=False)
    return result.captioner.save(tmp_path_factory.mktemp("bundle") / "captioner")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> str:
    """An experiment in a tracking database of its own, shared by the module's tests (creating one takes seconds),
    with its artifacts beside it."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        yield MlflowClient().create_experiment("format", artifact_location=(root / "artifacts").as_uri())


def test_a_logged_captioner_holds_no_pickle_and_captions(bundle, shapes_dir, experiment, tmp_path):
    with mlflow.start_run(experiment_id=experiment):
        info = log_captioner(bundle)
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "model")))
    files = [path for path in local.rglob("*") if path.is_file()]
    assert local / "artifacts" / "captioner" / "decoder.keras" in files and local / "pyfunc_model.py" in files
    assert [path for path in files if path.suffix in (".pkl", ".pickle") or path.read_bytes()[:1] == b"\x80"] == []

    model = load_model(info.model_uri)
    image = shapes_dir / "Images" / "scene_00003.jpg"
    encoded = base64.b64encode(image.read_bytes()).decode()
    frame = pd.DataFrame({"image": [encoded, f"data:image/jpeg;base64,{encoded}", image.read_bytes()]})
    captions = model.predict(frame, params={"beam_width": 1})["caption"].tolist()
    assert captions == [Captioner.load(bundle).caption(str(image), beam_width=1)] * 3


def test_a_version_with_a_pickled_wrapper_is_refused_and_relogged(bundle, shapes_dir, experiment, capsys):
    class PickledWrapper(mlflow.pyfunc.PythonModel):  # how captioners were logged before models from code
        def predict(self, context, model_input: pd.DataFrame, params=None):
            return model_input

    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=PickledWrapper(), pip_requirements=[],
                                       artifacts={"captioner": str(bundle)})
    mlflow.register_model(info.model_uri, "captioner", tags={"dev_bleu4": "0.25", "promotion": "by hand"})

    with pytest.raises(PickledModelError, match=r"pickled .*: python -m captioning relog models:/captioner/1$"):
        load_model("models:/captioner/1")
    with pytest.raises(MlflowException, match="pickle is disallowed"):  # MLflow's own loader, in this project
        mlflow.pyfunc.load_model("models:/captioner/1")
    saved = Captioner.load(bundle)
    # The bundle readers take it as it is: the logged bundle's vocabulary and captions.
    assert Captioner.load(download_bundle("models:/captioner/1")).vocab.words == saved.vocab.words

    MlflowClient().set_registered_model_alias("captioner", "champion", "1")
    assert main(["relog", "models:/captioner@champion"]) == 0
    out = capsys.readouterr().out
    assert "registered captioner version 2" in out and "version 1 keeps @champion" in out and "promote 2" in out
    relogged = MlflowClient().get_model_version("captioner", "2")
    assert relogged.tags["relogged_from"] == "1" and relogged.tags["dev_bleu4"] == "0.25"
    assert "promotion" not in relogged.tags and relogged.run_id == run.info.run_id
    image = shapes_dir / "Images" / "scene_00004.jpg"
    encoded = base64.b64encode(image.read_bytes()).decode()
    relogged_model = load_model("models:/captioner/2")
    for params, width in (({}, None), ({"beam_width": 1}, 1)):  # its own beam width, and greedy
        captions = relogged_model.predict(pd.DataFrame({"image": [encoded]}), params=params)["caption"].tolist()
        assert captions == [saved.caption(str(image), beam_width=width)], params
    assert main(["relog", "models:/captioner/2"]) == 0
    assert "already logged as code" in capsys.readouterr().out


def test_a_decoder_with_a_lambda_layer_is_refused_in_one_line(tmp_path, capsys):
    directory = tmp_path / "captioner"
    directory.mkdir()
    Config(encoder="pixels").save(directory / "config.json")
    Vocabulary(["a", "dog"]).save(directory / "vocab.json")
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(directory / "decoder.keras")

    with pytest.raises(BundleError, match=r"decoder.keras holds a Lambda layer, which is Python code"):
        Captioner.load(directory)
    assert main(["caption", "photo.jpg", "--model", str(directory)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Lambda layer" in error and "retrain" in error


def refusal(rules: RequestRules, values: list) -> str:
    with pytest.raises(RequestError) as caught:
        rules.images(values)
    assert caught.value.get_http_status_code() == 400
    return caught.value.message


def _png_header(width: int, height: int) -> str:
    """Base64 of a PNG whose header claims width x height pixels (no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


def test_served_inputs_are_bytes_or_base64_within_limits(shapes_dir, bomb_png, tmp_path, monkeypatch):
    image = shapes_dir / "Images" / "scene_00001.jpg"
    encoded = base64.b64encode(image.read_bytes()).decode()
    rules = RequestRules()
    wrapped = "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))  # as `base64 photo.jpg` prints it
    shape = load_rgb(image).shape
    assert [pixels.shape for pixels in rules.images([encoded, wrapped])] == [shape] * 2

    # A path is refused in the same words whether or not the file exists, and is not read.
    existing, missing = refusal(rules, [str(image)]), refusal(rules, [str(tmp_path / "no-such.jpg")])
    assert existing == missing == ("row 0 looks like a file path or URL; this server opens none named in a request: "
                                   "send the image's bytes, base64-encoded")
    assert refusal(rules, [encoded, "not base64!"]).startswith("row 1 is not base64 text")
    assert refusal(rules, [encoded, base64.b64encode(b"plain text").decode()]).startswith("row 1 is not an image")
    assert refusal(rules, [base64.b64encode(bomb_png).decode()]).startswith("row 0 has more pixels than")
    assert "at most 64 per request" in refusal(rules, [encoded] * 65)
    # Pixels are counted from the headers before anything is decoded: per image, and per request.
    assert refusal(rules, [_png_header(8000, 8000)]).startswith(
        "row 0 has more pixels than this server reads (64,000,000; at most 50,000,000 per image)")
    assert refusal(rules, [encoded] + [_png_header(7000, 7000)] * 5).startswith(
        "the request's images up to row 5 hold 245,")

    assert beam_width(None, 3) == beam_width({"beam_width": 0}, 3) == 3 and beam_width({"beam_width": 10}, 3) == 10
    for width in (11, -1):
        with pytest.raises(RequestError, match=f"beam_width is {width}; give 1 \\(greedy\\) to 10"):
            beam_width({"beam_width": width}, 3)

    # The serving machine's switches: server paths for trusted batch scoring, and the row limit.
    monkeypatch.setenv("CAPTIONING_SERVE_LOCAL_PATHS", "1")
    monkeypatch.setenv("CAPTIONING_SERVE_MAX_ROWS", "2")
    trusted = RequestRules.from_environment()
    assert trusted.images([str(image)])[0].shape == shape
    assert "does not exist" in refusal(trusted, [str(tmp_path / "no-such.jpg")])
    assert "at most 2 per request" in refusal(trusted, [encoded] * 3)
    monkeypatch.setenv("CAPTIONING_SERVE_MAX_ROWS", "lots")
    with pytest.raises(ValueError, match="CAPTIONING_SERVE_MAX_ROWS is 'lots'"):
        RequestRules.from_environment()
