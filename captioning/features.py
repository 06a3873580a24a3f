"""Batched feature extraction through a tf.data pipeline, cached on disk by encoder and image content.

Cache layout: <cache>/features/<encoder key>/<sha256[:2]>/<sha256>.npy, one float32 vector per image. The encoder
key covers encoder name, weights checksum, input size and pooling grid; the file name is the image's content hash.
A changed image has a new hash and is extracted again; a stale entry cannot be read by mistake.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from captioning.cache import atomic_write, cache_root
from captioning.encoders import Encoder
from captioning.images import ImageInfo, load_rgb


@dataclasses.dataclass
class ExtractionStats:
    images: int = 0
    cache_hits: int = 0
    extracted: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else float("nan")


def _cache_path(directory: Path, sha256: str) -> Path:
    return directory / sha256[:2] / f"{sha256}.npy"


def _load_with_pil(path: bytes) -> np.ndarray:
    return load_rgb(path.decode())


def _decode_plain(path: tf.Tensor) -> tf.Tensor:
    """RGB/grayscale JPEG or PNG; the accurate integer DCT is what PIL uses, so captioning sees the same pixels."""
    data = tf.io.read_file(path)
    return tf.cond(tf.io.is_jpeg(data),
                   lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
                   lambda: tf.io.decode_png(data, channels=3))


def image_pipeline(paths: list[Path], needs_pil: list[bool], encoder: Encoder, batch_size: int) -> tf.data.Dataset:
    """Decode and resize in parallel, batched, prefetched so that it overlaps with the encoder."""
    def load(path, pil):
        image = tf.cond(pil, lambda: tf.numpy_function(_load_with_pil, [path], tf.uint8, stateful=False),
                        lambda: _decode_plain(path))
        image.set_shape([None, None, 3])
        return encoder.preprocess(image)

    dataset = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], needs_pil))
    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size).prefetch(2)


def extract_features(names: list[str], paths: dict[str, Path], info: dict[str, ImageInfo], encoder: Encoder,
                     batch_size: int = 8, progress: bool = True) -> tuple[np.ndarray, ExtractionStats]:
    """Features of `names` in that order, extracting only what the cache lacks."""
    directory = cache_root() / "features" / encoder.key
    stats = ExtractionStats(images=len(names))
    # One extraction per distinct content: duplicate files share a hash and a cache entry.
    missing = {info[n].sha256: n for n in names if not _cache_path(directory, info[n].sha256).is_file()}
    todo = sorted(missing.values())
    stats.cache_hits = sum(info[n].sha256 not in missing for n in names)
    if todo:
        start = time.perf_counter()
        dataset = image_pipeline([paths[n] for n in todo], [info[n].needs_pil for n in todo], encoder, batch_size)
        bar = tqdm(total=len(todo), desc=f"features ({encoder.name} {encoder.image_size}px)", unit="img",
                   disable=not progress, mininterval=2.0)
        done = 0
        for batch in dataset:
            features = encoder.encode_batch(batch).numpy().astype(np.float32)
            for name, vector in zip(todo[done:done + len(features)], features):
                atomic_write(_cache_path(directory, info[name].sha256), lambda tmp, v=vector: np.save(tmp, v))
            done += len(features)
            bar.update(len(features))
        bar.close()
        stats.extracted = done
        stats.seconds = time.perf_counter() - start
    matrix = np.zeros((len(names), encoder.dim), dtype=np.float32)
    for row, name in enumerate(names):
        matrix[row] = np.load(_cache_path(directory, info[name].sha256), allow_pickle=False)
    return matrix, stats
