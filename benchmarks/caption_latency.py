"""Cold caption latency: one photo captioned by a fresh process, `python -m captioning caption PHOTO --model BUNDLE`,
from process start to the printed caption, through Keras (the bundle without its export: TensorFlow) and through the
bundle's inference export (OpenVINO, no TensorFlow), in one run, the two taking turns.

    nice python benchmarks/caption_latency.py --data ../shared/flickr8k [--bundle DIR] [--repeat 5] [--set KEY=VALUE]

Without --bundle, a captioner of experiments/flickr8k.yaml's base config (`--set` changes it, e.g. decoder=attention)
is built with untrained weights and the vocabulary of Flickr8k's training captions: a cold start does not depend on
the weights, and its end token is made unlikely so that the caption runs `--words` words (a trained captioner's
length). The bundle is exported here (converting Xception once into the cache if needed). One run of each path first
fills the disk caches and OpenVINO's model cache (that first export run, which compiles, is reported apart); then
each is timed --repeat times, to the caption line and to the process's exit, and the medians reported. `speedup` is
Keras's median time to the caption over the export's. `stages` says where the export path's time goes (imports,
loading the bundle and compiling, encoding, decoding), measured in one more process of each path.
Writes benchmarks/results/caption_latency.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
# Where a cold process spends its time, printed as JSON by a process of each path (imports as the CLI does them).
STAGES = """
import json, sys, time
start = time.perf_counter()
from captioning.cli import main  # noqa: F401 (what the command imports before loading)
from captioning.decoding.captioner import Captioner
imported = time.perf_counter()
captioner = Captioner.load(sys.argv[1], use_export=sys.argv[3] == "export", log=lambda line: None)
loaded = time.perf_counter()
inputs = captioner.encode_images([sys.argv[2]])
encoded = time.perf_counter()
caption = captioner.decode_features(inputs)[0][0][0]
decoded = time.perf_counter()
heavy = [m for m in ("tensorflow", "keras", "openvino", "mlflow") if m in sys.modules]
print(json.dumps({"import_seconds": imported - start, "load_seconds": loaded - imported,
                  "encode_seconds": encoded - loaded, "decode_seconds": decoded - encoded, "modules": heavy}))
"""


def build_bundle(args, out: Path) -> Path:
    """An untrained captioner of the experiment's config, its end token made unlikely, saved to `out`."""
    from captioning.config import load_config
    from captioning.data.text import Vocabulary
    from captioning.decoding.captioner import Captioner
    from captioning.features import encoder_spec
    from captioning.features.encoders import make_encoder
    from captioning.features.inputs import ImageInputs
    from captioning.features.prepare import load_and_report
    from captioning.models import build_model, decoder_spec

    # (no re-ranking: it needs the neighbour index of a training; --bundle measures a captioner that has one)
    config = load_config(Path(args.config), ["rerank_neighbours=0", *args.set]).replace(max_length=args.words + 2)
    dataset = load_and_report(Path(args.data))
    vocab = Vocabulary.build((c for n in dataset.split("train") for c in dataset.captions[n]), config.vocab_min_count)
    height, width, channels = encoder_spec(config.encoder).map_shape(config.image_size)
    inputs = ImageInputs(np.zeros((1, make_encoder(config).dim), np.float32),
                         np.zeros((1, height * width, channels), np.float32))
    model = build_model(config, len(vocab), inputs if decoder_spec(config.decoder).reads_maps else inputs.features)
    bias = model.get_layer("logits").bias
    bias.assign(bias.numpy() - 1e4 * (np.arange(len(vocab)) == vocab.end_id))
    return Captioner(config, vocab, model).save(out)


def caption_once(bundle: Path, photo: Path, env: dict) -> tuple[float, float, str]:
    """(seconds to the caption line, seconds to exit, the caption) of one fresh `caption` process."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "captioning", "caption", str(photo), "--model", str(bundle)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=PROJECT)
    line = process.stdout.readline()
    printed = time.perf_counter()
    _, errors = process.communicate()
    ended = time.perf_counter()
    if process.returncode != 0 or not line.strip():
        raise RuntimeError(f"caption failed ({process.returncode}): {errors[-2000:]}")
    return printed - start, ended - start, line.strip()


def stages(bundle: Path, photo: Path, path: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", STAGES, str(bundle), str(photo), path], capture_output=True,
                          text=True, env=env, cwd=PROJECT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((line.partition(":")[2].strip() for line in lines if line.startswith("model name")), platform.machine())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Flickr8k (its vocabulary, and the photo captioned)")
    parser.add_argument("--bundle", help="a trained captioner bundle (default: an untrained one, see above)")
    parser.add_argument("--config", default=str(PROJECT / "experiments" / "flickr8k.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--words", type=int, default=12, help="words per caption of the untrained captioner")
    parser.add_argument("--photo", help="the photo's file name in the dataset (default: its first test image)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from captioning.core.cache import cache_root
    from captioning.decoding.captioner import Captioner
    from captioning.features.prepare import load_and_report
    from captioning.inference.export import export_captioner

    dataset = load_and_report(Path(args.data), log=lambda line: None)
    photo = dataset.images[args.photo or dataset.split("test")[0]]
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    with tempfile.TemporaryDirectory(prefix="caption-latency-") as tmp:
        keras_bundle = Path(tmp) / "keras"
        if args.bundle:
            shutil.copytree(args.bundle, keras_bundle, ignore=shutil.ignore_patterns("export"))
        else:
            build_bundle(args, keras_bundle)
        export_bundle = Path(tmp) / "export"
        shutil.copytree(keras_bundle, export_bundle)
        export_captioner(Captioner.load(export_bundle, use_export=False), export_bundle)
        shutil.rmtree(cache_root() / "openvino" / "compiled", ignore_errors=True)  # the first export run compiles
        first_export = caption_once(export_bundle, photo, env)
        first_keras = caption_once(keras_bundle, photo, env)
        runs = {"keras": [], "export": []}
        for round_ in range(args.repeat):
            for path in ("keras", "export") if round_ % 2 == 0 else ("export", "keras"):
                runs[path].append(caption_once(keras_bundle if path == "keras" else export_bundle, photo, env))
                print(path, runs[path][-1], flush=True)
        breakdown = {path: stages(keras_bundle if path == "keras" else export_bundle, photo, path, env)
                     for path in ("keras", "export")}
    median = lambda path, i: float(np.median([run[i] for run in runs[path]]))
    result = {
        "date": datetime.date.today().isoformat(), "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs", "command": "nice python benchmarks/caption_latency.py " + " ".join(sys.argv[1:]),
        "photo": photo.name, "bundle": args.bundle or f"untrained {args.config} {' '.join(args.set)}",
        "captions": {path: runs[path][0][2] for path in runs},
        "keras_caption_seconds": median("keras", 0), "export_caption_seconds": median("export", 0),
        "keras_exit_seconds": median("keras", 1), "export_exit_seconds": median("export", 1),
        "speedup": median("keras", 0) / median("export", 0),
        "first_export_caption_seconds": first_export[0], "first_keras_caption_seconds": first_keras[0],
        "runs": {path: [[round(a, 3), round(b, 3)] for a, b, _ in runs[path]] for path in runs},
        "stages": breakdown}
    print(json.dumps(result, indent=2))
    out = PROJECT / "benchmarks" / "results" / "caption_latency.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
