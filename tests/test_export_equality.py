"""benchmarks/export_equality.py: a bundle's export and its Keras decoders caption a split alike, the bundle itself
untouched; bad options are one line."""
import json
from pathlib import Path

import pytest

from benchmarks import export_equality

BUNDLE = Path(__file__).resolve().parent / "fixtures" / "legacy" / "bundle"  # attention over pixels, no export


def test_the_export_and_keras_caption_the_split_alike(shapes_dir, tmp_path, capsys):
    out = tmp_path / "equality.json"
    export_equality.main(["--model", str(BUNDLE), "--data", str(shapes_dir), "--beams", "1,2", "--out", str(out)])
    [model] = json.loads(out.read_text())["models"]
    assert model["decoder"] == "attention" and model["precision"] == "f32"
    assert [row["beam_width"] for row in model["rows"]] == [1, 2]
    for row in model["rows"]:
        assert row["images"] == 20 and row["same_captions"] >= 0.95, row["differing"]
        assert abs(row["bleu4_difference"]) <= 0.01 and row["keras_bleu4"] > 0
    assert not (BUNDLE / "export").exists()  # exported in a copy
    assert "beam 2: same captions" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--model", "/no/bundle"], "not a captioner bundle: /no/bundle"),
    (["--model", str(BUNDLE), "--beams", "1,three"], "give beam widths as integers"),
])
def test_bad_options_are_one_line(argv, message):
    with pytest.raises(SystemExit, match=message):
        export_equality.main(argv)
