"""Does a captioner decode the same captions through its inference export (OpenVINO, no TensorFlow) as through Keras?

    python benchmarks/export_equality.py --model outputs/merge outputs/attention outputs/transformer
    python benchmarks/export_equality.py --model DIR --data ../shared/flickr8k --out export_equality_f8k.json

Each bundle is copied to a temporary folder and exported there (captioning.inference.export, as `python -m captioning
export` does; the bundle itself is not touched), then a split's images (default: test; the embedded dataset unless
--data) are captioned twice from their image files: by the copy loaded through Keras and by the copy loaded from its
export, greedy and beam-k for each k of --beams. Reported per model and beam width: the share of images whose
captions are the same word for word, BLEU-4 (NLTK corpus BLEU against the references) of each path and their
difference, and the first images whose captions differ. The export's encoder runs in the precision the features
were extracted in (float32 for TensorFlow's), so one precision per model. Writes benchmarks/results/<--out>.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def compare(bundle: Path, dataset, split: str, beams: list[int], differing: int = 5) -> dict:
    """Keras against the export of a copy of `bundle`, on `split`'s images, for each beam width."""
    from captioning.decoding.captioner import Captioner
    from captioning.inference.export import export_captioner
    from captioning.metrics.bleu import corpus_bleu_scores

    names = dataset.split(split)
    images = [dataset.images[n] for n in names]
    references = [dataset.captions[n] for n in names]
    with tempfile.TemporaryDirectory(prefix="export-equality-") as tmp:
        work = Path(tmp) / "bundle"
        shutil.copytree(bundle, work, ignore=shutil.ignore_patterns("export"))
        keras = Captioner.load(work, use_export=False, log=lambda line: None)
        start = time.perf_counter()
        export_captioner(keras, work, log=lambda line: None)
        export_seconds = time.perf_counter() - start
        exported = Captioner.load(work, log=lambda line: None)
        if exported.exported is None:
            raise SystemExit(f"error: the export of {bundle} was written but does not load")
        rows = []
        for beam in beams:
            timed = {}
            for path, captioner in (("keras", keras), ("export", exported)):
                start = time.perf_counter()
                timed[path] = (captioner.caption(images, beam_width=beam), time.perf_counter() - start)
            (ours, ours_seconds), (theirs, theirs_seconds) = timed["keras"], timed["export"]
            bleu = {path: corpus_bleu_scores(references, [c.split() for c in captions])["bleu4"]
                    for path, (captions, _) in timed.items()}
            rows.append({"beam_width": beam, "images": len(names),
                         "same_captions": sum(a == b for a, b in zip(ours, theirs)) / len(names),
                         "keras_bleu4": bleu["keras"], "export_bleu4": bleu["export"],
                         "bleu4_difference": bleu["export"] - bleu["keras"],
                         "keras_seconds": ours_seconds, "export_seconds": theirs_seconds,
                         "differing": [{"image": n, "keras": a, "export": b}
                                       for n, a, b in zip(names, ours, theirs) if a != b][:differing]})
    config = keras.config
    return {"model": str(bundle), "decoder": config.decoder, "encoder": config.encoder,
            "image_size": config.image_size, "encoder_runtime": config.encoder_runtime,
            "precision": config.inference_precision if config.encoder_runtime == "openvino" else "f32",
            "export_seconds": export_seconds, "rows": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True, help="captioner bundle directories")
    parser.add_argument("--data", help="dataset folder (default: the embedded dataset)")
    parser.add_argument("--split", choices=("test", "dev"), default="test")
    parser.add_argument("--beams", default="1,3", help="beam widths, comma-separated (1: greedy; default: 1,3)")
    parser.add_argument("--out", default="export_equality.json", help="file name under benchmarks/results/ "
                                                                      "(or a path)")
    args = parser.parse_args(argv)
    try:
        beams = [int(b) for b in args.beams.split(",")]
    except ValueError:
        raise SystemExit(f"error: --beams {args.beams!r}: give beam widths as integers, e.g. 1,3") from None
    missing = [m for m in args.model if not (Path(m) / "config.json").is_file()]
    if missing:
        raise SystemExit(f"error: not a captioner bundle: {', '.join(missing)} (train one with python -m captioning "
                         "train --out DIR)")

    from benchmarks.serve_load import machine
    from captioning.data.dataset import load_dataset
    from captioning.data.synthetic import embedded_dataset

    dataset = load_dataset(Path(args.data) if args.data else embedded_dataset())
    results = []
    for model in args.model:
        result = compare(Path(model), dataset, args.split, beams)
        results.append(result)
        for row in result["rows"]:
            print(f"{result['decoder']} ({result['encoder']} {result['image_size']} px, {result['precision']}), "
                  f"beam {row['beam_width']}: same captions {row['same_captions']:.1%} of {row['images']}; "
                  f"BLEU-4 Keras {row['keras_bleu4']:.4f}, export {row['export_bleu4']:.4f} "
                  f"({row['bleu4_difference']:+.4f}); {row['keras_seconds']:.1f} s against "
                  f"{row['export_seconds']:.1f} s")
    out = Path(__file__).parent / "results" / args.out
    command = "python benchmarks/export_equality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out.write_text(json.dumps({"command": command,
                               "date": datetime.date.today().isoformat(), "machine": machine(), "split": args.split,
                               "models": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
