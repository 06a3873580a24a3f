"""Which sampler and pruner find a good captioner soonest: the same search budget for each setting, 3 seeds each.

    python benchmarks/search_efficiency.py --data ../shared/flickr8k            # runs what is missing, then reports
    python benchmarks/search_efficiency.py --data ../shared/flickr8k --report   # the table and plot only

The task is fixed and affordable: the merge decoder on Xception features (cached) of a fixed subset of Flickr8k (the
first 1,000 official train images, the first 500 dev images), 10 epochs at most, greedy dev BLEU-4 as the metric,
over a space of sizes and rates. Each setting (a sampler and a pruner) runs `python tuning/search.py` with a wall
time budget (no trial starts after it) for each seed, in a fresh study of its own. From each study's trials: the
best dev BLEU-4 found so far against the wall time since the study began. Reported: each setting's final best
(mean over seeds) and the time it needed to reach the final best of the median-pruner setting (the default).

Results go to benchmarks/results/search_efficiency.json after every run (a killed benchmark resumes with the runs it
is missing) and the plot to docs/search-efficiency.png. The subset dataset is written to the cache
($CAPTIONING_CACHE/datasets/flickr8k-subset-...): split files and captions only; its Images folder links to the
original.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from captioning.cache import cache_root

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "search_efficiency.json"
FIGURE = ROOT / "docs" / "search-efficiency.png"
SETTINGS = {  # name -> search settings; the first is the reference (today's default)
    "tpe + median": {"sampler": "tpe", "pruner": "median"},
    "tpe + hyperband": {"sampler": "tpe", "pruner": "hyperband"},
    "tpe + successive halving": {"sampler": "tpe", "pruner": "successive_halving"},
    "tpe, no pruning": {"sampler": "tpe", "pruner": "none"},
    "random + median": {"sampler": "random", "pruner": "median"},
}
EXPERIMENT = {
    "config": {"decoder": "merge", "embedding_size": 256, "units": 256, "dropout": 0.5, "learning_rate": 1e-3,
               "batch_size": 64, "epochs": 10, "patience": 10, "beam_width": 1},
    "search": {"metric": "dev_greedy_bleu4", "samples": 0, "pruner_startup_trials": 2, "pruner_warmup_epochs": 2,
               "pruner_min_epochs": 1, "pruner_max_epochs": 10, "pruner_reduction": 3,
               "space": {"units": {"choices": [128, 256, 512]}, "embedding_size": {"choices": [128, 256]},
                         "lstm_layers": {"low": 1, "high": 2}, "dropout": {"low": 0.1, "high": 0.6},
                         "learning_rate": {"low": 3.0e-4, "high": 1.0e-2, "log": True}}},
}


def subset(data: Path, train: int, dev: int) -> Path:
    """A dataset folder with the first `train` official train and `dev` dev images (test: the first `dev` test
    images, which only the registered model is scored on): captions and split files; Images links to `data`'s."""
    folder = cache_root() / "datasets" / f"flickr8k-subset-{train}-{dev}"
    if (folder / "captions.txt").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for split, count in (("train", train), ("dev", dev), ("test", dev)):
        listed = (data / f"Flickr_8k.{split}Images.txt").read_text().split()[:count]
        names[split] = listed
        (folder / f"Flickr_8k.{split}Images.txt").write_text("\n".join(listed) + "\n")
    keep = set().union(*names.values())
    with open(data / "captions.txt", newline="", encoding="utf-8-sig") as source, \
            open(folder / "captions.tmp", "w", newline="", encoding="utf-8") as target:
        rows = csv.reader(source)
        writer = csv.writer(target)
        writer.writerow(next(rows))
        writer.writerows(row for row in rows if row and row[0] in keep)
    link = folder / "Images"
    if not link.exists():
        link.symlink_to((data / "Images").resolve())
    os.replace(folder / "captions.tmp", folder / "captions.txt")  # last: its presence means the folder is complete
    return folder


