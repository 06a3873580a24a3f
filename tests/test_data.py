import shutil

import numpy as np
import pytest
from PIL import Image

from captioning.data.dataset import DataError, load_dataset
from captioning.data.synthetic import write_dataset


def _photo(path, mode="RGB", size=(40, 30), fmt=None, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image = image.convert("P", palette=Image.ADAPTIVE) if mode == "P" else image.convert(mode)
    image.save(path, format=fmt)


def _kaggle(root, rows, images):
    (root / "Images").mkdir(parents=True)
    for name, kwargs in images.items():
        _photo(root / "Images" / name, **kwargs)
    (root / "captions.txt").write_text("image,caption\n" + "".join(f"{r}\n" for r in rows))
    return root


def test_kaggle_layout_with_bad_items_counted_and_named(tmp_path):
    images = {f"ok{i}.jpg": {"seed": i} for i in range(8)}
    images.update({"gray.jpg": {"mode": "L"}, "rgba.png": {"mode": "RGBA"}, "cmyk.jpg": {"mode": "CMYK"},
                   "palette.png": {"mode": "P"}, "nocaption.jpg": {}})
    rows = [f"{name},A dog runs on the grass ." for name in images if name != "nocaption.jpg"]
    rows += ["missing.jpg,A cat sleeps", "corrupt.jpg,A bird flies", "truncated.jpg,A man waves",
             'ok0.jpg,"a caption, with a comma, in quotes"', "this row has no comma", "ok1.jpg,123 !!!"]
    root = _kaggle(tmp_path / "kaggle", rows, images)
    (root / "Images" / "corrupt.jpg").write_bytes(b"not an image at all")
    data = (root / "Images" / "ok2.jpg").read_bytes()
    (root / "Images" / "truncated.jpg").write_bytes(data[: len(data) // 2])

    with pytest.warns(UserWarning, match="not the official split"):
        dataset = load_dataset(root)
    lines = "\n".join(dataset.report.lines())
    assert "skipped 1 captioned images whose file is missing: missing.jpg" in lines
    assert "skipped 2 unreadable or corrupt images" in lines and "corrupt.jpg" in lines and "truncated.jpg" in lines
    assert "skipped 1 caption rows that do not parse: captions.txt:" in lines
    assert "skipped 1 images with no captions: nocaption.jpg" in lines
    assert "skipped 1 captions with no words left after cleaning" in lines
    assert "converted 4 non-RGB images to RGB (CMYK 1, L 1, P 1, RGBA 1)" in lines
    assert len(dataset.images) == 12 and "gray.jpg" in dataset.images and "missing.jpg" not in dataset.images
    assert dataset.captions["ok0.jpg"][1] == ["a", "caption", "with", "a", "comma", "in", "quotes"]
    assert dataset.info["cmyk.jpg"].needs_pil and not dataset.info["ok3.jpg"].needs_pil
    # The seeded split is by image: every image in exactly one split, and repeatable.
    assert sorted(sum(dataset.splits.values(), [])) == sorted(dataset.images)
    with pytest.warns(UserWarning):
        assert load_dataset(root).splits == dataset.splits


def test_original_layout_with_official_split_and_bogus_key(tmp_path):
    root = tmp_path / "orig"
    (root / "Flicker8k_Dataset").mkdir(parents=True)
    names = [f"{i}_x.jpg" for i in range(6)]
    for i, name in enumerate(names):
        _photo(root / "Flicker8k_Dataset" / name, seed=i)
    lines = [f"{name}#{k}\tA child plays number {k} ." for name in names for k in range(5)]
    lines.append("2258277193_586949ec62.jpg.1#0\tA bogus key from the original release")
    lines.append("no tab on this line")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:4]) + "\nnot_there.jpg\n")
    (root / "Flickr_8k.devImages.txt").write_text(names[4] + "\n")
    (root / "Flickr_8k.testImages.txt").write_text(names[5] + "\n")
    dataset = load_dataset(root)
    assert dataset.official_split
    assert dataset.splits == {"train": names[:4], "dev": [names[4]], "test": [names[5]]}
    assert len(dataset.captions[names[0]]) == 5
    lines = "\n".join(dataset.report.lines())
    assert "2258277193_586949ec62.jpg.1" in lines and "do not parse: Flickr8k.token.txt:32" in lines


def test_zero_usable_images_is_one_clear_error_naming_the_path(tmp_path):
    root = _kaggle(tmp_path / "bad", ["a.jpg,A dog"], {})
    (root / "Images" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"no usable images in {root}"):
        load_dataset(root)


def _original(root, count, splits, encoding="utf-8"):
    """The original layout: `count` images with 2 captions each; `splits` maps a split to the indices it lists."""
    (root / "Flicker8k_Dataset").mkdir(parents=True)
    names = [f"{i}_x.jpg" for i in range(count)]
    for i, name in enumerate(names):
        _photo(root / "Flicker8k_Dataset" / name, size=(16, 12), seed=i)
    lines = [f"{name}#{k}\tA café with a dog {k} .\n" for name in names for k in (0, 1)]
    (root / "Flickr8k.token.txt").write_text("".join(lines), encoding=encoding)
    for split, indices in splits.items():
        (root / f"Flickr_8k.{split}Images.txt").write_text("".join(f"{names[i]}\n" for i in indices), encoding=encoding)
    return root, names


