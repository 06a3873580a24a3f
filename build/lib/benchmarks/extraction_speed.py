"""Feature extraction through the tf.data pipeline against the bare encoder on in-memory batches.

    python benchmarks/extraction_speed.py --data ../shared/flickr8k [--images 400] [--set image_size=299]

Uses a fresh temporary cache, so every image is decoded, resized and encoded. If decoding and resizing overlap
with the model, the pipeline runs at the bare model's speed.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks.flickr8k import bare_model_speed
from captioning.config import load_config
from captioning.features.encoders import make_encoder
from captioning.features.prepare import load_and_report
from captioning.features.store import extract_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = load_config(None, args.set)
    dataset = load_and_report(Path(args.data))
    names = sorted(dataset.images)[: args.images]
    encoder = make_encoder(config)
    bare = bare_model_speed(encoder, images=64)  # also builds and traces the encoder used below
    with tempfile.TemporaryDirectory() as cache:
        weights = Path(os.environ.get("CAPTIONING_CACHE", Path.home() / ".cache" / "captioning")) / "weights"
        os.environ["CAPTIONING_CACHE"] = cache
        if weights.is_dir():  # reuse the verified weights; only the features must be fresh
            os.symlink(weights, Path(cache) / "weights")
        _, stats = extract_features(names, dataset.images, dataset.info, encoder, progress=False)
    result = {"encoder": encoder.key, "images": stats.extracted, "pipeline_images_per_second":
              stats.images_per_second, "bare_model_images_per_second": bare,
              "pipeline_vs_bare": stats.images_per_second / bare}
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / f"extraction_{config.encoder}_{config.image_size}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
