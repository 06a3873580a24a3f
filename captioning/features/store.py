"""Batched feature extraction through a tf.data pipeline, cached on disk by encoder and image content.

What is cached is each image's spatial map (Xception at 299 px: 10 x 10 x 2048), in float16, in one memory-mapped
store per encoder setting (`Encoder.map_key`):

    <cache>/maps/<map key>/maps.f16   the maps, one fixed-size row per image, in the order they were extracted
    <cache>/maps/<map key>/index.txt  "<shape>" on the first line, then the image's content sha256 per row
    <cache>/maps/<map key>/lock       held while a process appends

A row is written before its index line, so an interrupted extraction leaves at most rows without a line, which the
next append overwrites. The pooled vector and every g x g grid are derived from the maps when a dataset is loaded,
so switching grids or decoders never extracts again; the attention decoder reads the maps it needs batch by batch.
The colour part (colour_grid > 0) is computed from the pixels, cached per image in <cache>/features/<colour key>/.
A changed image has a new hash and is extracted again; a stale entry cannot be read by mistake.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from captioning.core.cache import atomic_write, cache_root
from captioning.core.graph import aligned_zeros
from captioning.core.locks import FileLock
from captioning.data.images import ImageInfo, load_rgb
from captioning.features.encoders import Encoder
from captioning.features.inputs import ImageInputs, MemberInputs  # noqa: F401 (their home before inputs.py)


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
    load = tf.autograph.experimental.do_not_convert(load)  # tf.data converts by default (see model.graph_function)
    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size).prefetch(2)


class MapStore:
    """The float16 maps of one encoder setting, appended to by extraction and memory-mapped for reading."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.data, self.index_file = self.directory / "maps.f16", self.directory / "index.txt"
        self.shape: tuple[int, ...] | None = None
        self.rows: dict[str, int] = {}  # image sha256 -> its row
        self.count = 0  # rows with an index line (a hash is never appended twice, but count lines, not hashes)
        self.refresh()

    def refresh(self) -> None:
        if not self.index_file.is_file():
            return
        text = self.index_file.read_text()
        lines = text.split("\n")
        if not text.endswith("\n"):
            lines = lines[:-1]  # a line being written: its row is not complete
        lines = [line for line in lines if line]
        if not lines:
            return
        self.shape = tuple(int(n) for n in lines[0].split("x"))
        self.rows = {sha: row for row, sha in enumerate(lines[1:])}
        self.count = len(lines) - 1

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape)) * 2

    def array(self) -> np.ndarray:
        """All rows with an index line, memory-mapped read-only: (rows, *shape) float16."""
        if not self.count:
            return np.zeros((0, *(self.shape or (1, 1, 1))), np.float16)
        return np.memmap(self.data, np.float16, mode="r", shape=(self.count, *self.shape))

    def append(self, sha256s: list[str], maps: np.ndarray) -> None:
        """Add the maps of images (one per sha256; the caller holds the lock)."""
        maps = np.ascontiguousarray(maps, dtype=np.float16)
        if self.shape is None:
            self.shape = tuple(maps.shape[1:])
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.index_file, "w") as f:
                f.write("x".join(map(str, self.shape)) + "\n")
        if tuple(maps.shape[1:]) != self.shape:
            raise ValueError(f"map shape {maps.shape[1:]} does not match the store's {self.shape} ({self.directory})")
        with open(self.data, "ab") as f:
            f.truncate(self.count * self.row_bytes)  # drop rows of an interrupted append that have no line
            f.seek(self.count * self.row_bytes)
            f.write(maps.tobytes())
            f.flush()
            os.fsync(f.fileno())
        with open(self.index_file, "r+b") as f:
            text = f.read()
            f.truncate(text.rfind(b"\n") + 1)  # drop a line cut short by an interruption
            f.seek(0, os.SEEK_END)
            f.write("".join(f"{sha}\n" for sha in sha256s).encode())
        for sha in sha256s:
            self.rows[sha] = self.count
            self.count += 1

    def lock(self):
        """An exclusive lock on the store (a context manager), so that two extracting processes do not interleave."""
        return FileLock(self.directory / "lock")  # waits: the holder is extracting maps that this one then reads


# float16 -> float32 by table look-up: about 3x faster here than NumPy's or TensorFlow's own conversion, which made
# reading the maps of the 1,000 test images take longer than decoding them.
HALF_TO_FLOAT = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
READ_CHUNK = 32  # rows converted at a time, so that each block is still in the cache when it is added


