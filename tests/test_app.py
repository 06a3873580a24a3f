"""The Streamlit app, driven by Streamlit's AppTest against a real MLflow registry holding one tiny searched model."""
import io
import sys
from pathlib import Path

import mlflow
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from captioning.captioner import Captioner  # noqa: E402
from captioning.serving import download_bundle  # noqa: E402
from tuning import search as search_cli  # noqa: E402

APP = str(PROJECT / "app.py")
MODEL_HEADER = "Model @champion (version 1)"
TINY = """
config: {encoder: pixels, image_size: 32, feature_grid: 4, vocab_min_count: 1, max_length: 24, embedding_size: 32,
         units: 64, learning_rate: 0.01, dropout: 0.1, epochs: 3, patience: 3, beam_width: 3}
search: {trials: 1, samples: 4, pruner_startup_trials: 1, space: {dropout: {low: 0.0, high: 0.3}}}
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory, shapes_dir) -> str:
    """A tracking URI whose registry holds `captioner` version 1 as @champion (one tiny one-trial search)."""
    root = tmp_path_factory.mktemp("app")
    (root / "tiny.yaml").write_text(TINY)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setattr("tuning.tracking.PROJECT", root)  # artifacts beside the temporary database
        patch.setattr(search_cli, "PROJECT", root)
        assert search_cli.main(["--data", str(shapes_dir), "--experiment", str(root / "tiny.yaml"),
                                "--tracking-uri", uri, "--storage", f"sqlite:///{root / 'optuna.db'}"]) == 0
    return uri


def _app(monkeypatch, tracking_uri: str) -> AppTest:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_UI_URL", "http://127.0.0.1:9")  # nothing listens there: no link, no waiting
    app = AppTest.from_file(APP, default_timeout=120)  # the first run imports TensorFlow and loads the model
    app.run()
    assert not app.exception
    return app


def _png(path: Path, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_uploaded_image_gets_the_champions_caption_with_beam_and_greedy(registry, shapes_dir, monkeypatch):
    app = _app(monkeypatch, registry)
    assert app.selectbox[0].options == ["@champion (version 1)", "version 1"]
    bleu, tags = (table.value for table in app.table)
    assert tags.loc["metric", "value"] == "dev_bleu4" and "data_fingerprint" in tags.index
    assert list(bleu.columns) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"] and "test, beam 3" in bleu.index
    assert any("tiny-optuna" in m.value and "mlflow ui" in m.value for m in app.markdown)

    image = shapes_dir / "Images" / "scene_00002.jpg"
    mlflow.set_tracking_uri(registry)
    expected = Captioner.load(download_bundle("models:/captioner@champion")).caption_alternatives([image], 3)[0]
    app.file_uploader[0].upload("scene.png", _png(image, "RGBA"), "image/png").run()  # alpha: another colour mode
    assert not app.exception and not app.error
    assert [s.value for s in app.subheader] == [expected[0][0], MODEL_HEADER]
    beams = app.table[0].value
    assert beams["caption"].tolist() == [caption for caption, _ in expected]
    assert beams["score"].tolist() == pytest.approx([score for _, score in expected], abs=1e-3)

    app.radio[0].set_value("greedy").run()
    greedy = Captioner.load(download_bundle("models:/captioner/1")).caption(image, beam_width=1)
    assert [s.value for s in app.subheader] == [greedy, MODEL_HEADER] and len(app.table) == 2  # no beams


def test_empty_registry_says_how_to_make_a_model(tmp_path, monkeypatch):
    app = _app(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(app.info) == 1 and "python tuning/search.py" in app.info[0].value
    assert "No model named `captioner`" in app.info[0].value
    assert not app.file_uploader and not app.error


def test_unknown_model_name_is_the_same_clear_message(registry, monkeypatch):
    monkeypatch.setenv("CAPTIONER_MODEL_NAME", "nope")
    app = _app(monkeypatch, registry)
    assert "No model named `nope`" in app.info[0].value and not app.file_uploader


def test_a_file_that_is_not_an_image_or_too_large_gets_a_clear_error(registry, monkeypatch):
    app = _app(monkeypatch, registry)
    app.file_uploader[0].upload("notes.jpg", b"shopping list: eggs, milk", "image/jpeg").run()
    assert not app.exception and [s.value for s in app.subheader] == [MODEL_HEADER]
    assert [e.value for e in app.error] == ["notes.jpg is not an image this app can read; upload a JPEG, PNG or "
                                            "WebP photo."]
    app.file_uploader[0].set_value(("huge.png", b"\0" * (21 * 2**20), "image/png")).run()
    assert [e.value for e in app.error] == ["huge.png is 21.0 MB; this app takes images up to 20 MB."]
