"""Consensus reranking: a beam's captions re-ordered by how well they agree with what people wrote for the training
images that look most alike (Devlin et al. 2015, "Exploring nearest neighbor approaches for image captioning").

Each candidate caption's consensus is its CIDEr-D against the captions of the `k` training images nearest to the
image (cosine similarity of the features the captioner's first decoder reads), with the training split's document
frequencies, so that it means the same for one uploaded photo as for a test set. The candidates are then ranked by
weight x consensus + (1 - weight) x the beam's own score. On the 2026-11-30 Flickr8k ensemble it raised dev BLEU-1..4
and CIDEr-D together (see the README), choosing among the beam's captions only: nothing is copied from the
neighbours.

The index (the training images' normalised feature vectors in float16 and their captions) travels in the captioner
bundle as neighbours.npz, so that a registered model reranks where it is served, offline.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from captioning.metrics.cider import CiderD

FILE = "neighbours.npz"


class Neighbours:
    def __init__(self, features: np.ndarray, captions: list[list[str]], normalised: bool = False):
        """`features`: one row per training image (`normalised`: already of unit length, as saved); `captions`: its
        reference captions (strings of tokens)."""
        if len(features) != len(captions) or not len(captions) or np.ndim(features) != 2:
            raise ValueError(f"a neighbour index needs one feature row and one caption list per image, got "
                             f"features of shape {np.shape(features)} and {len(captions)} caption lists")
        if not normalised:
            norms = np.linalg.norm(features.astype(np.float32), axis=1, keepdims=True)
            features = features / np.maximum(norms, 1e-12)
        self.features = features.astype(np.float16)
        self.captions = [list(c) for c in captions]
        self._cider: CiderD | None = None
        self._table: np.ndarray | None = None

    @property
    def cider(self) -> CiderD:
        """CIDEr-D against each training image's captions, with the training split's document frequencies (built
        on first use: a few seconds for Flickr8k)."""
        if self._cider is None:
            self._cider = CiderD([[c.split() for c in refs] for refs in self.captions])
        return self._cider

    def nearest(self, queries: np.ndarray, k: int, chunk: int = 512) -> np.ndarray:
        """For each query row, the indices of its k most similar training images, most similar first."""
        k = min(k, len(self.captions))
        if self._table is None:  # float32 once (the products would be slower in float16)
            self._table = self.features.astype(np.float32)
        table = self._table
        out = np.zeros((len(queries), k), np.int64)
        for start in range(0, len(queries), chunk):
            rows = np.asarray(queries[start:start + chunk], np.float32)
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
            similarity = rows @ table.T
            top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
            out[start:start + len(rows)] = np.take_along_axis(top, order, axis=1)
        return out

    def consensus(self, candidates: list[list[str]], queries: np.ndarray, k: int) -> list[np.ndarray]:
        """For each image (a row of `queries`), the consensus of each of its candidate captions."""
        if queries.shape[1] != self.features.shape[1]:
            raise ValueError(f"the neighbour index holds {self.features.shape[1]}-d features but the images have "
                             f"{queries.shape[1]}-d ones: it was built for another encoder setting")
        near = self.nearest(queries, k)
        flat = [caption.split() for captions in candidates for caption in captions]
        scores = self.cider.mean_scores(flat, [near[image] for image, captions in enumerate(candidates)
                                               for _ in captions])
        out, position = [], 0
        for captions in candidates:
            out.append(scores[position:position + len(captions)])
            position += len(captions)
        return out

    def rerank(self, alternatives: list[list[tuple[str, float]]], queries: np.ndarray, k: int,
               weight: float) -> tuple[list[list[tuple[str, float]]], list[np.ndarray]]:
        """See `order_by`, with the consensus of the k nearest training images."""
        return order_by(alternatives, self.consensus([[c for c, _ in options] for options in alternatives], queries,
                                                     k), weight)

    def save(self, directory: Path) -> None:
        """The features (float16) and the captions as UTF-8 text, one per line (a caption is one line of tokens)."""
        lengths = np.array([len(c) for c in self.captions], np.int64)
        text = "\n".join(c for refs in self.captions for c in refs).encode("utf-8")
        np.savez(Path(directory) / FILE, features=self.features, caption_counts=lengths,
                 captions=np.frombuffer(text, np.uint8))

    @classmethod
    def load(cls, directory: Path) -> "Neighbours | None":
        """The bundle's index, or None if it has none; ValueError if the file is not a whole index."""
        path = Path(directory) / FILE
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                features, counts, captions = data["features"], data["caption_counts"], data["captions"]
            # (the first indices of 2026-11-30 held the captions as an array of strings)
            flat = (captions.tobytes().decode("utf-8").split("\n") if captions.dtype == np.uint8
                    else captions.tolist())
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"cannot read {path} ({type(exc).__name__}: {exc})") from None
        bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if bounds[-1] != len(flat) or (counts < 0).any():
            raise ValueError(f"{path} lists {bounds[-1]} captions by image but holds {len(flat)}")
        return cls(features, [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])], normalised=True)


def order_by(alternatives: list[list[tuple[str, float]]], consensus: list[np.ndarray],
             weight: float) -> tuple[list[list[tuple[str, float]]], list[np.ndarray]]:
    """Each image's (caption, beam score) alternatives ordered by weight x consensus + (1 - weight) x beam score,
    with that mixed score, and for each image the order taken (indices into its alternatives)."""
    ranked, orders = [], []
    for options, agree in zip(alternatives, consensus):
        mixed = weight * agree + (1.0 - weight) * np.array([score for _, score in options])
        order = np.argsort(-mixed, kind="stable")
        ranked.append([(options[i][0], float(mixed[i])) for i in order])
        orders.append(order)
    return ranked, orders


def query_features(inputs) -> np.ndarray:
    """The feature vectors the neighbours are found by: those of the captioner's first feature setting (for
    MemberInputs its first part; for ImageInputs their vectors, not the maps)."""
    parts = getattr(inputs, "parts", None)
    if parts is not None:
        inputs = parts[0]
    return np.asarray(getattr(inputs, "features", inputs), np.float32)
