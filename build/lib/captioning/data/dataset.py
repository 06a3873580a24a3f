"""Reading a captioning dataset in either Flickr8k layout, checking every item before any heavy work starts.

Kaggle layout: `Images/` + `captions.txt` (CSV with header `image,caption`).
Original layout: `Flicker8k_Dataset/` (or `Images/`) + `Flickr8k.token.txt` (`name#n<TAB>caption`).
Either may have the official split files `Flickr_8k.{train,dev,test}Images.txt`. Text files are read as UTF-8 with
or without a byte-order mark (spreadsheet tools on Windows save one).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from captioning.data.images import ImageError, ImageInfo, inspect_image
from captioning.data.text import clean_caption

IMAGE_DIRS = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset")
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
SPLITS = tuple(SPLIT_FILES)
EXAMPLES_SHOWN = 3


class DataError(ValueError):
    """A dataset that cannot be used at all."""


@dataclasses.dataclass
class DataReport:
    """What was skipped or converted while reading a dataset, by reason, with the first few names of each."""

    problems: dict[str, list[str]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    converted: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    outside_splits: list[str] = dataclasses.field(default_factory=list)  # usable, but in no official split file

    def add(self, reason: str, item: str) -> None:
        self.problems[reason].append(item)

    @property
    def skipped(self) -> int:
        return sum(len(items) for items in self.problems.values())

    def skipped_lines(self) -> list[str]:
        return [f"skipped {len(items)} {reason}: {_examples(items)}" for reason, items in sorted(self.problems.items())]

    def lines(self) -> list[str]:
        out = self.skipped_lines()
        if self.converted:
            modes = ", ".join(f"{mode} {n}" for mode, n in sorted(self.converted.items()))
            out.append(f"converted {sum(self.converted.values())} non-RGB images to RGB ({modes})")
        if self.outside_splits:
            out.append(f"left out {len(self.outside_splits)} usable images listed in no split file (neither trained "
                       f"on nor scored): {_examples(self.outside_splits)}")
        return out

    def skipped_summary(self) -> str:
        """What was skipped and why, for an error about too few usable images."""
        return "; ".join(self.skipped_lines()) or "nothing was skipped"


def _examples(items: list[str]) -> str:
    return ", ".join(items[:EXAMPLES_SHOWN]) + (", ..." if len(items) > EXAMPLES_SHOWN else "")


@dataclasses.dataclass
class Dataset:
    root: Path
    images: dict[str, Path]  # usable images only
    info: dict[str, ImageInfo]
    captions: dict[str, list[list[str]]]  # cleaned captions (lists of words) of each usable image
    raw_captions: dict[str, list[str]]
    splits: dict[str, list[str]]
    official_split: bool
    report: DataReport

    def split(self, name: str) -> list[str]:
        if name not in self.splits:
            raise DataError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return self.splits[name]

    def fingerprint(self) -> str:
        """A short hash of the usable images' contents, their captions and the split: equal data, equal hash."""
        import hashlib

        digest = hashlib.sha256()
        for split in SPLITS:
            for name in self.splits[split]:
                digest.update(f"{split}:{name}:{self.info[name].sha256}:{'|'.join(self.raw_captions[name])}\n"
                              .encode())
        return digest.hexdigest()[:16]


def _image_dir(root: Path) -> Path:
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"no image folder in {root}: expected one of {', '.join(IMAGE_DIRS)}/ "
                    "(the Kaggle or the original Flickr8k layout)")


def _read_kaggle(path: Path, report: DataReport) -> list[tuple[str, str]]:
    rows = []
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
            raise DataError(f"{path} does not start with the header 'image,caption' (Kaggle Flickr8k layout)")
        for line_no, row in enumerate(reader, start=2):
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                report.add("caption rows that do not parse", f"{path.name}:{line_no}")
                continue
            rows.append((row[0].strip(), row[1]))
    return rows


def _read_token_file(path: Path, report: DataReport) -> list[tuple[str, str]]:
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_sign, _ = key.partition("#")
        if not tab or not hash_sign or not name.strip() or not caption.strip():
            report.add("caption rows that do not parse", f"{path.name}:{line_no}")
            continue
        rows.append((name.strip(), caption))
    return rows


