"""Beam-3 BLEU on the dev split for several length penalties, with the mean caption length: how `length_penalty`
(score = log-probability / length ** length_penalty) was chosen. The test split is printed too, for information only.

    python benchmarks/length_penalty.py --data ../shared/flickr8k --model outputs/flickr8k-benchmark
"""
from __future__ import annotations

import argparse
from pathlib import Path

from captioning.captioner import Captioner
from captioning.pipeline import evaluate, load_and_report, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True, help="captioner bundle (benchmarks/flickr8k.py saves one)")
    parser.add_argument("--penalties", default="0,0.25,0.5,0.75,1,1.5")
    parser.add_argument("--beam", type=int, default=3)
    args = parser.parse_args()

    captioner = Captioner.load(Path(args.model))
    prepared = prepare(captioner.config, load_and_report(Path(args.data)), progress=False)
    print("| length penalty | dev BLEU-1 | dev BLEU-4 | dev mean length | test BLEU-4 |\n|---|---|---|---|---|")
    for penalty in (float(p) for p in args.penalties.split(",")):
        captioner.config.length_penalty = penalty
        dev, test = (evaluate(captioner, prepared, split, args.beam) for split in ("dev", "test"))
        length = sum(len(c.split()) for c in dev.captions.values()) / len(dev.captions)
        print(f"| {penalty:g} | {dev.scores['bleu1']:.4f} | {dev.scores['bleu4']:.4f} | {length:.2f} | "
              f"{test.scores['bleu4']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
