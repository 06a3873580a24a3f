"""Training throughput of the three decoders on Flickr8k, as predicted words per second and as achieved GFLOPS
against this machine's float32 matmul peak measured in the same run; plus the seed's prefix expansion for comparison.

- Peak: a loop of 2048 x 2048 float32 matmuls (TensorFlow, all cores).
- Each decoder trains (Adam, teacher forcing, the masked loss) on batches of the real train captions and the real
  cached features and maps (extracted first if missing), built by the trainer's own batching. With `--random-maps N`
  the first N train images get random maps and vectors of the encoder's shapes instead (no extraction; the time of a
  step depends on the shapes only, but the reading column then reads memory, not the cache).
- FLOPs are counted from the layer sizes: 2 per multiply-add of every matrix product of the forward pass, attention
  scores and attention-weighted sums included, padding positions included (they are computed), and the causal
  self-attention of the transformer counted whole (T x T: it is computed whole, then masked); times 3 for forward
  and backward. Element-wise work (activations, softmax, layer norm, the loss) is not counted.
- Reading: the time the batching spends per batch (the maps come from the memory-mapped float16 cache), against
  the time of a training step, to show whether reading the cache could hold training back.

Each decoder is measured at the sizes of `--set` (default: experiments/flickr8k.yaml's base config, whose keys of
other families keep their defaults).

    python benchmarks/train_speed.py --data ../shared/flickr8k [--batches 40] [--random-maps 1000] [--set units=512]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from benchmarks.seed_model import build_seed_model, prefix_batches
from captioning.config import load_config
from captioning.data.text import Vocabulary
from captioning.features import encoder_spec
from captioning.features.prepare import load_and_report, prepare
from captioning.features.store import ImageInputs
from captioning.models import build_model, decoder_spec
from captioning.models.base import masked_cross_entropy
from captioning.training.batches import CaptionBatches, seed_everything

PROJECT = Path(__file__).resolve().parents[1]
DECODERS = ("merge", "attention", "transformer")


def matmul_peak_gflops(size: int = 2048, seconds: float = 5.0) -> float:
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    loop = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    loop(a, b).numpy()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        loop(a, b).numpy()
        runs += 1
    return 2 * size ** 3 * runs / (time.perf_counter() - start) / 1e9


def forward_flops(config, vocab: int, x, y) -> float:
    """Multiply-adds x 2 of the matrix products of one forward pass over a batch."""
    u, e = config.units, config.embedding_size
    n, steps = y.shape
    if config.decoder == "transformer":
        maps, features, _, _ = x
        images, positions, channels = maps.shape
        d, layers, memory = e, config.transformer_layers, positions + 1
        per_image = positions * channels * d + features.shape[1] * d + memory * d * 2 * d * layers
        per_position = layers * (3 * d * d + d * d + d * d + d * d + 2 * d * config.transformer_ff  # projections, FF
                                 + 2 * steps * d + 2 * memory * d) + d * vocab  # self and cross scores + sums; logits
        return 2.0 * (images * per_image + n * steps * per_position)
    if config.decoder == "attention":
        maps, features, _, _ = x
        images, positions, channels = maps.shape
        a = config.attention_units
        per_image = positions * channels * u + positions * u * a + 2 * features.shape[1] * u
        per_step = (e * 4 * u + u * (4 * u + a + 1) + positions * a + positions * u + u * 4 * u
                    + 2 * u * e + e * vocab)
        return 2.0 * (images * per_image + n * steps * per_step)
    features = x[0]
    lstm = sum((e if layer == 0 else u) * 4 * u + u * 4 * u for layer in range(config.lstm_layers))
    return 2.0 * (n * features.shape[1] * u + n * steps * (lstm + u * u + u * vocab))


def measure(config, vocab_size: int, batches: CaptionBatches, count: int, inputs) -> dict:
    model = build_model(config, vocab_size, inputs)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=masked_cross_entropy, jit_compile=False)
    for i in range(2):  # build and trace
        model.train_on_batch(*batches[i])
    reading = training = flops = 0.0
    words = 0
    for i in range(count):
        start = time.perf_counter()
        x, y = batches[(i + 2) % len(batches)]
        reading += time.perf_counter() - start
        start = time.perf_counter()
        model.train_on_batch(x, y)
        training += time.perf_counter() - start
        flops += 3 * forward_flops(config, vocab_size, x, y)
        words += int((y != 0).sum())
    return {"decoder": config.decoder, "words_per_second": words / training, "gflops": flops / training / 1e9,
            "train_ms_per_batch": 1000 * training / count, "read_ms_per_batch": 1000 * reading / count,
            "captions_per_batch": float(np.mean([len(batches[(i + 2) % len(batches)][1]) for i in range(5)]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--config", default=str(PROJECT / "experiments" / "flickr8k.yaml"),
                        help="the experiment whose base config sizes the decoders")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides for every decoder (decoder= is ignored)")
    parser.add_argument("--random-maps", type=int, default=0, metavar="N",
                        help="train on the first N train images with random maps of the encoder's shape (no "
                             "extraction)")
    parser.add_argument("--decoders", default=",".join(DECODERS), help="which decoders, comma-separated")
    parser.add_argument("--out", default="train_speed.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    base = load_config(Path(args.config), args.set)
    seed_everything(0)
    dataset = load_and_report(Path(args.data))
    names = dataset.split("train")
    if args.random_maps:
        names = names[:args.random_maps]
        rng = np.random.default_rng(0)
        shape = encoder_spec(base.encoder).map_shape(base.image_size)
        maps = rng.gamma(0.5, 1.0, (len(names), shape[0] * shape[1], shape[2])).astype(np.float32)  # ReLU-like
        train_inputs = ImageInputs(maps.mean(axis=1), maps)
    else:
        prepared = prepare(base.replace(decoder="attention"), dataset)
        train_inputs = prepared.inputs("train", "attention")
    vocab = Vocabulary.build((c for n in dataset.split("train") for c in dataset.captions[n]), base.vocab_min_count)
    captions = [[vocab.encode(c, base.max_length) for c in dataset.captions[n]] for n in names]

    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048 x 2048): {peak:.0f} GFLOPS", flush=True)
    results = []
    for decoder in args.decoders.split(","):
        config = base.replace(decoder=decoder, lstm_layers=1 if decoder == "attention" else base.lstm_layers)
        reads_maps = decoder_spec(decoder).reads_maps
        inputs = train_inputs if reads_maps else train_inputs.features
        batches = CaptionBatches(inputs, captions, config.batch_size, shuffle=True, seed=0, by_image=reads_maps)
        row = measure(config, len(vocab), batches, args.batches, inputs)
        row["share_of_peak"] = row["gflops"] / peak
        row["sizes"] = {k: getattr(config, k) for k in ("embedding_size", "units", "attention_units",
                                                        "transformer_layers", "transformer_heads", "transformer_ff",
                                                        "lstm_layers", "batch_size")}
        results.append(row)
        print(json.dumps(row), flush=True)

    features = train_inputs.features
    max_length = max(len(seq) for caps in captions for seq in caps)
    seed_model = build_seed_model(len(vocab), max_length, features.shape[1], base.embedding_size, base.units,
                                  base.dropout)
    generator = prefix_batches(features, captions, max_length, len(vocab), base.batch_size)
    seed_model.train_on_batch(*next(generator))
    start = time.perf_counter()
    for _ in range(args.batches):
        seed_model.train_on_batch(*next(generator))
    seed_words = args.batches * base.batch_size / (time.perf_counter() - start)
    result = {"matmul_peak_gflops": peak, "batch_size": base.batch_size, "units": base.units,
              "embedding_size": base.embedding_size, "attention_units": base.attention_units,
              "vocabulary": len(vocab), "random_maps": args.random_maps, "decoders": results,
              "seed_prefix_expansion_words_per_second": seed_words,
              "merge_speedup_over_seed": results[0]["words_per_second"] / seed_words}
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / args.out
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
