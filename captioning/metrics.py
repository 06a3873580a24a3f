"""Corpus BLEU-1..4 as NLTK computes it: cumulative uniform weights, every reference of each image."""
from __future__ import annotations

import warnings

from nltk.translate.bleu_score import corpus_bleu

BLEU_WEIGHTS = {
    "bleu1": (1.0, 0.0, 0.0, 0.0),
    "bleu2": (0.5, 0.5, 0.0, 0.0),
    "bleu3": (1 / 3, 1 / 3, 1 / 3, 0.0),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}


def corpus_bleu_scores(references: list[list[list[str]]], hypotheses: list[list[str]]) -> dict[str, float]:
    """references[i] holds the cleaned reference captions (word lists) of image i; hypotheses[i] its caption."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} hypotheses")
    if not hypotheses:
        raise ValueError("no captions to score")
    with warnings.catch_warnings():  # NLTK warns when a hypothesis has no n-gram overlap; the score is then 0
        warnings.simplefilter("ignore")
        return {name: float(corpus_bleu(references, hypotheses, weights=weights))
                for name, weights in BLEU_WEIGHTS.items()}
