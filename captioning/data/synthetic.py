"""The embedded default dataset: seeded synthetic scenes with true captions, in the Kaggle Flickr8k layout.

Each image holds two or three shapes (circle, square, triangle, star) in six colours and two sizes, placed in
distinct cells of a 3 x 3 layout on a light or dark textured background. Each image gets five differently worded
captions that are all true: which shapes, their colours and sizes, where they are relative to one another, and the
background. There are far more scenes than images, so test scenes are new combinations: a model has to look.

`generate_scene` also returns what the captions are about (each object's colour, shape, size and cell, and the
background), so that a caption can be judged against the scene itself (captioning.evaluation.scenes). The images and
captions are VERSION's: a change that moves a pixel or a word must bump VERSION (tests/test_scenes.py holds digests).
"""
from __future__ import annotations

import csv
import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from captioning.core.cache import cache_root
from captioning.data.dataset import SPLIT_FILES

VERSION = 1
SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
           "purple": (140, 60, 180), "orange": (245, 140, 30)}
SIZES = {"small": 11, "large": 22}  # radius in pixels at 128 px
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
IMAGE_SIZE = 128


def _star(cx, cy, r):
    angles = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return [(cx + rad * np.cos(a), cy + rad * np.sin(a)) for a, rad in zip(angles, radii)]


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        s = r * 0.88
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)], fill=colour)
    else:
        draw.polygon(_star(cx, cy, r * 1.1), fill=colour)


@dataclasses.dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str  # small or large
    row: int  # the cell of the 3 x 3 layout: row 0 at the top, column 0 on the left
    col: int

    @property
    def name(self) -> tuple[str, str]:
        """What names it in a caption: (colour, shape)."""
        return self.colour, self.shape


@dataclasses.dataclass
class Scene:
    image: Image.Image
    captions: list[str]
    objects: tuple[SceneObject, ...]  # in drawing order: the references relate objects[0] to objects[1]
    background: str  # light or dark


def _background(rng: np.random.Generator, dark: bool) -> Image.Image:
    base = rng.uniform(20, 70, 3) if dark else rng.uniform(175, 235, 3)
    tilt = rng.uniform(-25, 25, 3)
    ramp = np.linspace(-1, 1, IMAGE_SIZE)
    direction = rng.integers(2)
    grad = ramp[None, :, None] if direction == 0 else ramp[:, None, None]
    noise = rng.normal(0, 6, (IMAGE_SIZE, IMAGE_SIZE, 1))
    pixels = np.clip(base + grad * tilt + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _relation(a: dict, b: dict) -> tuple[str, str]:
    """How a stands to b, and the inverse."""
    if a["col"] != b["col"]:
        return ("to the left of", "to the right of") if a["col"] < b["col"] else ("to the right of", "to the left of")
    return ("above", "below") if a["row"] < b["row"] else ("below", "above")


def _phrase(obj: dict, rng, with_size: bool = True) -> str:
    words = [str(rng.choice(SIZE_WORDS[obj["size"]]))] if with_size else []
    words += [obj["colour"], obj["shape"]]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def make_scene(index: int, seed: int) -> tuple[Image.Image, list[str]]:
    """Scene `index` of the dataset of `seed`: its image and five captions."""
    scene = generate_scene(index, seed)
    return scene.image, scene.captions


def generate_scene(index: int, seed: int) -> Scene:
    """Scene `index` of the dataset of `seed`, with what is in it."""
    rng = np.random.default_rng([seed, index])
    dark = bool(rng.integers(2))
    image = _background(rng, dark)
    draw = ImageDraw.Draw(image)
    count = 2 if rng.random() < 0.6 else 3
    cells = rng.choice(9, size=count, replace=False)
    objects = []
    for cell in cells:
        obj = {"shape": str(rng.choice(SHAPES)), "colour": str(rng.choice(list(COLOURS))),
               "size": str(rng.choice(list(SIZES))), "row": int(cell) // 3, "col": int(cell) % 3}
        cell_size = IMAGE_SIZE / 3
        cx = (obj["col"] + 0.5) * cell_size + rng.uniform(-5, 5)
        cy = (obj["row"] + 0.5) * cell_size + rng.uniform(-5, 5)
        jitter = rng.integers(-25, 26, 3)
        colour = tuple(int(v) for v in np.clip(np.array(COLOURS[obj["colour"]]) + jitter, 0, 255))
        _draw(draw, obj["shape"], cx, cy, SIZES[obj["size"]] * rng.uniform(0.9, 1.1), colour)
        objects.append(obj)
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    background = "dark" if dark else "light"
    captions = _captions(objects, background, rng)
    return Scene(image, captions, tuple(SceneObject(**obj) for obj in objects), background)


def scene_index(name: str) -> int:
    """The index of a scene's image file name as write_dataset names it (scene_01750.jpg -> 1750)."""
    stem = Path(name).stem
    if not (stem.startswith("scene_") and stem[6:].isdigit()):
        raise ValueError(f"{name!r} is not a scene of the synthetic dataset (scene_NNNNN.jpg)")
    return int(stem[6:])


def _captions(objects: list[dict], background: str, rng) -> list[str]:
    a, b = objects[0], objects[1]
    rel, inverse = _relation(a, b)
    extra = objects[2] if len(objects) == 3 else None
    tail = f" and {_phrase(extra, rng)}" if extra else ""
    count_word = "three" if extra else "two"
    listed = [_phrase(o, rng, with_size=False) for o in objects]
    captions = [
        f"{_phrase(a, rng)} {rel} {_phrase(b, rng)}{tail}",
        f"{_phrase(b, rng)} is {inverse} {_phrase(a, rng)}{tail}",
        f"{count_word} shapes on a {background} background : " + " and ".join(listed),
        f"the {a['colour']} {a['shape']} is {rel} the {b['colour']} {b['shape']}",
        f"there is {_phrase(a, rng)} and {_phrase(b, rng)}{tail} on a {background} background",
    ]
    return captions


def write_dataset(root: Path, count: int, seed: int) -> Path:
    """Write `count` scenes to root/Images + root/captions.txt + split files (75/12.5/12.5 %)."""
    images = root / "Images"
    images.mkdir(parents=True, exist_ok=True)
    names = []
    with (root / "captions.txt").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for index in range(count):
            name = f"scene_{index:05d}.jpg"
            image, captions = make_scene(index, seed)
            image.save(images / name, quality=92)
            writer.writerows([name, caption] for caption in captions)
            names.append(name)
    n_dev = count // 8
    n_train = count - 2 * n_dev
    parts = {"train": names[:n_train], "dev": names[n_train:n_train + n_dev], "test": names[n_train + n_dev:]}
    for split, filename in SPLIT_FILES.items():
        (root / filename).write_text("".join(f"{name}\n" for name in parts[split]))
    return root


def dataset_path(data: str | None) -> Path:
    """--data's folder, or the embedded dataset's when it is not given."""
    return Path(data) if data is not None else embedded_dataset()


def embedded_dataset(count: int = 2000, seed: int = 0) -> Path:
    """The default dataset's folder, generated once into the cache (a few seconds)."""
    root = cache_root() / "datasets" / f"shapes-v{VERSION}-n{count}-seed{seed}"
    if (root / "captions.txt").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".shapes-"))  # same filesystem, so the rename is atomic
    write_dataset(tmp, count, seed)
    try:
        tmp.rename(root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / "captions.txt").is_file():
            raise
        # else another process finished first: keep its copy
    return root
