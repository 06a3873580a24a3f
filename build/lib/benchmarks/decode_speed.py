"""Decoding speed on the Flickr8k test split: batched greedy and beam-3 (against the seed's per-word predict loop,
for a merge decoder). For an attention decoder, the time includes reading the maps from the memory-mapped cache.

    python benchmarks/decode_speed.py --data ../shared/flickr8k --model outputs/flickr8k-benchmark
    python benchmarks/decode_speed.py --data ../shared/flickr8k --model models:/captioner@champion

Each decoding is timed `--repeat` times (default 3) and the median reported beside every time: single runs of the
attention decoder spread by a third on this shared 2-core machine.

The seed's loop is timed on a sample of images and extrapolated to the whole split by its number of model calls
(one per generated word, plus the end token), because running it on 1,000 images takes about ten minutes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.seed_model import build_seed_model, seed_greedy_caption
from captioning.decoding.captioner import Captioner
from captioning.evaluation.evaluate import decoder_inputs
from captioning.features.prepare import FeatureCache, load_and_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True, help="a trained captioner bundle, or a models:/ URI")
    parser.add_argument("--seed-images", type=int, default=10, help="images to run the seed's loop on")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each decoding (the median is reported)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
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
    out = Path(__file__).parent / "results" / f"decode_speed{'_attention' if config.decoder == 'attention' else ''}.json"
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
