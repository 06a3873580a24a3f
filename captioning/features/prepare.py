"""A dataset's features for one encoder setting: every image's feature vector and map, from the cache or extracted
(with mirrored images for feature_flip), split by the dataset's splits; and a cache of them per setting for the
trials of a search."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from captioning.config import Config
from captioning.data.dataset import SPLITS, Dataset, load_dataset
from captioning.features.encoders import feature_key, make_encoder
from captioning.features.store import ExtractionStats, ImageInputs, MapView, extract, image_pipeline
from captioning.models import decoder_spec


@dataclasses.dataclass
class Prepared:
    """A dataset with the features of its images for one encoder setting."""

    dataset: Dataset
    features: dict[str, np.ndarray]  # split -> (images, dim), rows in dataset.splits[split] order
    stats: ExtractionStats
    mirrored: dict[str, np.ndarray] | None = None  # the mirrored images' features, with feature_flip: augment
    maps: dict[str, MapView] | None = None  # split -> the images' spatial maps, read when indexed
    mirrored_maps: dict[str, MapView] | None = None  # with feature_flip: augment

    def inputs(self, split: str, decoder: str, mirrored: bool = False):
        """What a decoder reads for a split's images: the feature vectors (merge), or them and the maps."""
        features = (self.mirrored if mirrored else self.features)[split]
        if not decoder_spec(decoder).reads_maps:
            return features
        return ImageInputs(features, (self.mirrored_maps if mirrored else self.maps)[split])


def load_and_report(data: Path, seed: int = 0, log: Callable[[str], None] = print) -> Dataset:
    dataset = load_dataset(data, seed=seed)
    counts = ", ".join(f"{split} {len(dataset.splits[split])}" for split in SPLITS)
    split_kind = "official split" if dataset.official_split else "seeded split (not official)"
    log(f"data: {dataset.root}: {len(dataset.images)} usable images ({counts}; {split_kind})")
    for line in dataset.report.lines():
        log(f"data: {line}")
    return dataset


def prepare(config: Config, dataset: Dataset, progress: bool = True) -> Prepared:
    """Features of every image, from the cache or extracted; with feature_flip, of the mirrored images too, averaged
    with the plain ones (flip_mode: average) or kept beside them for training (augment)."""
    names = sorted(dataset.images)  # every usable image, in a split or not, so that the cache is complete
    matrix, maps, stats = extract(names, dataset.images, dataset.info, _encoder(config, dataset), progress=progress)
    mirrored = mirrored_maps = None
    if config.feature_flip:
        mirrored, mirrored_maps, more = extract(names, dataset.images, dataset.info,
                                                _encoder(config, dataset, mirrored=True), progress=progress)
        stats = ExtractionStats(images=stats.images, cache_hits=stats.cache_hits + more.cache_hits,
                                extracted=stats.extracted + more.extracted, seconds=stats.seconds + more.seconds)
        if config.flip_mode == "average":
            matrix, mirrored = (matrix + mirrored) / 2, None
            maps, mirrored_maps = MapView(maps.parts + mirrored_maps.parts), None
    row = {name: i for i, name in enumerate(names)}
    rows = {split: np.array([row[n] for n in dataset.splits[split]], np.int64) for split in SPLITS}
    by_split = lambda m: {split: m[rows[split]] for split in SPLITS}
    view = lambda v: {split: MapView([(array, indices[rows[split]]) for array, indices in v.parts]) for split in SPLITS}
    return Prepared(dataset, by_split(matrix), stats, None if mirrored is None else by_split(mirrored),
                    view(maps), None if mirrored_maps is None else view(mirrored_maps))


def _encoder(config: Config, dataset: Dataset, mirrored: bool = False):
    """The config's encoder; in int8, able to quantize its network on the dataset's training images if this machine
    has no int8 network yet."""
    encoder = make_encoder(config, mirrored)
    if config.inference_precision == "int8":  # (calibrated on the plain images)
        encoder.calibration = calibration(dataset, make_encoder(config) if mirrored else encoder)
    return encoder


def calibration(dataset: Dataset, encoder):
    """CALIBRATION_IMAGES of the dataset's training images (or all, if fewer), spread evenly over them in name
    order, preprocessed by the (plain) encoder as extraction does."""
    from captioning.features.openvino_runtime import CALIBRATION_IMAGES, Calibration

    names = sorted(dataset.splits["train"])
    step = max(1, len(names) // CALIBRATION_IMAGES)
    chosen = names[::step][:CALIBRATION_IMAGES]

    def images():
        batches = image_pipeline([dataset.images[n] for n in chosen], [dataset.info[n].needs_pil for n in chosen],
                                 encoder, batch_size=1)
        return (batch.numpy() for batch in batches)

    return Calibration(f"{len(chosen)} of the {len(names)} training images of {dataset.root}", images)


class FeatureCache:
    """A dataset's prepared features for each feature setting (feature_key) that a caller asks for, prepared once:
    the trials of a search and the registry's scoring share them. Called with a config, it returns them."""

    def __init__(self, dataset: Dataset, progress: bool = True):
        self.dataset, self.progress = dataset, progress
        self._prepared: dict[str, Prepared] = {}

    def get(self, config: Config) -> tuple[Prepared, int]:
        """The features, and how many images came from the disk cache (all of them once prepared here)."""
        if config.inference_precision == "int8":  # its key names the int8 network: quantized on this dataset if none
            _encoder(config, self.dataset).quantized_network()
        key = feature_key(config)
        if key in self._prepared:
            return self._prepared[key], len(self.dataset.images)
        prepared = self._prepared[key] = prepare(config, self.dataset, progress=self.progress)
        return prepared, prepared.stats.cache_hits

    def __call__(self, config: Config) -> Prepared:
        return self.get(config)[0]


