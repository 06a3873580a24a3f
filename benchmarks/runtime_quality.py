"""Does training on OpenVINO's features hold the quality of TensorFlow's? One config trained on Flickr8k features
from each encoder runtime and precision, with two seeds each, and scored on dev and test.

    nice python benchmarks/runtime_quality.py --data ../shared/flickr8k [--variants tensorflow-f32,openvino-bf16,...]
                                              [--seeds 0,1] [--set epochs=8] [--results FILE]

A variant is RUNTIME-PRECISION (tensorflow-f32, openvino-f32, openvino-bf16, openvino-int8; int8 quantizes the
network first if this machine has no int8 network, calibrated on the dataset's training images). Each one's features
are extracted into the feature cache on first use (its own cache key) and timed; then the config (the built-in default, the merge
decoder, unless --config names an experiment file; --set overrides) is trained once per seed, selected on dev and
scored on dev and test, greedy and beam (BLEU-1..4 and the COCO metrics), and saved under --outputs. Rows are written
after every training, and a run that is stopped starts again after its last complete row. The summary gives, per
variant, the mean of the seeds and their spread (max - min), and each OpenVINO variant's difference from TensorFlow's
mean.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from captioning.config import load_config
from captioning.features.openvino_runtime import native_bf16
from captioning.features.prepare import load_and_report, prepare
from captioning.training.run import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "runtime_quality.json"
VARIANTS = ("tensorflow-f32", "openvino-bf16", "openvino-f32", "openvino-int8")
METRICS = ("bleu4", "cider")


def parse_variants(text: str) -> list[tuple[str, str]]:
    out = []
    for name in filter(None, (part.strip() for part in text.split(","))):
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {name!r}; choose among {', '.join(VARIANTS)}")
        out.append(tuple(name.split("-")))
    if not out:
        raise SystemExit("--variants: name at least one variant")
    return out


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: a comma-separated list of integers, got {text!r}") from None
    if not seeds:
        raise SystemExit("--seeds: name at least one seed")
    return seeds


def summarise(rows: dict, beam: int) -> dict:
    """Per variant: the seeds' mean and spread of dev/test BLEU-4 and CIDEr-D (beam), and the difference of each
    variant's mean from tensorflow-f32's."""
    by_variant: dict[str, list[dict]] = {}
    for row in rows.values():
        by_variant.setdefault(row["variant"], []).append(row)
    summary = {}
    for variant, runs in by_variant.items():
        entry = {"seeds": sorted(r["seed"] for r in runs)}
        for split in ("dev", "test"):
            for metric in METRICS:
                values = [r["scores"][f"{split}_beam{beam}"][metric] for r in runs]
                entry[f"{split}_{metric}"] = {"mean": float(np.mean(values)),
                                              "spread": float(np.max(values) - np.min(values))}
        summary[variant] = entry
    base = summary.get("tensorflow-f32")
    if base:
        for variant, entry in summary.items():
            entry["minus_tensorflow"] = {key: entry[key]["mean"] - base[key]["mean"]
                                         for key in entry if isinstance(entry[key], dict) and "mean" in entry[key]}
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Flickr8k folder")
    parser.add_argument("--config", help="experiment file (default: the built-in default config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="RUNTIME-PRECISION, comma-separated")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--outputs", type=Path, default=ROOT / "outputs" / "runtime-quality",
                        help="where each trained captioner is saved (VARIANT-seedK), for export_equality.py")
    args = parser.parse_args(argv)
    variants, seeds = parse_variants(args.variants), parse_seeds(args.seeds)
    if ("openvino", "bf16") in variants and not native_bf16():
        raise SystemExit("--variants: openvino-bf16 needs a CPU with native bfloat16 (AVX512_BF16 or AMX); this "
                         "one has neither, so it would run f32: leave it out")
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results.setdefault("machine", f"{platform.processor() or platform.machine()}, native bf16 {native_bf16()}")
    command = " ".join(["python", "benchmarks/runtime_quality.py", *(argv or sys.argv[1:])])
    commands = results.setdefault("commands", [results.pop("command")] if "command" in results else [])
    rows, extraction = results.setdefault("rows", {}), results.setdefault("extraction", {})
    dataset = load_and_report(Path(args.data))
    beam = 3

    def save() -> None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")

    for runtime, precision in variants:
        variant = f"{runtime}-{precision}"
        todo = [seed for seed in seeds if f"{variant}/seed{seed}" not in rows]
        if not todo:
            continue
        if command not in commands:
            commands.append(command)  # every run that added rows, in order
        base = args.set + [f"encoder_runtime={runtime}", f"inference_precision={precision}"]
        config = load_config(args.config, base)
        beam = config.beam_width
        start = time.perf_counter()
        prepared = prepare(config, dataset)
        stats = prepared.stats
        extraction.setdefault(variant, {"extracted": stats.extracted, "cache_hits": stats.cache_hits,
                                        "seconds": time.perf_counter() - start,
                                        "images_per_second": stats.images_per_second})
        save()
        for seed in todo:
            config = load_config(args.config, base + [f"seed={seed}"])
            result = train_and_evaluate(config, prepared, eval_splits=("dev", "test"), verbose=True)
            history = result.training.history
            result.captioner.save(args.outputs / f"{variant}-seed{seed}")
            rows[f"{variant}/seed{seed}"] = {
                "variant": variant, "seed": seed, "date": datetime.date.today().isoformat(),
                "config": config.to_dict(), "epochs": len(history), "best_epoch": result.training.best_epoch,
                "train_seconds": result.training.seconds,
                "scores": {f"{ev.split}_{'greedy' if ev.beam_width == 1 else f'beam{ev.beam_width}'}": ev.scores
                           for ev in result.evaluations}}
            results["summary"] = summarise(rows, beam)
            save()
            test = rows[f"{variant}/seed{seed}"]["scores"][f"test_beam{beam}"]
            print(f"{variant} seed {seed}: test BLEU-4 {test['bleu4']:.4f} CIDEr-D {test['cider']:.4f}", flush=True)
    results["summary"] = summarise(rows, beam)
    save()
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
