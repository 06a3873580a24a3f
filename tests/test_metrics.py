import pytest
from nltk.translate.bleu_score import corpus_bleu

from captioning.metrics import corpus_bleu_scores


def test_identical_captions_score_one():
    refs = [[["a", "dog", "runs", "on", "grass"]], [["two", "kids", "play", "in", "the", "park"]]]
    scores = corpus_bleu_scores(refs, [r[0] for r in refs])
    assert scores == pytest.approx({"bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0})


def test_matches_nltk_cumulative_weights_with_all_references():
    refs = [[["a", "black", "dog", "runs"], ["the", "dog", "is", "running", "fast"]],
            [["a", "man", "rides", "a", "bike"], ["someone", "on", "a", "bicycle"]]]
    hyps = [["a", "dog", "is", "running"], ["a", "man", "on", "a", "bike"]]
    scores = corpus_bleu_scores(refs, hyps)
    assert scores["bleu2"] == pytest.approx(corpus_bleu(refs, hyps, weights=(0.5, 0.5)))
    assert scores["bleu1"] > scores["bleu2"] > scores["bleu3"] >= scores["bleu4"]


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="reference sets"):
        corpus_bleu_scores([[["a"]]], [])