class MapView:
    """Rows of memory-mapped maps in a given order, read (as float32, positions flattened: (n, P, C)) only when
    indexed with an array; slicing gives another view. With several parts (the plain and the mirrored images'
    maps, each a store array and the rows in it), a row is their average."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray]]):
        self.parts = [(array, np.asarray(rows, np.int64)) for array, rows in parts]

    def __len__(self) -> int:
        return len(self.parts[0][1])

    @property
    def map_shape(self) -> tuple[int, ...]:
        return tuple(self.parts[0][0].shape[1:])

    @property
    def positions(self) -> int:
        return int(np.prod(self.map_shape[:-1]))

    @property
    def channels(self) -> int:
        return int(self.map_shape[-1])

    def __getitem__(self, index) -> "np.ndarray | MapView":
        if isinstance(index, slice):
            return MapView([(array, rows[index]) for array, rows in self.parts])
        index = np.asarray(index)
        out = aligned_zeros((len(index), self.positions, self.channels))
        for array, rows in self.parts:
            rows = rows[index]
            order = np.argsort(rows, kind="stable")  # sorted reads from the memory map
            for start in range(0, len(order), READ_CHUNK):
                chunk = order[start:start + READ_CHUNK]
                block = np.take(HALF_TO_FLOAT, array[rows[chunk]].view(np.uint16))
                out[chunk] += block.reshape(len(chunk), self.positions, self.channels)
        if len(self.parts) > 1:
            out /= len(self.parts)
        return out

    def read(self) -> np.ndarray:
        return self[np.arange(len(self))]


def extract_features(names: list[str], paths: dict[str, Path], info: dict[str, ImageInfo], encoder: Encoder,
                     batch_size: int = 8, progress: bool = True) -> tuple[np.ndarray, ExtractionStats]:
    """Feature vectors of `names` in that order (derived from the maps), extracting only what the cache lacks."""
    matrix, _, stats = extract(names, paths, info, encoder, batch_size, progress)
    return matrix, stats


def extract(names: list[str], paths: dict[str, Path], info: dict[str, ImageInfo], encoder: Encoder,
            batch_size: int = 8, progress: bool = True) -> tuple[np.ndarray, MapView, ExtractionStats]:
    """Feature vectors of `names` in that order and a view of their maps, extracting only what the cache lacks."""
    store = MapStore(cache_root() / "maps" / encoder.map_key)
    colour_dir = cache_root() / "features" / encoder.colour_key if encoder.colour_grid else None
    stats = ExtractionStats(images=len(names))

    def complete(sha: str) -> bool:
        return sha in store.rows and (colour_dir is None or _cache_path(colour_dir, sha).is_file())

    # One extraction per distinct content: duplicate files share a hash and a cache entry.
    missing = {info[n].sha256: n for n in names if not complete(info[n].sha256)}
    stats.cache_hits = sum(info[n].sha256 not in missing for n in names)
    if missing:
        start = time.perf_counter()
        with store.lock():
            store.refresh()  # another process may have extracted some meanwhile
            todo = sorted(n for sha, n in missing.items() if not complete(sha))
            done = 0
            if todo:
                dataset = image_pipeline([paths[n] for n in todo], [info[n].needs_pil for n in todo], encoder,
                                         batch_size)
                bar = tqdm(total=len(todo), desc=f"features ({encoder.name} {encoder.image_size}px)", unit="img",
                           disable=not progress, mininterval=2.0)
                for batch in dataset:
                    batch_names = todo[done:done + len(batch)]
                    shas = [info[n].sha256 for n in batch_names]
                    new = [i for i, sha in enumerate(shas) if sha not in store.rows]
                    if new:
                        store.append([shas[i] for i in new], np.asarray(encoder.encode_maps(tf.gather(batch, new))))
                    if colour_dir is not None:
                        for sha, vector in zip(shas, encoder.encode_colour(batch).numpy()):
                            atomic_write(_cache_path(colour_dir, sha), lambda tmp, v=vector: np.save(tmp, v))
                    done += len(batch)
                    bar.update(len(batch))
                bar.close()
        stats.extracted = done
        stats.seconds = time.perf_counter() - start
    maps = MapView([(store.array(), np.array([store.rows[info[n].sha256] for n in names], np.int64))])
    colour = None
    if colour_dir is not None:
        colour = np.stack([np.load(_cache_path(colour_dir, info[n].sha256), allow_pickle=False) for n in names]) \
            if names else np.zeros((0, encoder.dim - encoder.base_dim), np.float32)
    return derive_features(encoder, maps, colour), maps, stats


def derive_features(encoder: Encoder, maps: MapView, colour: np.ndarray | None, chunk: int = 128) -> np.ndarray:
    """The feature vectors (pooled grid, then the colour part) of every row of `maps`, a chunk at a time."""
    out = np.zeros((len(maps), encoder.dim), np.float32)
    grid_dim = encoder.base_dim
    for start in range(0, len(maps), chunk):
        rows = np.arange(start, min(start + chunk, len(maps)))
        out[rows, :grid_dim] = encoder.derive(maps[rows].reshape(len(rows), *maps.map_shape))
    if colour is not None:
        out[:, grid_dim:] = colour
    return out
