"""Decoding speed on the Flickr8k test split: batched greedy and beam-3 (against the seed's per-word predict loop,
for a merge decoder). For an attention decoder, the time includes reading the maps from the memory-mapped cache.

    python benchmarks/decode_speed.py --data ../shared/flickr8k --model outputs/flickr8k-benchmark
    python benchmarks/decode_speed.py --data ../shared/flickr8k --model models:/captioner@champion

Each decoding is timed `--repeat` times (default 3) and the median reported beside every time: single runs of the
attention decoder spread by a third on this shared 2-core machine.

The seed's loop is timed on a sample of images and extrapolated to the whole split by its number of model calls
(one per generated word, plus the end token), because running it on 1,000 images takes about ten minutes.

`--untrained attention,transformer` compares decoder families in one run without trained models or extracted maps:
each is built at the experiment's base sizes (`--config`, default experiments/flickr8k.yaml, plus `--set`) with
random weights, its end token made unlikely so that every caption runs `--words` words (the same number of steps for
every family), and decodes `--images` images of random maps of the encoder's shape, greedy and beam-3.

    python benchmarks/decode_speed.py --data ../shared/flickr8k --untrained attention,transformer
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.seed_model import build_seed_model, seed_greedy_caption
from captioning.config import load_config
from captioning.data.text import Vocabulary
from captioning.decoding.captioner import Captioner
from captioning.decoding.search import beam_search, greedy_search
from captioning.evaluation.evaluate import decoder_inputs
from captioning.features import encoder_spec
from captioning.features.prepare import FeatureCache, load_and_report
from captioning.features.store import ImageInputs
from captioning.models import build_model, decoder_spec, make_step_decoder

PROJECT = Path(__file__).resolve().parents[1]


def _timed(decode, repeat: int) -> tuple[float, list[float]]:
    decode()  # trace
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        decode()
        runs.append(time.perf_counter() - start)
    return float(np.median(runs)), runs


def compare_untrained(args) -> None:
    """Decoder families at the experiment's sizes, random weights, the same number of steps each (see above)."""
    base = load_config(Path(args.config), args.set)
    dataset = load_and_report(Path(args.data))
    vocab = Vocabulary.build((c for n in dataset.split("train") for c in dataset.captions[n]), base.vocab_min_count)
    rng = np.random.default_rng(0)
    shape = encoder_spec(base.encoder).map_shape(base.image_size)
    maps = rng.gamma(0.5, 1.0, (args.images, shape[0] * shape[1], shape[2])).astype(np.float32)
    inputs = ImageInputs(maps.mean(axis=1), maps)
    max_length = args.words + 2  # start, the words, end
    result = {"images": args.images, "words": args.words, "vocabulary": len(vocab), "decoders": {}}
    for name in args.untrained.split(","):
        config = base.replace(decoder=name, lstm_layers=1 if decoder_spec(name).required.get("lstm_layers") else
                              base.lstm_layers)
        model = build_model(config, len(vocab), inputs if decoder_spec(name).reads_maps else inputs.features)
        bias = model.get_layer("logits").bias
        bias.assign(bias.numpy() - 1e4 * (np.arange(len(vocab)) == vocab.end_id))  # captions of max_length
        decoder = make_step_decoder(model, vocab)
        own = inputs if decoder_spec(name).reads_maps else inputs.features
        row = {}
        row["greedy_seconds"], row["greedy_seconds_runs"] = _timed(
            lambda: greedy_search(decoder, own, max_length), args.repeat)
        row["beam3_seconds"], row["beam3_seconds_runs"] = _timed(
            lambda: beam_search(decoder, own, max_length, 3, config.length_penalty), args.repeat)
        row["sizes"] = {k: getattr(config, k) for k in ("embedding_size", "units", "attention_units",
                                                        "transformer_layers", "transformer_heads", "transformer_ff")}
        result["decoders"][name] = row
        print(name, json.dumps(row), flush=True)
    names = list(result["decoders"])
    if len(names) == 2:
        first, second = (result["decoders"][n] for n in names)
        result[f"{names[1]}_speed_over_{names[0]}"] = {
            width: first[f"{width}_seconds"] / second[f"{width}_seconds"] for width in ("greedy", "beam3")}
    print(json.dumps(result, indent=2))
    out = Path(args.out or Path(__file__).parent / "results" / "decode_speed_families.json")
    out.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", help="a trained captioner bundle, or a models:/ URI")
    parser.add_argument("--untrained", metavar="DECODERS", help="compare these decoder families untrained (above)")
    parser.add_argument("--config", default=str(PROJECT / "experiments" / "flickr8k.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--words", type=int, default=12, help="words per caption with --untrained")
    parser.add_argument("--seed-images", type=int, default=10, help="images to run the seed's loop on")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each decoding (the median is reported)")
    parser.add_argument("--out", help="results file (default: benchmarks/results/decode_speed[_attention|_families].json)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if (args.model is None) == (args.untrained is None):
        parser.error("give --model (a trained captioner) or --untrained (decoder families to compare)")
    if args.untrained:
        compare_untrained(args)
        return
    if args.model.startswith("models:/"):
        from captioning.serving.mlflow_model import download_bundle

        args.model = download_bundle(args.model)
    captioner = Captioner.load(args.model)
    config = captioner.config
    features = decoder_inputs(captioner, FeatureCache(load_and_report(Path(args.data)), progress=False), "test")

    result = {"decoder": config.decoder, "images": len(features)}
    for name, width in (("greedy", 1), ("beam3", 3)):
        captioner.decode_features(features[:8], width)  # trace the step function
        runs = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            decoded = captioner.decode_features(features, width)
            runs.append(time.perf_counter() - start)
        result[f"{name}_seconds"] = float(np.median(runs))
        result[f"{name}_seconds_runs"] = runs
        if width == 1:
            calls = sum(len(d[0][0].split()) + 1 for d in decoded)  # the seed: one predict per word + end
    out = Path(args.out or Path(__file__).parent / "results" /
               f"decode_speed{'_attention' if config.decoder == 'attention' else ''}.json")
    if config.decoder == "attention" or captioner.members:  # the seed's loop is one merge model: nothing to compare
        print(json.dumps(result, indent=2))
        out.write_text(json.dumps(result, indent=2) + "\n")
        return

    seed_model = build_seed_model(len(captioner.vocab), config.max_length, features.shape[1],
                                  config.embedding_size, config.units, config.dropout)
    seed_model.predict([features[:1], np.zeros((1, config.max_length), np.int32)], verbose=0)  # build and trace
    sample_calls, start = 0, time.perf_counter()
    for feature in features[:args.seed_images]:
        # Untrained weights rarely emit the end token, so count the calls the loop really made.
        sample_calls += len(seed_greedy_caption(seed_model, feature, captioner.vocab.start_id,
                                                captioner.vocab.end_id, config.max_length))
    per_call = (time.perf_counter() - start) / sample_calls
    result.update({"seed_seconds_per_predict": per_call, "seed_predict_calls_for_split": calls,
                   "seed_greedy_seconds_estimated": per_call * calls})
    result["greedy_speedup"] = result["seed_greedy_seconds_estimated"] / result["greedy_seconds"]
    print(json.dumps(result, indent=2))
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