def run(name: str, seed: int, data: Path, budget: float, work: Path) -> list[list[float]]:
    """One search; returns [[seconds since the study began, best dev metric so far], ...] at each completed trial."""
    import optuna

    experiment = work / "efficiency.yaml"
    spec = json.loads(json.dumps(EXPERIMENT))
    spec["search"].update(SETTINGS[name])
    experiment.write_text(yaml.safe_dump(spec))
    storage = f"sqlite:///{work / 'optuna.db'}"
    study = f"efficiency-{name.replace(' ', '').replace('+', '-').replace(',', '')}-seed{seed}"
    command = [sys.executable, str(ROOT / "tuning" / "search.py"), "--data", str(data), "--experiment",
               str(experiment), "--study", study, "--storage", storage, "--tracking-uri",
               f"sqlite:///{work / 'mlflow.db'}", "--timeout", str(budget), "--trials", "1000", "--seed", str(seed)]
    subprocess.run(command, check=True, cwd=work, stdout=subprocess.DEVNULL)
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    began = min(t.datetime_start for t in trials if t.datetime_start)
    curve, best = [], float("-inf")
    for trial in sorted((t for t in trials if t.value is not None), key=lambda t: t.datetime_complete):
        best = max(best, trial.value)
        curve.append([(trial.datetime_complete - began).total_seconds(), best])
    return curve


def time_to_reach(curve: list[list[float]], target: float) -> float | None:
    return next((seconds for seconds, best in curve if best >= target), None)


def report(results: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = results["runs"]
    reference = next(iter(SETTINGS))
    finals = {name: [curve[-1][1] for curve in runs.get(name, {}).values() if curve] for name in SETTINGS}
    target = float(np.median(finals[reference])) if finals[reference] else None
    lines = [f"| setting | seeds | final best dev BLEU-4 (mean ± sd) | time to reach {target and round(target, 4)} "
             "(the reference's median final best), mean over seeds reaching it |", "|---|---|---|---|"]
    figure, axis = plt.subplots(figsize=(8, 5))
    grid = np.linspace(0, results["budget"] * 1.5, 200)
    for name in SETTINGS:
        curves = [c for c in runs.get(name, {}).values() if c]
        if not curves:
            continue
        steps = np.array([[max([b for s, b in c if s <= t], default=np.nan) for t in grid] for c in curves])
        axis.plot(grid / 60, np.nanmean(steps, axis=0), label=name)
        reached = [time_to_reach(c, target) for c in curves] if target is not None else []
        hits = [r for r in reached if r is not None]
        when = f"{np.mean(hits) / 60:.1f} min ({len(hits)}/{len(curves)})" if hits else f"never (0/{len(curves)})"
        lines.append(f"| {name} | {len(curves)} | {np.mean(finals[name]):.4f} ± {np.std(finals[name]):.4f} | "
                     f"{when} |")
    axis.set_xlabel("wall time (min)")
    axis.set_ylabel("best dev BLEU-4 so far (greedy), mean over seeds")
    axis.legend()
    figure.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(FIGURE, dpi=110)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--budget", type=float, default=1200, help="seconds after which a search starts no trial")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--dev", type=int, default=500)
    parser.add_argument("--settings", help=f"comma-separated subset of: {', '.join(SETTINGS)}")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report", action="store_true", help="only the table and plot of the runs recorded")
    args = parser.parse_args()
    names = [n.strip() for n in args.settings.split(",")] if args.settings else list(SETTINGS)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; choose from: {', '.join(SETTINGS)}")
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results.setdefault("machine", f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores")
    results.setdefault("command", " ".join(sys.argv))
    results.setdefault("budget", args.budget)
    results.setdefault("task", {"train": args.train, "dev": args.dev, "experiment": EXPERIMENT})
    runs = results.setdefault("runs", {})
    if not args.report:
        data = subset(args.data, args.train, args.dev)
        for seed in range(args.seeds):  # seed-major: an interrupted benchmark has every setting at equal seeds
            for name in names:
                if str(seed) in runs.get(name, {}):
                    continue
                with tempfile.TemporaryDirectory() as work:
                    curve = run(name, seed, data, results["budget"], Path(work))
                runs.setdefault(name, {})[str(seed)] = curve
                results["updated"] = datetime.datetime.now().isoformat(timespec="seconds")
                args.results.write_text(json.dumps(results, indent=1) + "\n")
                print(f"{name}, seed {seed}: best {curve[-1][1] if curve else float('nan'):.4f} "
                      f"after {len(curve)} completed trials", flush=True)
    print(report(results))


if __name__ == "__main__":
    main()
