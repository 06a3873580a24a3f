"""Scoring speed: all caption metrics on 1,000 Flickr8k test captions, and our CIDEr-D against pycocoevalcap's.

    python benchmarks/metrics_speed.py --data ../shared/flickr8k

No model is needed: each test image's "generated" caption is one of its own references, cut short and with a word
changed, and it is scored against the other four (a fair stand-in for a model's caption in length and overlap).
Timed: `coco_scores` (PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D; SPICE when it runs) plus NLTK BLEU-1..4,
the first call (METEOR's Java start included) and a second one; and the self-critical reward's CIDEr-D of 30,000
sampled captions (6,000 train images x 5), ours with the train split's document frequencies counted once against
pycocoevalcap's `CiderScorer`, which counts them again on every call, on a 3,000-caption slice.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from captioning.data.dataset import load_dataset
from captioning.metrics.bleu import corpus_bleu_scores
from captioning.metrics.cider import CiderD
from captioning.metrics.coco import coco_scores


def _stand_in(words: list[str], rng: random.Random, vocabulary: list[str]) -> list[str]:
    words = list(words[: max(3, len(words) - rng.randint(0, 3))])
    words[rng.randrange(len(words))] = rng.choice(vocabulary)
    return words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    dataset = load_dataset(Path(args.data))
    rng = random.Random(0)
    vocabulary = sorted({w for caps in dataset.captions.values() for c in caps for w in c})
    names = dataset.split("test")[: args.images]
    hyps = [_stand_in(dataset.captions[n][0], rng, vocabulary) for n in names]
    raw_refs = [dataset.raw_captions[n][1:] for n in names]
    clean_refs = [dataset.captions[n][1:] for n in names]

    result = {"captions": len(names)}
    for attempt in ("first", "second"):
        start = time.perf_counter()
        scores = coco_scores(raw_refs, [" ".join(h) for h in hyps])
        scores |= corpus_bleu_scores(clean_refs, hyps)
        result[f"all_metrics_{attempt}_seconds"] = time.perf_counter() - start
    result["scores"] = scores

    train = dataset.split("train")
    train_refs = [dataset.captions[n] for n in train]
    start = time.perf_counter()
    scorer = CiderD(train_refs)
    result["cider_d_setup_seconds"] = time.perf_counter() - start
    samples = [_stand_in(rng.choice(refs), rng, vocabulary) for refs in train_refs for _ in range(5)]
    images = [i for i in range(len(train_refs)) for _ in range(5)]
    start = time.perf_counter()
    scorer.scores(samples, images)
    result["cider_d_30k_seconds"] = time.perf_counter() - start

    from pycocoevalcap.cider.cider_scorer import CiderScorer

    part = 3000
    start = time.perf_counter()
    theirs = CiderScorer(n=4, sigma=6.0)
    for words, image in zip(samples[:part], images[:part]):
        theirs += (" ".join(words), [" ".join(r) for r in train_refs[image]])
    theirs.compute_score()
    seconds = time.perf_counter() - start
    result["pycocoevalcap_3k_seconds"] = seconds
    result["pycocoevalcap_30k_seconds_extrapolated"] = seconds * len(samples) / part
    result["note"] = ("pycocoevalcap's scorer takes its document frequencies from the captions it is given, so it "
                      "cannot give the reward's train-split frequencies without a rebuild of its state per call")
    for key, value in result.items():
        print(f"{key}: {value}")
    out = Path(__file__).parent / "results" / "metrics_speed.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
