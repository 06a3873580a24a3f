"""Feature extraction with each encoder runtime, in one run on the same Flickr8k photos: TensorFlow, OpenVINO f32,
OpenVINO bf16 where the CPU has native bfloat16, and OpenVINO int8 (this machine's int8 network; quantized first on
the dataset's training images if there is none).

    nice python benchmarks/extraction_speed.py --data ../shared/flickr8k [--images 128] [--batch 32] [--rounds 2]
                                               [--set image_size=299]

Two figures per runtime, each interleaved so that the machine's other load falls on every runtime alike:
- bare: the network alone on the photos decoded and resized once beforehand, in batches of --batch, the runtimes
  taking turns batch by batch (the order rotating), --rounds times over;
- pipeline: extract() from the files into a fresh feature cache (tf.data decoding and resizing, overlapping the
  network), every photo --rounds times, the runtimes taking turns on chunks of two batches.
Also how far each runtime's maps are from TensorFlow's (max absolute difference; for bf16 the cosine per map cell).
The networks are built (and the IR converted) before anything is timed. `speedup` is OpenVINO's pipeline img/s over
TensorFlow's, per precision; `bare_speedup` the same for the network alone. Writes
benchmarks/results/extraction_speed.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from captioning.config import ConfigError, load_config
from captioning.core.cache import cache_root
from captioning.data.images import inspect_image
from captioning.features.encoders import make_encoder
from captioning.features.openvino_runtime import cpu_flags, import_openvino, native_bf16
from captioning.features.prepare import calibration, load_and_report
from captioning.features.store import extract, image_pipeline

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")  # what the figures depend on


def machine() -> dict:
    model = next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = cpu_flags()
    return {"cpu": model, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags],
            "native_bf16": native_bf16(), "python": platform.python_version(), "tensorflow": tf.__version__,
            "openvino": import_openvino().__version__}


def bare_speeds(encoders: dict, batches: list[np.ndarray], rounds: int) -> tuple[dict, dict]:
    """Images per second of each network on in-memory batches, taking turns batch by batch; and its maps of the
    first batch."""
    seconds = dict.fromkeys(encoders, 0.0)
    maps = {name: np.asarray(encoder.encode_maps(batches[0])) for name, encoder in encoders.items()}  # warm-up
    names = list(encoders)
    for turn in range(rounds * len(batches)):
        batch = batches[turn % len(batches)]
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            start = time.perf_counter()
            np.asarray(encoders[name].encode_maps(batch))
            seconds[name] += time.perf_counter() - start
    images = rounds * sum(len(b) for b in batches)
    return {name: images / s for name, s in seconds.items()}, maps


def pipeline_speeds(encoders: dict, paths: dict, info: dict, batch: int, rounds: int) -> dict:
    """Images per second of extract() from the files into a fresh cache, the runtimes taking turns on each chunk of
    two batches (decoding overlaps the network from the second batch on), the order rotating."""
    names, seconds, images = sorted(paths), dict.fromkeys(encoders, 0.0), dict.fromkeys(encoders, 0)
    chunks = [names[start:start + 2 * batch] for start in range(0, len(names), 2 * batch)]
    order = list(encoders)
    kept = os.environ["CAPTIONING_CACHE"] = str(cache_root())
    for turn in range(rounds * len(chunks)):
        for name in order[turn % len(order):] + order[:turn % len(order)]:
            with tempfile.TemporaryDirectory() as fresh:  # (the networks are built: only the maps go there)
                os.environ["CAPTIONING_CACHE"] = fresh
                _, _, stats = extract(chunks[turn % len(chunks)], paths, info, encoders[name], batch_size=batch,
                                      progress=False)
            seconds[name] += stats.seconds
            images[name] += stats.extracted
    os.environ["CAPTIONING_CACHE"] = kept
    return {name: images[name] / seconds[name] for name in encoders}


def cell_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine of each map cell's channels in a and in b, over the cells that are not zero in both (the last
    block ends in a ReLU: a cell can be all zeros)."""
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1)[norms > 0] / norms[norms > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Flickr8k folder (its Images/ are read)")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "extraction_speed.json"))
    args = parser.parse_args()
    base = load_config(None, args.set).replace(encoder_runtime="tensorflow", inference_precision="f32")
    folder = Path(args.data) / "Images"
    paths = {p.name: p for p in sorted(folder.glob("*.jpg"))[: args.images]}
    info = {name: inspect_image(path) for name, path in paths.items()}
    settings = {"tensorflow": base, "openvino-f32": base.replace(encoder_runtime="openvino")}
    if native_bf16():
        settings["openvino-bf16"] = base.replace(encoder_runtime="openvino", inference_precision="bf16")
    settings["openvino-int8"] = base.replace(encoder_runtime="openvino", inference_precision="int8")
    encoders = {name: make_encoder(config) for name, config in settings.items()}
    try:
        encoders["openvino-int8"].quantized_network()
    except ConfigError:  # none on this machine yet
        encoders["openvino-int8"].calibration = calibration(load_and_report(Path(args.data)), encoders["tensorflow"])
    keys = {name: encoder.map_key for name, encoder in encoders.items()}  # (read before the caches are swapped)
    loads = [os.getloadavg()]
    preprocessed = image_pipeline([paths[n] for n in sorted(paths)], [info[n].needs_pil for n in sorted(paths)],
                                  encoders["tensorflow"], args.batch)
    batches = [batch.numpy() for batch in preprocessed]
    bare, maps = bare_speeds(encoders, batches, args.rounds)  # builds the networks (converts the IR once) first
    pipeline = pipeline_speeds(encoders, paths, info, args.batch, args.rounds)
    loads.append(os.getloadavg())
    reference = maps["tensorflow"]
    result = {
        "date": datetime.date.today().isoformat(), "machine": machine(),
        "command": "nice python benchmarks/extraction_speed.py --data ../shared/flickr8k "
                   f"--images {args.images} --batch {args.batch} --rounds {args.rounds}"
                   + "".join(f" --set {s}" for s in args.set),
        "image_size": base.image_size, "images": len(paths), "batch": args.batch, "rounds": args.rounds,
        "keys": keys,
        "bare_images_per_second": bare, "pipeline_images_per_second": pipeline,
        "speedup": {name: pipeline[name] / pipeline["tensorflow"] for name in encoders if name != "tensorflow"},
        "bare_speedup": {name: bare[name] / bare["tensorflow"] for name in encoders if name != "tensorflow"},
        "max_abs_difference": {name: float(np.abs(m - reference).max()) for name, m in maps.items()},
        "max_abs_value": float(np.abs(reference).max()),
        "min_cell_cosine": {name: float(cell_cosines(m, reference).min()) for name, m in maps.items()},
        "load_average_1_5_15_min": {"before": loads[0], "after": loads[1]},
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
