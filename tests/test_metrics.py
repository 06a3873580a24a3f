import pytest
from nltk.translate.bleu_score import corpus_bleu

from captioning.metrics.bleu import corpus_bleu_scores


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


# --- The COCO caption metrics and our CIDEr-D ---------------------------------------------------------------------

import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402

from captioning import metrics  # noqa: E402
from captioning.metrics import coco  # noqa: E402
from captioning.metrics.bleu import SentenceBleu
from captioning.metrics.cider import CiderD  # noqa: E402
from captioning.metrics.coco import coco_scores

WORDS = "a the dog dogs man woman boy girl runs jumps sits on in at grass water ball red blue black white".split()


def _fixture(images=40, seed=3):
    """Generated captions: references and hypotheses share words, so every n-gram order has matches and misses."""
    rng = random.Random(seed)
    sentence = lambda: [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
    refs = [[sentence() for _ in range(rng.randint(1, 5))] for _ in range(images)]
    hyps = [rng.choice(r)[: rng.randint(0, 12)] + sentence()[: rng.randint(0, 3)] for r in refs]
    hyps[0] = []  # an empty caption scores, it does not break anything
    return refs, hyps


def test_cider_d_equals_pycocoevalcap_on_the_scored_sets_own_references():
    refs, hyps = _fixture()
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    theirs_mean, theirs = Cider().compute_score(gts, res)
    ours = CiderD(refs).scores(hyps)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert CiderD(refs).corpus_score(hyps) == pytest.approx(theirs_mean, abs=1e-6)
    assert ours.max() > 1.0  # the fixture does have overlapping captions


def test_sentence_bleu_equals_nltks_with_lin_och_smoothing():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    refs, hyps = _fixture()
    smooth = SmoothingFunction().method2
    theirs = [sentence_bleu(r, h, smoothing_function=smooth) if h else 0.0 for r, h in zip(refs, hyps)]
    scorer = SentenceBleu(refs)
    np.testing.assert_allclose(scorer.scores(hyps), theirs, rtol=0, atol=1e-9)
    assert scorer.scores([hyps[7]], [7])[0] == pytest.approx(theirs[7]) and max(theirs) > 0.5
    reference = "a dog runs on the grass with a red ball".split()
    short, full = SentenceBleu([[reference]]).scores([reference[:5], reference], [0, 0])
    assert full == pytest.approx(1.0) and short < 0.5  # precise but short: the brevity penalty


def test_cider_d_with_fixed_references_scores_any_image_index():
    refs, hyps = _fixture()
    scorer = CiderD(refs)
    # Scoring image 5's references against image 5 (by index) equals scoring them in order.
    assert scorer.scores([hyps[5], hyps[5]], [5, 5]) == pytest.approx([scorer.scores(hyps)[5]] * 2)
    # A caption equal to every reference of its image scores higher than a caption of unseen words.
    best = scorer.scores([refs[2][0]], [2])[0]
    assert best > scorer.scores([["zebra", "quietly", "knits"]], [2])[0] == 0.0


def test_coco_scores_match_pycocoevalcaps_scorers_on_our_tokens(monkeypatch):
    # Without Java the COCO metrics run on our cleaned tokens: the same input as pycocoevalcap's scorers get here.
    monkeypatch.setattr(coco, "java_available", lambda: False)
    refs, hyps = _fixture()
    raw_refs = [[" ".join(r).capitalize() + "." for r in rs] for rs in refs]  # cleaning removes case and punctuation
    scores = coco_scores(raw_refs, [" ".join(h) for h in hyps])
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [scores[f"coco_bleu{n}"] for n in range(1, 5)] == pytest.approx(bleu, abs=1e-9)
    assert scores["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-9)
    assert scores["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-9)
    assert "meteor" not in scores and metrics.unavailable("dev_meteor") is not None


def _java_or_skip() -> None:
    """Skip without Java; but where $CAPTIONING_REQUIRE_JAVA=1 (CI: .ci/run installs Java) a missing Java fails."""
    if shutil.which("java") is not None:
        return
    if os.environ.get("CAPTIONING_REQUIRE_JAVA") == "1":
        pytest.fail("CAPTIONING_REQUIRE_JAVA=1 but there is no java on PATH, so METEOR and the PTB tokenizer cannot "
                    "run: install a Java runtime (sudo apt-get install default-jre-headless) or unset "
                    "CAPTIONING_REQUIRE_JAVA")
    pytest.skip("no java on PATH: METEOR and the PTB tokenizer cannot run (apt-get install default-jre-headless)")


def test_coco_scores_with_java_tokenize_and_score_meteor(monkeypatch):
    _java_or_skip()
    monkeypatch.setenv("CAPTIONING_JAVA_METRICS", "on")
    refs = [["A dog runs on the grass.", "The brown dog is running!"], ["Two kids play in a park.", "Kids playing."]]
    hyps = ["a dog runs on the grass", "two kids play in the park"]
    scores = coco_scores(refs, hyps)
    assert set(scores) >= {"coco_bleu1", "coco_bleu4", "meteor", "rouge_l", "cider"}
    assert 0.3 < scores["meteor"] < 1.0 and scores["coco_bleu1"] > 0.8
    # Identical captions score the maximum on every metric that has one.
    perfect = coco_scores(refs, [r[0] for r in refs])
    assert perfect["coco_bleu1"] == pytest.approx(1.0) and perfect["rouge_l"] > scores["rouge_l"]


def test_unknown_metric_name_is_an_error():
    with pytest.raises(metrics.MetricError, match="unknown metric 'dev_cidr'"):
        metrics.unavailable("dev_cidr")