def test_overlapping_split_files_are_one_error_naming_the_images_and_the_files(tmp_path):
    root, _ = _original(tmp_path / "orig", 8, {"train": [0, 1, 2, 3, 4, 5], "dev": [1, 2, 3, 4, 6], "test": [7, 0]})
    with pytest.raises(DataError) as error:
        load_dataset(root)
    assert str(error.value) == (
        f"the official split files in {root} overlap: Flickr_8k.trainImages.txt and Flickr_8k.devImages.txt share 4 "
        "(1_x.jpg, 2_x.jpg, 3_x.jpg, ...); Flickr_8k.trainImages.txt and Flickr_8k.testImages.txt share 1 (0_x.jpg); "
        "list each image in one split file only")


def test_files_with_a_byte_order_mark_read_and_images_in_no_split_are_reported(tmp_path):
    root, names = _original(tmp_path / "orig", 6, {"train": [0, 1, 2], "dev": [3], "test": [4]}, "utf-8-sig")
    dataset = load_dataset(root)
    assert dataset.splits == {"train": names[:3], "dev": [names[3]], "test": [names[4]]}  # 0_x.jpg: no BOM in it
    assert dataset.raw_captions[names[0]] == ["A café with a dog 0 .", "A café with a dog 1 ."]
    assert dataset.report.lines() == [
        "left out 1 usable images listed in no split file (neither trained on nor scored): 5_x.jpg"]
    assert dataset.report.skipped == 0

    kaggle = _kaggle(tmp_path / "kaggle", [], {f"{i}.jpg": {"size": (16, 12), "seed": i} for i in range(3)})
    (kaggle / "captions.txt").write_text("image,caption\n" + "".join(f"{i}.jpg,A café {i}\n" for i in range(3)),
                                         encoding="utf-8-sig")
    with pytest.warns(UserWarning, match="not the official split"):
        assert load_dataset(kaggle).raw_captions == {f"{i}.jpg": [f"A café {i}"] for i in range(3)}


def test_too_few_usable_images_says_what_was_skipped_and_why(tmp_path):
    images = {f"{i}.jpg": {"size": (16, 12), "seed": i} for i in range(4)}
    root = _kaggle(tmp_path / "kaggle", [f"{name},A dog runs" for name in images] + ["gone.jpg,A cat"], images)
    for name in ("2.jpg", "3.jpg"):
        (root / "Images" / name).write_bytes(b"not an image")
    with pytest.warns(UserWarning), pytest.raises(DataError) as error:
        load_dataset(root)
    assert str(error.value).startswith(
        f"{root} has 2 usable image(s); a train/dev/test split needs at least 3 (skipped 1 captioned images whose "
        "file is missing: gone.jpg; skipped 2 unreadable or corrupt images: 2.jpg (")
    assert "3.jpg (" in str(error.value)

    root, _ = _original(tmp_path / "orig", 4, {"train": [0, 1], "dev": [2], "test": [3]})
    (root / "Flicker8k_Dataset" / "2_x.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"the dev split of .* has no usable images; check Flickr_8k.devImages.txt "
                                        r"\(skipped 1 unreadable or corrupt images: 2_x.jpg \("):
        load_dataset(root)


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "no image folder"),
    (lambda root: (root / "Images").mkdir(parents=True), "no caption file"),
])
def test_wrong_folders_are_clear_errors(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message):
        load_dataset(root)


def test_generated_dataset_reads_with_the_same_loader(shapes_dir):
    dataset = load_dataset(shapes_dir)
    assert dataset.official_split and dataset.report.skipped == 0
    assert [len(dataset.splits[s]) for s in ("train", "dev", "test")] == [120, 20, 20]
    assert all(len(caps) == 5 and len(set(map(tuple, caps))) == 5 for caps in dataset.captions.values())


def test_fingerprint_follows_content(tmp_path, shapes_dir):
    copy = shutil.copytree(shapes_dir, tmp_path / "copy")
    before = load_dataset(copy).fingerprint()
    assert before == load_dataset(shapes_dir).fingerprint()
    Image.new("RGB", (20, 20), "red").save(copy / "Images" / "scene_00000.jpg")
    assert load_dataset(copy).fingerprint() != before


def test_synthetic_generator_is_deterministic(tmp_path):
    a, b = write_dataset(tmp_path / "a", 6, seed=3), write_dataset(tmp_path / "b", 6, seed=3)
    assert (a / "captions.txt").read_text() == (b / "captions.txt").read_text()
    assert (a / "Images" / "scene_00004.jpg").read_bytes() == (b / "Images" / "scene_00004.jpg").read_bytes()
    c = write_dataset(tmp_path / "c", 6, seed=4)
    assert (a / "captions.txt").read_text() != (c / "captions.txt").read_text()
