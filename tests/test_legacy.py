"""Bundles and logged models written before the package's layout (tests/fixtures/legacy, made by the flat layout's
code at 54e0ad4: see its README) load and caption with the same words: through Captioner.load, the CLI, and
mlflow.pyfunc.load_model in a process that has imported the new package."""
import base64
import json
import shutil
import sys
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest

import captioning
from captioning.cli import main
from captioning.decoding.captioner import Captioner

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())["images"]
IMAGES = sorted(EXPECTED)


@pytest.mark.parametrize("width", [1, 3])
def test_an_old_bundle_captions_with_the_same_words(width):
    captioner = Captioner.load(LEGACY / "bundle")
    assert captioner.config.decoder == "attention" and captioner.has_attention
    captions = captioner.caption([str(LEGACY / "images" / name) for name in IMAGES], beam_width=width)
    assert captions == [EXPECTED[name]["bundle"][f"beam_width_{width}"] for name in IMAGES]


def test_an_old_bundle_through_the_command_line(capsys):
    assert main(["caption", *(str(LEGACY / "images" / name) for name in IMAGES), "--model", str(LEGACY / "bundle"),
                 "--beam", "3"]) == 0
    out = capsys.readouterr().out
    for name in IMAGES:
        assert EXPECTED[name]["bundle"]["beam_width_3"] in out


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory) -> Path:
    """The logged model's folder, unpacked from its archive (its code/ is the old package: see the fixture's README)."""
    root = tmp_path_factory.mktemp("legacy")
    shutil.unpack_archive(LEGACY / "logged_model.zip", root)
    return root / "logged_model"


@pytest.mark.parametrize("width", [1, 3])
def test_an_old_logged_model_loads_beside_the_new_package(logged_model, width):
    assert (logged_model / "code" / "captioning" / "serving_inputs.py").is_file()  # the old layout, logged with it
    model = mlflow.pyfunc.load_model(str(logged_model))
    rows = pd.DataFrame({"image": [base64.b64encode((LEGACY / "images" / n).read_bytes()).decode() for n in IMAGES]})
    captions = list(model.predict(rows, params={"beam_width": width})["caption"])
    assert captions == [EXPECTED[name]["pyfunc"][f"beam_width_{width}"] for name in IMAGES]
    # The new package stayed the one in use: the old copy's folder is only on the path.
    assert sys.modules["captioning"] is captioning
