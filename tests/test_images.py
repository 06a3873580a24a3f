import io

import numpy as np
import pytest
from PIL import Image

from captioning.data.images import ImageError, inspect_image, load_rgb


def test_every_source_kind_gives_rgb_uint8(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "p.png")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    for source in (tmp_path / "p.png", str(tmp_path / "p.png"), buffer.getvalue(), pixels, Image.fromarray(pixels)):
        assert np.array_equal(load_rgb(source), pixels)


def test_gray_float_and_alpha_arrays():
    gray = np.full((4, 5), 7, np.uint8)
    assert load_rgb(gray).shape == (4, 5, 3)
    assert load_rgb(np.ones((4, 5, 3), np.float32))[0, 0].tolist() == [255, 255, 255]
    transparent = np.zeros((4, 5, 4), np.uint8)
    assert load_rgb(transparent)[0, 0].tolist() == [255, 255, 255]  # composited on white


def test_cmyk_and_palette_files(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert load_rgb(tmp_path / "c.jpg")[4, 4, 0] > 200  # red stays red
    Image.new("RGB", (8, 8), "blue").convert("P").save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "p.png")[0, 0].tolist() == [0, 0, 255]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_rgb(tmp_path / "none.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"xx")
    with pytest.raises(ImageError, match="cannot read image"):
        load_rgb(tmp_path / "bad.jpg")
    with pytest.raises(ImageError, match="shape"):
        load_rgb(np.zeros((2, 2, 2)))


def test_inspect_flags_what_tensorflow_would_decode_differently(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    Image.new("RGBA", (8, 8)).save(tmp_path / "b.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (8, 8)).save(tmp_path / "r.jpg", exif=exif)
    assert not inspect_image(tmp_path / "a.jpg").needs_pil
    assert inspect_image(tmp_path / "b.png").needs_pil and inspect_image(tmp_path / "r.jpg").needs_pil
