"""How much dev BLEU-4 moves with the choice of dev images: the noise that `search.promote_margin` must exceed.

    python benchmarks/dev_noise.py --data ../shared/flickr8k --model models:/captioner@champion
    python benchmarks/dev_noise.py --data ../shared/flickr8k --model A --model B    # also the paired difference

Each model captions the dev split once (its own beam width); the dev images are then resampled with replacement
(a bootstrap, 2,000 draws) and corpus BLEU-4 recomputed from per-image n-gram counts (equal to NLTK's corpus_bleu on
the full split: checked). Reported: each model's BLEU-4 and its standard deviation over the draws, and for two
models the standard deviation of their difference on the same draws. Results: benchmarks/results/dev_noise.json.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from captioning.decoding.captioner import Captioner
from captioning.evaluation.evaluate import decoder_inputs
from captioning.features.prepare import FeatureCache, load_and_report
from captioning.metrics.bleu import corpus_bleu_scores

DRAWS = 2000


def bleu_statistics(references: list[list[list[str]]], hypotheses: list[list[str]]) -> np.ndarray:
    """Per image: clipped n-gram matches and hypothesis n-grams for n = 1..4, hypothesis length, closest reference
    length (NLTK's corpus BLEU sums exactly these over the images)."""
    rows = []
    for refs, hyp in zip(references, hypotheses):
        row = []
        for n in range(1, 5):
            grams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            most = Counter()
            for ref in refs:
                for gram, count in Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1)).items():
                    most[gram] = max(most[gram], count)
            row += [sum(min(count, most[gram]) for gram, count in grams.items()), max(1, sum(grams.values()))]
        closest = min((abs(len(ref) - len(hyp)), len(ref)) for ref in refs)[1]
        rows.append(row + [len(hyp), closest])
    return np.array(rows, np.float64)


def bleu4(sums: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 of summed statistics (..., 10)."""
    matches, totals = sums[..., 0:8:2], sums[..., 1:8:2]
    hyp, ref = sums[..., 8], sums[..., 9]
    with np.errstate(divide="ignore"):
        log_precision = np.log(matches / totals).mean(axis=-1)
    brevity = np.where(hyp > ref, 1.0, np.exp(1 - ref / np.maximum(hyp, 1)))
    return np.where(matches.min(axis=-1) > 0, brevity * np.exp(log_precision), 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", action="append", required=True, help="a captioner bundle or models:/ URI (1 or 2)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dev_noise.json"))
    args = parser.parse_args()
    dataset = load_and_report(Path(args.data))
    names = dataset.split("dev")
    references = [dataset.captions[name] for name in names]
    draws = np.random.default_rng(0).integers(0, len(names), size=(DRAWS, len(names)))
    results, samples = [], []
    features = FeatureCache(dataset, progress=False)  # each setting the models read, prepared once
    for model in args.model[:2]:
        location = model
        if model.startswith("models:/"):
            from captioning.serving.mlflow_model import download_bundle

            location = download_bundle(model)
        captioner = Captioner.load(location)
        inputs = decoder_inputs(captioner, features, "dev")
        hypotheses = [alts[0][0].split() for alts in captioner.decode_features(inputs)]
        stats = bleu_statistics(references, hypotheses)
        full = float(bleu4(stats.sum(axis=0)))
        nltk = corpus_bleu_scores(references, hypotheses)["bleu4"]
        assert math.isclose(full, nltk, abs_tol=1e-9), (full, nltk)
        sample = bleu4(stats[draws].sum(axis=1))
        samples.append(sample)
        results.append({"model": model, "beam_width": captioner.config.beam_width, "dev_bleu4": full,
                        "bootstrap_std": float(sample.std())})
        print(f"{model}: dev BLEU-4 {full:.4f} (beam-{captioner.config.beam_width}), bootstrap std "
              f"{sample.std():.4f} over {DRAWS} draws of {len(names)} images")
    out = {"data": str(dataset.root), "images": len(names), "draws": DRAWS, "models": results}
    if len(samples) == 2:
        difference = samples[0] - samples[1]
        out["difference"] = {"observed": results[0]["dev_bleu4"] - results[1]["dev_bleu4"],
                             "bootstrap_std": float(difference.std())}
        print(f"difference: {out['difference']['observed']:+.4f}, bootstrap std {difference.std():.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
