"""Training throughput: teacher forcing over whole captions against the seed's prefix expansion.

Same decoder sizes, same captions (the Flickr8k train split), same batch size; image features are random (their
values do not change the cost). Tokens per second counts predicted words: one per sample for the seed, every real
(non-padding) target for teacher forcing.

    python benchmarks/train_speed.py --data ../shared/flickr8k [--batches 60]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.seed_model import build_seed_model, prefix_batches  # noqa: E402
from captioning.config import load_config  # noqa: E402
from captioning.model import build_decoder, masked_cross_entropy  # noqa: E402
from captioning.pipeline import load_and_report  # noqa: E402
from captioning.text import Vocabulary  # noqa: E402
from captioning.train import CaptionBatches, seed_everything  # noqa: E402


def timed(step, batches: int, tokens_of) -> float:
    step(0)  # build and trace
    step(1)
    tokens, start = 0, time.perf_counter()
    for i in range(batches):
        tokens += tokens_of(step(i + 2))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = load_config(None, args.set)
    seed_everything(0)
    dataset = load_and_report(Path(args.data))
    names = dataset.split("train")
    vocab = Vocabulary.build((c for n in names for c in dataset.captions[n]), config.vocab_min_count)
    captions = [[vocab.encode(c, config.max_length) for c in dataset.captions[n]] for n in names]
    features = np.random.default_rng(0).normal(size=(len(names), 2048)).astype(np.float32)

    model = build_decoder(config, len(vocab), 2048)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=masked_cross_entropy, jit_compile=False)
    batches = CaptionBatches(features, captions, config.batch_size, shuffle=True, seed=0)

    def teacher_step(i):
        x, y = batches[i % len(batches)]
        model.train_on_batch(x, y)
        return y

    teacher = timed(teacher_step, args.batches, lambda y: int((y != 0).sum()))

    max_length = max(len(seq) for caps in captions for seq in caps)
    seed_model = build_seed_model(len(vocab), max_length, 2048, config.embedding_size, config.units, config.dropout)
    generator = prefix_batches(features, captions, max_length, len(vocab), config.batch_size)

    def seed_step(i):
        x, y = next(generator)
        seed_model.train_on_batch(x, y)
        return y

    seed = timed(seed_step, args.batches, lambda y: len(y))
    result = {"batch_size": config.batch_size, "units": config.units, "embedding_size": config.embedding_size,
              "teacher_forcing_tokens_per_second": teacher, "seed_prefix_expansion_tokens_per_second": seed,
              "speedup": teacher / seed}
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "train_speed.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