def _read_captions(root: Path, report: DataReport) -> list[tuple[str, str]]:
    if (root / "captions.txt").is_file():
        return _read_kaggle(root / "captions.txt", report)
    if (root / "Flickr8k.token.txt").is_file():
        return _read_token_file(root / "Flickr8k.token.txt", report)
    raise DataError(f"no caption file in {root}: expected captions.txt (Kaggle layout) or Flickr8k.token.txt "
                    "(original layout)")


def _inspect_all(paths: dict[str, Path], report: DataReport) -> dict[str, ImageInfo]:
    def inspect(item):
        name, path = item
        try:
            return name, inspect_image(path), None
        except ImageError as exc:
            return name, None, str(exc)

    info = {}
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL and hashlib release the GIL while they work
        for name, image_info, error in pool.map(inspect, sorted(paths.items())):
            if error is not None:
                report.add("unreadable or corrupt images", f"{name} ({error})")
            else:
                info[name] = image_info
                if image_info.mode != "RGB":
                    report.converted[image_info.mode] += 1
    return info


def _read_official_split(split_paths: dict[str, Path]) -> dict[str, set[str]]:
    """The names each split file lists; an image listed in two splits would be trained on and scored on."""
    listed = {split: {line.strip() for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
                      if line.strip()} for split, path in split_paths.items()}
    overlaps = []
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1:]:
            shared = sorted(listed[first] & listed[second])
            if shared:
                overlaps.append(f"{split_paths[first].name} and {split_paths[second].name} share {len(shared)} "
                                f"({_examples(shared)})")
    if overlaps:
        raise DataError(f"the official split files in {split_paths['train'].parent} overlap: {'; '.join(overlaps)}; "
                        "list each image in one split file only")
    return listed


def _seeded_split(names: list[str], seed: int) -> dict[str, list[str]]:
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    if len(names) >= 8000:
        n_train, n_dev = 6000, 1000
    else:
        n_dev = max(1, round(len(names) * 0.125)) if len(names) >= 3 else 0
        n_train = len(names) - 2 * n_dev
    return {"train": sorted(shuffled[:n_train]), "dev": sorted(shuffled[n_train:n_train + n_dev]),
            "test": sorted(shuffled[n_train + n_dev:])}


def load_dataset(root: Path, seed: int = 0) -> Dataset:
    """Read captions and check every image; unusable items are counted in `report`, not fatal."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; pass --data PATH to a Flickr8k-layout folder")
    report = DataReport()
    image_dir = _image_dir(root)
    raw: dict[str, list[str]] = collections.defaultdict(list)
    for name, caption in _read_captions(root, report):
        if clean_caption(caption):
            raw[name].append(caption)
        else:
            report.add("captions with no words left after cleaning", f"{name}: {caption.strip()[:40]!r}")

    on_disk = {p.name for p in image_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    for name in sorted(set(raw) - on_disk):
        report.add("captioned images whose file is missing", name)
    for name in sorted(on_disk - set(raw)):
        if Path(name).suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"):
            report.add("images with no captions", name)
    info = _inspect_all({name: image_dir / name for name in raw if name in on_disk}, report)
    if not info:
        raise DataError(f"no usable images in {root}: "
                        + (report.skipped_summary() if report.skipped else "the dataset is empty"))

    usable = sorted(info)
    split_paths = {split: root / filename for split, filename in SPLIT_FILES.items()}
    official = all(path.is_file() for path in split_paths.values())
    if official:
        listed = _read_official_split(split_paths)
        splits = {split: sorted(names & info.keys()) for split, names in listed.items()}
        report.outside_splits = sorted(info.keys() - set().union(*listed.values()))
    else:
        warnings.warn(f"{root} has no official split files ({', '.join(SPLIT_FILES.values())}); using a seeded "
                      f"random split by image (seed {seed}), which is not the official split", stacklevel=2)
        splits = _seeded_split(usable, seed)
    if not official and len(usable) < 3:
        raise DataError(f"{root} has {len(usable)} usable image(s); a train/dev/test split needs at least 3 "
                        f"({report.skipped_summary()})")
    for split in ("train", "dev"):
        if not splits[split]:
            raise DataError(f"the {split} split of {root} has no usable images; check {SPLIT_FILES[split]} "
                            f"({report.skipped_summary()})")
    return Dataset(root=root, images={name: image_dir / name for name in usable}, info=info,
                   captions={name: [clean_caption(c) for c in raw[name]] for name in usable},
                   raw_captions={name: raw[name] for name in usable}, splits=splits,
                   official_split=official, report=report)
