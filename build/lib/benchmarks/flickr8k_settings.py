"""Flickr8k, one row per setting: the default merge model, + self-critical training, + flip-averaged features, + both.

    python benchmarks/flickr8k_settings.py --data ../shared/flickr8k [--set key=value ...]

Each setting trains once (experiments/flickr8k.yaml, the given overrides, scst_epochs from --scst-epochs): its
best teacher-forced model is scored first (the row without SCST), then the self-critical stage continues from it
and the final model is scored (the row with SCST). Scores: NLTK BLEU-1..4 and the COCO metrics (captioning.metrics)
on the official dev and test splits, greedy and beam. Training wall time per stage comes from the epoch records.
Results are written to benchmarks/results/flickr8k_settings.json after every row; a killed run resumes its
training from outputs/flickr8k-settings/<setting>.npz and keeps the rows it already has. `--flip-mode augment`
names the flip rows flip-augment; `--scst-epochs 0` trains and scores the teacher-forced rows only.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

from captioning.config import load_config
from captioning.evaluation.evaluate import evaluate
from captioning.features.prepare import load_and_report, prepare
from captioning.training.run import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "flickr8k_settings.json"


def _scores(captioner, prepared) -> dict:
    out = {}
    for split in ("dev", "test"):
        for width in (1, captioner.config.beam_width):
            ev = evaluate(captioner, prepared, split, width)
            out[f"{split}_{'greedy' if width == 1 else f'beam{width}'}"] = ev.scores
    return out


def _by_decoding(evaluations) -> dict:
    """{"dev_greedy": scores, "test_beam3": scores, ...} from a run's evaluations."""
    return {f"{ev.split}_{'greedy' if ev.beam_width == 1 else f'beam{ev.beam_width}'}": ev.scores for ev in evaluations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--set", action="append", default=[], help="config overrides for every setting")
    parser.add_argument("--scst-epochs", type=int, default=4)
    parser.add_argument("--flips", default="false,true", help="which feature_flip settings to run, in order")
    parser.add_argument("--flip-mode", choices=("average", "augment"), default="average",
                        help="flip_mode of the flip setting (augment's rows are named flip-augment)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--outputs", type=Path, default=ROOT / "outputs" / "flickr8k-settings")
    args = parser.parse_args()
    dataset = load_and_report(Path(args.data))
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results.setdefault("machine", f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores")
    results.setdefault("command", " ".join(sys.argv))
    rows = results.setdefault("rows", {})
    out_dir = args.outputs
    out_dir.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.results.write_text(json.dumps(results, indent=2) + "\n")

    for flip in args.flips.split(","):
        name = "default" if flip == "false" else "flip" if args.flip_mode == "average" else "flip-augment"
        config = load_config(ROOT / "experiments" / "flickr8k.yaml",
                             args.set + [f"feature_flip={flip}", f"flip_mode={args.flip_mode}",
                                         f"scst_epochs={args.scst_epochs}"])
        if f"{name}+scst" in rows or (not args.scst_epochs and name in rows):
            continue
        start = time.perf_counter()
        prepared = prepare(config, dataset)
        results.setdefault("extraction_seconds", {})[name] = time.perf_counter() - start

        def after_teacher_forcing(captioner, name=name, config=config) -> None:
            rows[name] = {"config": config.replace(scst_epochs=0).to_dict(), **_scores(captioner, prepared),
                          "date": datetime.date.today().isoformat()}
            save()
            print(f"{name}: teacher-forced best scored", flush=True)

        result = train_and_evaluate(config, prepared, verbose=True, checkpoint=out_dir / f"{name}.npz",
                                    after_teacher_forcing=after_teacher_forcing)
        history = result.training.history
        if not args.scst_epochs:  # no self-critical stage: the final model is the teacher-forced one
            rows[name] = {"config": config.to_dict(), "date": datetime.date.today().isoformat(),
                          **_by_decoding(result.evaluations)}
        teacher = sum(h["seconds"] for h in history if h["stage"] == "teacher")
        scst = sum(h["seconds"] for h in history if h["stage"] == "scst")
        if name in rows:
            rows[name] |= {"train_seconds": teacher, "epochs": sum(h["stage"] == "teacher" for h in history),
                           "best_epoch": max((h for h in history if h["stage"] == "teacher"),
                                             key=lambda h: h["dev_bleu4"])["epoch"]}
        if not args.scst_epochs:
            save()
            continue
        rows[f"{name}+scst"] = {"config": config.to_dict(), "history": history, "best_epoch": result.training.best_epoch,
                                "train_seconds": teacher + scst, "scst_seconds": scst,
                                **_by_decoding(result.evaluations),
                                "date": datetime.date.today().isoformat()}
        result.captioner.save(out_dir / f"{name}+scst")
        save()
        print(f"{name}+scst: done", flush=True)
    for key, row in rows.items():
        test = row.get(f"test_beam{row['config']['beam_width']}", {})
        print(f"{key:14s} test " + " ".join(f"{k} {v:.4f}" for k, v in test.items()))


if __name__ == "__main__":
    main()
