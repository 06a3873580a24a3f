"""Beam-3 BLEU on the dev split for several length penalties and n-gram blocking settings, with the mean caption
length and the share of captions that repeat a word pair: how `length_penalty` (score = log-probability / length
** length_penalty) and `no_repeat_ngram` are chosen. The test split is printed too, for information only.

    python benchmarks/length_penalty.py --data ../shared/flickr8k --model outputs/flickr8k-benchmark
    python benchmarks/length_penalty.py --data ../shared/flickr8k --model models:/captioner@champion \\
        --penalties 0.5 --no-repeat-ngram 0,2,3
"""
from __future__ import annotations

import argparse
from pathlib import Path

from captioning.evaluation.evaluate import evaluate
from captioning.features.prepare import FeatureCache, load_and_report
from captioning.serving.load import load_captioner


def repeats_a_pair(caption: str) -> bool:
    words = caption.split()
    pairs = list(zip(words, words[1:]))
    return len(set(pairs)) < len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True, help="captioner bundle (benchmarks/flickr8k.py saves one) or a "
                        "models:/ URI")
    parser.add_argument("--penalties", default="0,0.25,0.5,0.75,1,1.5")
    parser.add_argument("--no-repeat-ngram", default="0", help="comma-separated n (0: off)")
    parser.add_argument("--beam", type=int, default=3)
    args = parser.parse_args()

    captioner = load_captioner(args.model)
    features = FeatureCache(load_and_report(Path(args.data)), progress=False)  # an ensemble's members: each its own
    print("| length penalty | no_repeat_ngram | dev BLEU-1 | dev BLEU-4 | dev CIDEr-D | dev mean length "
          "| dev captions repeating a word pair | dev decoding | test BLEU-4 |\n|---|---|---|---|---|---|---|---|---|")
    for penalty in (float(p) for p in args.penalties.split(",")):
        for ngram in (int(n) for n in args.no_repeat_ngram.split(",")):
            captioner.config = captioner.config.replace(length_penalty=penalty, no_repeat_ngram=ngram)
            dev, test = (evaluate(captioner, features, split, args.beam) for split in ("dev", "test"))
            captions = list(dev.captions.values())
            length = sum(len(c.split()) for c in captions) / len(captions)
            repeating = sum(map(repeats_a_pair, captions)) / len(captions)
            print(f"| {penalty:g} | {ngram} | {dev.scores['bleu1']:.4f} | {dev.scores['bleu4']:.4f} | "
                  f"{dev.scores.get('cider', float('nan')):.4f} | {length:.2f} | {repeating:.1%} | "
                  f"{dev.seconds:.1f} s | {test.scores['bleu4']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
