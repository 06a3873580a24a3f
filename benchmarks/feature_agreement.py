"""How far are one encoder runtime's cached maps from TensorFlow's, over a whole dataset? Reads both feature caches
(extracting what is missing) and compares every image's map cell by cell, and its pooled vector.

    python benchmarks/feature_agreement.py --data ../shared/flickr8k [--variants openvino-bf16,openvino-f32,...]
                                           [--images N] [--set image_size=299] [--out FILE]

For each variant (RUNTIME-PRECISION) against tensorflow-f32, over the dataset's images (all, or the first --images by
name): the cosine of each map cell's channel vector (mean, the 1st and 0.1st percentile, the minimum, how many are
below 0.9; cells that are zero in both maps are counted apart, as agreeing), the cosine and relative L2 error of
each image's pooled vector (mean, minimum / maximum), and the largest absolute difference with the largest absolute
value beside it. Both caches hold float16 maps, as training reads them. Writes
benchmarks/results/feature_agreement.json (or --out).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

from captioning.config import load_config
from captioning.features.encoders import make_encoder
from captioning.features.openvino_runtime import native_bf16
from captioning.features.prepare import calibration, load_and_report
from captioning.features.store import extract

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("openvino-f32", "openvino-bf16", "openvino-int8")
CHUNK = 256


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def compare(reference, other) -> dict:
    """Agreement of two MapViews of the same images, read a chunk at a time. A cell that is zero in both maps (all its
    channels cut by the last ReLU) agrees and is counted apart; one zero in only one of them has cosine 0."""
    cells, pooled_cos, pooled_err, worst, largest, both_zero = [], [], [], 0.0, 0.0, 0
    for start in range(0, len(reference), CHUNK):
        rows = np.arange(start, min(start + CHUNK, len(reference)))
        a, b = reference[rows], other[rows]  # (n, P, C) float32
        zero = (np.abs(a).max(-1) == 0) & (np.abs(b).max(-1) == 0)
        both_zero += int(zero.sum())
        cells.append(_cosine(a, b)[~zero])
        pa, pb = a.mean(axis=1), b.mean(axis=1)
        pooled_cos.append(_cosine(pa, pb))
        pooled_err.append(np.linalg.norm(pb - pa, axis=-1) / np.maximum(np.linalg.norm(pa, axis=-1), 1e-12))
        worst, largest = max(worst, float(np.abs(a - b).max())), max(largest, float(np.abs(a).max()))
    cells, pooled_cos, pooled_err = map(np.concatenate, (cells, pooled_cos, pooled_err))
    return {"images": len(reference), "cells": len(cells) + both_zero, "cells_zero_in_both": both_zero,
            "cell_cosine": {"mean": float(cells.mean()), "p1": float(np.percentile(cells, 1)),
                            "p0.1": float(np.percentile(cells, 0.1)), "min": float(cells.min()),
                            "below_0.9": int((cells < 0.9).sum())},
            "pooled_cosine": {"mean": float(pooled_cos.mean()), "min": float(pooled_cos.min())},
            "pooled_relative_error": {"mean": float(pooled_err.mean()), "max": float(pooled_err.max())},
            "max_abs_difference": worst, "max_abs_value": largest}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder (Flickr8k)")
    parser.add_argument("--variants", default="openvino-bf16,openvino-f32",
                        help="RUNTIME-PRECISION, comma-separated, each compared with tensorflow-f32")
    parser.add_argument("--images", type=int, default=0, help="the first N images by name (0: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "feature_agreement.json")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise SystemExit(f"--variants: {', '.join(bad) or 'none given'}; choose among {', '.join(VARIANTS)}")
    if "openvino-bf16" in variants and not native_bf16():
        raise SystemExit("--variants: openvino-bf16 needs a CPU with native bfloat16 (AVX512_BF16 or AMX); this one "
                         "would run f32: leave it out")
    if args.images < 0:
        raise SystemExit(f"--images: 0 (all) or a positive count, got {args.images}")
    dataset = load_and_report(Path(args.data))
    names = sorted(dataset.images)[:args.images or None]

    def maps(variant: str):
        runtime, precision = variant.split("-")
        config = load_config(None, args.set + [f"encoder_runtime={runtime}", f"inference_precision={precision}"])
        encoder = make_encoder(config)
        if precision == "int8":  # (quantized on the dataset's training images if this machine has no int8 network)
            encoder.calibration = calibration(dataset, encoder)
        return extract(names, dataset.images, dataset.info, encoder)[1]

    reference = maps("tensorflow-f32")
    result = {"date": datetime.date.today().isoformat(), "native_bf16": native_bf16(),
              "command": " ".join(["python", "benchmarks/feature_agreement.py", *(argv or sys.argv[1:])]),
              "against": "tensorflow-f32", "variants": {v: compare(reference, maps(v)) for v in variants}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["variants"], indent=2))


if __name__ == "__main__":
    main()
