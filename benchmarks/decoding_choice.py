"""What the search's decoding choice (tuning/decoding_choice.py, search.decoding_choice) costs and gives: for each
grid, the seconds (wall, and this process's CPU: the Java scorers' own processes are not counted) of building the
neighbour index, choosing the beam width and re-ranking on dev, and scoring the chosen decoding on dev with every
metric, beside one plain decoding of dev with the model's own beam measured in the same run (a fresh load each, so
each pays its tracing as the search does); and the chosen setting with its dev score against the model's own.

    python benchmarks/decoding_choice.py --model outputs/shapes-base                       # the embedded dataset
    python benchmarks/decoding_choice.py --model models:/captioner@champion --data ../shared/flickr8k --grids small
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from captioning.data.synthetic import dataset_path
from captioning.evaluation.choices import build_neighbours, choose_rerank
from captioning.evaluation.evaluate import decoder_inputs, evaluate
from captioning.features.prepare import FeatureCache, load_and_report
from captioning.serving.load import load_captioner
from tuning.decoding_choice import GRIDS, describe


def timed(work):
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="captioner bundle or models:/ URI")
    parser.add_argument("--data", help="dataset folder (default: the embedded dataset)")
    parser.add_argument("--metric", default="bleu4", help="the dev score to choose by (default: bleu4)")
    parser.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()

    features = FeatureCache(load_and_report(dataset_path(args.data)), progress=False)
    first = load_captioner(args.model)
    for config in first.feature_groups:
        features(config)  # extracted (or read from the cache) before anything is timed
    own = (first.config.beam_width, first.config.rerank_neighbours, first.config.rerank_weight)
    _, plain_time = timed(lambda: first.decode_features(decoder_inputs(first, features, "dev")))
    print(f"own decoding ({describe(own)}): decoding dev once {plain_time['wall_s']:.1f} s wall, "
          f"{plain_time['cpu_s']:.1f} s CPU")
    results = {"command": "python " + " ".join(sys.argv), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
               "load_average_before": os.getloadavg(), "model": args.model, "data": str(features.dataset.root),
               "metric": args.metric,
               "dev_images": len(features.dataset.split("dev")), "own": list(own), "plain_decoding": plain_time,
               "grids": {}}
    for grid in args.grids:
        captioner = load_captioner(args.model)
        index, index_time = timed(lambda: build_neighbours(features(captioner.feature_groups[0])))
        captioner.neighbours = captioner.neighbours or index
        tried, choice_time = timed(lambda: choose_rerank(captioner, features, args.metric, *GRIDS[grid]))
        chosen = (captioner.config.beam_width, captioner.config.rerank_neighbours, captioner.config.rerank_weight)
        _, scoring_time = timed(lambda: evaluate(captioner, features, "dev", captioner.config.beam_width))
        total = {k: round(index_time[k] + choice_time[k] + scoring_time[k], 2) for k in index_time}
        results["grids"][grid] = {"settings": len(tried), "index": index_time, "choice": choice_time,
                                  "chosen_scoring": scoring_time, "total": total, "chosen": list(chosen),
                                  "own_dev_score": tried[own][args.metric],
                                  "chosen_dev_score": tried[chosen][args.metric]}
        print(f"{grid}: {len(tried)} settings; index {index_time['wall_s']:.1f} s, choice {choice_time['wall_s']:.1f} "
              f"s, scoring the chosen {scoring_time['wall_s']:.1f} s: {total['wall_s']:.1f} s wall "
              f"({total['wall_s'] / plain_time['wall_s']:.1f} plain decodings), {total['cpu_s']:.1f} s CPU; chosen "
              f"{describe(chosen)}: dev {args.metric} {tried[chosen][args.metric]:.4f} against its own "
              f"{tried[own][args.metric]:.4f}", flush=True)
    results["load_average_after"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
