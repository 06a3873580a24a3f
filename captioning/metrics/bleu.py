"""BLEU: NLTK's corpus BLEU-1..4 on the project's cleaned tokens (the workbench's own BLEU since the seed), and a
sentence-level BLEU-4 for the self-critical reward."""
from __future__ import annotations

import collections
import math
import warnings

import numpy as np

BLEU_WEIGHTS = {
    "bleu1": (1.0, 0.0, 0.0, 0.0),
    "bleu2": (0.5, 0.5, 0.0, 0.0),
    "bleu3": (1 / 3, 1 / 3, 1 / 3, 0.0),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}


def bleu_scorer(references: list[list[list[str]]], raw_references=None):
    """The metric registry's scorer: hypotheses -> BLEU-1..4 against `references`."""
    return lambda hypotheses: corpus_bleu_scores(references, hypotheses)


def corpus_bleu_scores(references: list[list[list[str]]], hypotheses: list[list[str]]) -> dict[str, float]:
    """references[i] holds the cleaned reference captions (word lists) of image i; hypotheses[i] its caption."""
    # NLTK's import takes seconds; imported here, decoding with consensus re-ranking (ngram_counts only) skips it.
    from nltk.translate.bleu_score import corpus_bleu

    check_lengths(references, hypotheses)
    with warnings.catch_warnings():  # NLTK warns when a hypothesis has no n-gram overlap; the score is then 0
        warnings.simplefilter("ignore")
        return {name: float(corpus_bleu(references, hypotheses, weights=weights))
                for name, weights in BLEU_WEIGHTS.items()}


def check_lengths(references, hypotheses) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} hypotheses")
    if not hypotheses:
        raise ValueError("no captions to score")



def ngram_counts(words: list[str], n: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for k in range(1, n + 1):
        counts.update(tuple(words[i:i + k]) for i in range(len(words) - k + 1))
    return counts



class SentenceBleu:
    """Sentence-level BLEU-4 of captions against the references given here (clipped n-gram precisions; orders 2-4
    smoothed by adding 1 to their counts, Lin and Och 2004, as NLTK's method2; the brevity penalty against the
    closest reference length, the shorter on a tie): a self-critical reward that also asks for captions no shorter
    than the references."""

    def __init__(self, references: list[list[list[str]]], n: int = 4):
        self.n = n
        self.clips, self.lengths = [], []
        for refs in references:
            clip: collections.Counter = collections.Counter()
            for ref in refs:
                clip |= ngram_counts(ref, n)  # the most times each n-gram occurs in one reference
            self.clips.append(clip)
            self.lengths.append(sorted({len(ref) for ref in refs}))

    def scores(self, hypotheses: list[list[str]], images: list[int] | None = None) -> np.ndarray:
        """The BLEU-4 of each hypothesis against the references of image images[k] (default: the k-th)."""
        images = range(len(hypotheses)) if images is None else images
        out = np.zeros(len(hypotheses))
        for k, (words, image) in enumerate(zip(hypotheses, images)):
            length = len(words)
            if length == 0:
                continue
            clip = self.clips[image]
            matches = [0] * self.n
            for gram, count in ngram_counts(words, self.n).items():
                matches[len(gram) - 1] += min(count, clip.get(gram, 0))
            if matches[0] == 0:
                continue
            log_precision = math.log(matches[0] / length)
            for order in range(2, self.n + 1):
                log_precision += math.log((matches[order - 1] + 1) / (max(length - order + 1, 1) + 1))
            closest = min(self.lengths[image], key=lambda r: (abs(r - length), r))
            brevity = 0.0 if length >= closest else 1.0 - closest / length
            out[k] = math.exp(brevity + log_precision / self.n)
        return out
