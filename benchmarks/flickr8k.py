"""Flickr8k end to end: Xception features for every image, the default config trained on the official train split,
selected on dev, scored on the 1,000 test images with greedy and beam-3 decoding, with wall times.

    python benchmarks/flickr8k.py --data ../shared/flickr8k [--config experiments/X.yaml] [--set key=value]

Also times the bare Xception model on in-memory batches, the figure the extraction pipeline should match.
Writes benchmarks/results/flickr8k.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from captioning.config import load_config
from captioning.features.encoders import make_encoder
from captioning.features.prepare import load_and_report, prepare
from captioning.training.run import train_and_evaluate


def bare_model_speed(encoder, images: int = 64, batch_size: int = 8) -> float:
    """Images per second of the encoder alone on preprocessed in-memory batches."""
    batch = tf.random.uniform((batch_size, encoder.image_size, encoder.image_size, 3), -1, 1)
    np.asarray(encoder.encode_maps(batch))  # build and trace (a tensor, or an array with OpenVINO)
    start = time.perf_counter()
    for _ in range(images // batch_size):
        np.asarray(encoder.encode_maps(batch))
    return images / (time.perf_counter() - start)


def machine() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Flickr8k folder")
    parser.add_argument("--config", help="experiment file (default: the built-in default config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "flickr8k.json"))
    parser.add_argument("--save", default=str(Path(__file__).resolve().parents[1] / "outputs" / "flickr8k-benchmark"),
                        help="where to save the trained captioner (used by benchmarks/decode_speed.py)")
    args = parser.parse_args()

    config = load_config(args.config, args.set)
    start = time.perf_counter()
    dataset = load_and_report(Path(args.data), seed=config.seed)
    load_seconds = time.perf_counter() - start
    bare = bare_model_speed(make_encoder(config))
    print(f"bare {config.encoder} {config.image_size}px: {bare:.2f} img/s")
    prepared = prepare(config, dataset)
    stats = prepared.stats
    print(f"extraction: {stats.extracted} extracted, {stats.cache_hits} cached, {stats.seconds:.0f}s")
    result = train_and_evaluate(config, prepared, eval_splits=("dev", "test"))
    training = result.training
    result.captioner.save(Path(args.save))
    rows = {f"{ev.split}_{'greedy' if ev.beam_width == 1 else f'beam{ev.beam_width}'}":
            {**ev.scores, "seconds": ev.seconds} for ev in result.evaluations}
    report = {
        "date": datetime.date.today().isoformat(), "machine": machine(), "config": config.to_dict(),
        "images": {split: len(dataset.splits[split]) for split in dataset.splits},
        "load_and_check_seconds": load_seconds, "bare_model_images_per_second": bare,
        "extraction": {"extracted": stats.extracted, "cache_hits": stats.cache_hits, "seconds": stats.seconds,
                       "images_per_second": stats.images_per_second},
        "training": {"epochs": len(training.history), "best_epoch": training.best_epoch,
                     "seconds": training.seconds, "seconds_per_epoch": training.seconds / len(training.history),
                     "train_tokens_per_epoch": training.train_tokens, "history": training.history},
        "scores": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("\n| split | decoding | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | decode time (s) |\n|---|---|---|---|---|---|---|")
    for key, row in rows.items():
        split, decoding = key.split("_")
        print(f"| {split} | {decoding} | {row['bleu1']:.3f} | {row['bleu2']:.3f} | {row['bleu3']:.3f} | "
              f"{row['bleu4']:.3f} | {row['seconds']:.2f} |")
    print(f"\nextraction {stats.seconds:.0f}s ({stats.images_per_second:.2f} img/s; bare model {bare:.2f} img/s), "
          f"training {training.seconds:.0f}s over {len(training.history)} epochs "
          f"({training.seconds / len(training.history):.0f}s/epoch, best epoch {training.best_epoch}); "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
