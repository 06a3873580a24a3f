"""CIDEr-D against a fixed set of references whose document frequencies are counted once: the self-critical reward
(thousands of captions a step), the per-epoch dev score, consensus re-ranking; equal to pycocoevalcap's `Cider`
when the references are the scored set's own (tested)."""
from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np

from captioning.metrics.bleu import ngram_counts


def cider_scorer(references: list[list[list[str]]], raw_references=None):
    """The metric registry's per-epoch scorer: hypotheses -> {"cider": corpus CIDEr-D against `references`}, their
    document frequencies counted once."""
    scorer = CiderD(references)
    return lambda hypotheses: {"cider": scorer.corpus_score(hypotheses)}


class CiderD:
    """CIDEr-D (n-grams 1..4, clipped tf-idf, Gaussian length penalty with sigma 6, times 10) of captions against
    the references given here, whose document frequencies are counted once. With the scored set's own references
    it equals pycocoevalcap's `Cider`; with the train split's, it is the self-critical reward."""

    def __init__(self, references: list[list[list[str]]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        counts = [[ngram_counts(ref, n) for ref in refs] for refs in references]
        df: collections.Counter = collections.Counter()
        for refs in counts:
            df.update({gram for ref in refs for gram in ref})
        self.log_images = math.log(float(len(references)))
        self.log_df = {gram: math.log(max(1.0, d)) for gram, d in df.items()}
        self.refs = [[self._vector(ref) for ref in refs] for refs in counts]

    def _vector(self, counts: collections.Counter):
        """tf-idf weights by n-gram, the norm of each order's part, and the length as pycocoevalcap counts it."""
        weights, norms, length = {}, [0.0] * self.n, 0
        for gram, tf in counts.items():
            w = tf * (self.log_images - self.log_df.get(gram, 0.0))
            weights[gram] = w
            norms[len(gram) - 1] += w * w
            if len(gram) == 2:  # pycocoevalcap's "length" counts bigrams (its `n == 1` is the second order)
                length += tf
        return weights, [math.sqrt(x) for x in norms], length

    def scores(self, hypotheses: list[list[str]], images: list[int] | None = None) -> np.ndarray:
        """The CIDEr-D of each hypothesis against the references of image images[k] (default: the k-th)."""
        images = range(len(hypotheses)) if images is None else images
        return np.array([self._score(self._vector(ngram_counts(words, self.n)), image)
                         for words, image in zip(hypotheses, images)], np.float64)

    def mean_scores(self, hypotheses: list[list[str]], images: list[Sequence[int]]) -> np.ndarray:
        """Each hypothesis's mean CIDEr-D over the images images[k] (each against its own references)."""
        out = np.zeros(len(hypotheses))
        for k, (words, group) in enumerate(zip(hypotheses, images)):
            vector = self._vector(ngram_counts(words, self.n))
            out[k] = sum(self._score(vector, image) for image in group) / max(len(group), 1)
        return out

    def _score(self, vector, image: int) -> float:
        weights, norms, length = vector
        penalty_scale = 2 * self.sigma ** 2
        total = 0.0
        for ref_weights, ref_norms, ref_length in self.refs[image]:
            sims = [0.0] * self.n
            for gram, w in weights.items():
                r = ref_weights.get(gram)
                if r is not None:
                    sims[len(gram) - 1] += min(w, r) * r
            penalty = math.exp(-((length - ref_length) ** 2) / penalty_scale)
            for order in range(self.n):
                if norms[order] != 0 and ref_norms[order] != 0:
                    sims[order] /= norms[order] * ref_norms[order]
                total += sims[order] * penalty
        return total / self.n / len(self.refs[image]) * 10.0

    def corpus_score(self, hypotheses: list[list[str]]) -> float:
        return float(np.mean(self.scores(hypotheses)))
