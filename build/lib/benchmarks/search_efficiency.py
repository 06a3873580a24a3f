"""Which sampler and pruner find a good captioner soonest: the same search budget for each setting, 3 seeds each.

    python benchmarks/search_efficiency.py --data ../shared/flickr8k --jobs 2   # runs what is missing, then reports
    python benchmarks/search_efficiency.py --data ../shared/flickr8k --report   # the table and plot only
    python benchmarks/search_efficiency.py --data ../shared/flickr8k --task merge-256 --budget 720 --report

The task is fixed and affordable: the merge decoder on Xception features (cached) of a fixed subset of Flickr8k (the
first 1,000 official train images, the first 500 dev images), greedy dev BLEU-4 as the metric, over a space of
sizes and rates: `merge-small` (the default; LSTM 64-256, 8 epochs at most, trials of under a minute on one core,
so that a search holds enough trials for the samplers and pruners to act) or `merge-256` (LSTM 128-512, 10 epochs,
trials of 2.5-5 minutes: the first benchmark's). Each setting (a sampler and a pruner) runs `python
tuning/search.py` with a wall-time budget (no trial starts after it) for each seed, in a fresh study of its own.
From each study's trials: the best dev BLEU-4 found so far against the wall time since the study began.
Reported: each setting's final best (mean over seeds) and the time it needed to reach the final best of the
reference setting, TPE with the median pruner (the default until this benchmark chose another).
With --jobs N, N searches run at a time, each pinned to a core of its own, so that every run has one core to
itself (the memory and caches are shared; a run left alone at the end of the benchmark has them to itself).

Results go to benchmarks/results/search_efficiency[_small].json after every run (a killed benchmark resumes with the
runs it is missing) and the plot to docs/search-efficiency[-small].png. The subset dataset is written to the cache
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from captioning.core.cache import cache_root

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = {  # name -> search settings; the first is the reference (the default before this benchmark chose)
    "tpe + median": {"sampler": "tpe", "pruner": "median"},
    "tpe + hyperband": {"sampler": "tpe", "pruner": "hyperband"},
    "tpe + successive halving": {"sampler": "tpe", "pruner": "successive_halving"},
    "tpe, no pruning": {"sampler": "tpe", "pruner": "none"},
    "random + median": {"sampler": "random", "pruner": "median"},
    # Successive halving's one rung at epoch 3 (3 x 3 > 8 epochs): a trial goes on only in the top third of those
    # that reached it. (The task's first rung, epoch 1, says little: most trials' greedy BLEU-4 is below 0.0001.)
    "tpe + successive halving from epoch 3": {"sampler": "tpe", "pruner": "successive_halving",
                                              "pruner_min_epochs": 3},
    "random + successive halving from epoch 3": {"sampler": "random", "pruner": "successive_halving",
                                                 "pruner_min_epochs": 3},
}

def _task(units: list[int], embedding: list[int], epochs: int) -> dict:
    """The experiment file of a benchmark task: its base config has the middle LSTM size and the larger
    embedding."""
    return {"config": {"decoder": "merge", "embedding_size": embedding[-1], "units": units[1], "dropout": 0.5,
                       "learning_rate": 1e-3, "batch_size": 64, "epochs": epochs, "patience": epochs,
                       "beam_width": 1},
            "search": {"metric": "dev_greedy_bleu4", "samples": 0, "pruner_startup_trials": 2,
                       "pruner_warmup_epochs": 2, "pruner_min_epochs": 1, "pruner_max_epochs": epochs,
                       "pruner_reduction": 3,
                       "space": {"units": {"choices": units}, "embedding_size": {"choices": embedding},
                                 "lstm_layers": {"low": 1, "high": 2}, "dropout": {"low": 0.1, "high": 0.6},
                                 "learning_rate": {"low": 3.0e-4, "high": 1.0e-2, "log": True}}}}


TASKS = {  # name -> (experiment, results file, figure)
    "merge-small": (_task([64, 128, 256], [64, 128], 8), "search_efficiency_small.json", "search-efficiency-small.png"),
    "merge-256": (_task([128, 256, 512], [128, 256], 10), "search_efficiency.json", "search-efficiency.png"),
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


def run(name: str, seed: int, data: Path, budget: float, work: Path, core: int | None, task: dict) -> dict:
    """One search (on `core` alone if given). Returns its record: `curve`, [[seconds since the study began, best dev
    metric so far], ...] at each complete trial (a pruned trial's last epoch is no model the search can return),
    the trials by state, and the search's wall time."""
    import optuna

    experiment = work / "efficiency.yaml"
    spec = json.loads(json.dumps(task))
    spec["search"].update(SETTINGS[name])
    experiment.write_text(yaml.safe_dump(spec))
    storage = f"sqlite:///{work / 'optuna.db'}"
    study = f"efficiency-{name.replace(' ', '').replace('+', '-').replace(',', '')}-seed{seed}"
    command = [sys.executable, str(ROOT / "tuning" / "search.py"), "--data", str(data), "--experiment",
               str(experiment), "--study", study, "--storage", storage, "--tracking-uri",
               f"sqlite:///{work / 'mlflow.db'}", "--timeout", str(budget), "--trials", "1000", "--seed", str(seed)]
    pin = [] if core is None else ["taskset", "--cpu-list", str(core)]
    started = time.monotonic()
    done = subprocess.run(pin + command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the search for {name}, seed {seed} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    seconds = time.monotonic() - started
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    began = min(t.datetime_start for t in trials if t.datetime_start)
    curve, best = [], float("-inf")
    complete = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE),
                      key=lambda t: t.datetime_complete)
    for trial in complete:
        best = max(best, trial.value)
        curve.append([(trial.datetime_complete - began).total_seconds(), best])
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    return {"curve": curve, "trials": states, "search_seconds": seconds}


def machine() -> str:
    """The CPU model and the number of cores, as measurements are compared by."""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def until(clock: str) -> float:
    """HH:MM today (tomorrow if already past) as a time.time() value."""
    hours, minutes = (int(part) for part in clock.split(":"))
    now = datetime.datetime.now()
    when = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    return (when if when > now else when + datetime.timedelta(days=1)).timestamp()


def time_to_reach(curve: list[list[float]], target: float) -> float:
    """Seconds until the best so far reached `target`; inf if the run never did."""
    return next((seconds for seconds, best in curve if best >= target), float("inf"))


def report(results: dict, figure_path: Path) -> str:
    """The table (and the plot): each setting's final best, and how soon its seeds reached the reference's median
    final best, against half the reference's wall time (when its last trial finished, mean over its seeds)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = {name: list(results["runs"].get(name, {}).values()) for name in SETTINGS}
    curves = {name: [r["curve"] for r in rs] for name, rs in records.items()}
    reference = next(iter(SETTINGS))
    finished = [c for c in curves[reference] if c]
    if not finished:
        return f"no complete trial of the reference setting ({reference}) yet"
    final = lambda c: c[-1][1] if c else float("nan")
    target = float(np.median([final(c) for c in curves[reference]]))
    # The reference's wall time: until its last complete trial (the search ends right after it), mean over seeds.
    half = float(np.mean([c[-1][0] for c in finished])) / 2
    lines = [f"Target: the reference ({reference}) ends with a median best of {target:.4f} (over its seeds); its "
             f"searches lasted {2 * half / 60:.1f} min until their last complete trial (mean over seeds). A setting "
             f"meets the target when the median over its seeds of the time to reach {target:.4f} is at most half "
             f"that, {half / 60:.1f} min.", "",
             "| setting | seeds | final best dev BLEU-4, mean ± sd | trials complete / pruned, mean | time to reach "
             f"{target:.4f} per seed (min) | median | within {half / 60:.1f} min |", "|---|---|---|---|---|---|---|"]
    figure, axis = plt.subplots(figsize=(8, 5))
    grid = np.linspace(0, max(c[-1][0] for cs in curves.values() for c in cs if c), 300)
    # The plot averages the seeds every setting has, so that no curve is lifted by missing a hard seed.
    common = set.intersection(*(set(results["runs"].get(name, {})) for name in SETTINGS if records[name]))
    for name, runs_of in curves.items():
        if not runs_of:
            continue
        shared = [results["runs"][name][seed]["curve"] for seed in sorted(common)]
        steps = np.array([[max([b for s, b in c if s <= t], default=np.nan) for t in grid] for c in shared])
        with warnings.catch_warnings():  # before any seed's first trial: no value yet
            warnings.simplefilter("ignore", RuntimeWarning)
            axis.plot(grid / 60, np.nanmean(steps, axis=0), label=name)
        finals = [final(c) for c in runs_of]
        times = [time_to_reach(c, target) for c in runs_of]
        counts = [np.mean([r["trials"].get(state, 0) for r in records[name]]) for state in ("complete", "pruned")]
        median = float(np.median(times))
        shown = ", ".join("never" if t == float("inf") else f"{t / 60:.1f}" for t in times)
        found = [f for f in finals if np.isfinite(f)]  # (a seed without a complete trial found nothing)
        shown_finals = (f"{np.mean(found):.4f} ± {np.std(found, ddof=1) if len(found) > 1 else 0:.4f}"
                        + (f" ({len(found)} of {len(finals)} seeds)" if len(found) < len(finals) else "")
                        if found else "none")
        lines.append(f"| {name} | {len(runs_of)} | {shown_finals} | "
                     f"{counts[0]:.1f} / {counts[1]:.1f} | {shown} | "
                     f"{'never' if median == float('inf') else f'{median / 60:.1f}'} | "
                     f"{'yes' if median <= half else 'no'} |")
    axis.axhline(target, color="grey", linewidth=0.8, linestyle="--")
    axis.axvline(half / 60, color="grey", linewidth=0.8, linestyle=":")
    axis.set_xlabel("wall time since the study began (min)")
    axis.set_ylabel(f"best dev BLEU-4 so far (greedy), mean over seeds {', '.join(sorted(common))}")
    axis.set_title("dashed: the reference's median final best; dotted: half its wall time", fontsize=9)
    axis.legend()
    figure.tight_layout()
    figure_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(figure_path, dpi=110)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--task", choices=TASKS, default="merge-small", help="the search benchmarked (default: "
                        "merge-small)")
    parser.add_argument("--budget", type=float, default=480, help="seconds after which a search starts no trial "
                        "(default 480; the merge-256 task's results used 720)")
    parser.add_argument("--jobs", type=int, default=1, help="searches at a time, each on a core of its own "
                        "(at most the number of cores)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--dev", type=int, default=500)
    parser.add_argument("--settings", help=f"comma-separated subset of: {', '.join(SETTINGS)}")
    parser.add_argument("--results", type=Path, help="default: benchmarks/results/ with the task's file name")
    parser.add_argument("--figure", type=Path, help="default: docs/ with the task's file name")
    parser.add_argument("--until", metavar="HH:MM", help="start no run after this time of day (the runs under way "
                        "finish; the next run of the benchmark does the rest)")
    parser.add_argument("--report", action="store_true", help="only the table and plot of the runs recorded")
    args = parser.parse_args()
    experiment, results_name, figure_name = TASKS[args.task]
    args.results = args.results or RESULTS / results_name
    names = [n.strip() for n in args.settings.split(",")] if args.settings else list(SETTINGS)
    usable = sorted(os.sched_getaffinity(0))
    if not 1 <= args.jobs <= len(usable):
        parser.error(f"--jobs {args.jobs}: choose from 1 to {len(usable)}, the cores this process may use")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; choose from: {', '.join(SETTINGS)}")
    task = {"train": args.train, "dev": args.dev, "experiment": experiment}
    measured = {"machine": machine(), "budget": args.budget, "cores per run": 1 if args.jobs > 1 else len(usable),
                "task": task}
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    differs = [key for key, value in measured.items() if results.get("runs") and results.get(key) != value]
    if differs and not args.report:
        parser.error(f"{args.results} holds runs measured with another {', '.join(differs)}; pass the same options "
                     "(see its 'command') on the same machine, or --results to a new file")
    results = {"command": " ".join(sys.argv), **results, **measured}
    runs = results.setdefault("runs", {})
    if not args.report:
        data = subset(args.data, args.train, args.dev)
        # seed-major: an interrupted benchmark has every setting at (nearly) equal seeds
        missing = [(name, seed) for seed in range(args.seeds) for name in names if str(seed) not in runs.get(name, {})]
        cores, lock = usable[:args.jobs] if args.jobs > 1 else [None], threading.Lock()
        deadline = until(args.until) if args.until else None

        def one(name: str, seed: int) -> None:
            if deadline is not None and time.time() > deadline:
                return  # (left for the next run of the benchmark)
            with lock:
                core = cores.pop()
            try:
                with tempfile.TemporaryDirectory() as work:
                    record = run(name, seed, data, results["budget"], Path(work), core, experiment)
            finally:
                with lock:
                    cores.append(core)
            with lock:
                runs.setdefault(name, {})[str(seed)] = record
                results["updated"] = datetime.datetime.now().isoformat(timespec="seconds")
                temporary = args.results.with_suffix(".tmp")
                temporary.write_text(json.dumps(results, indent=1) + "\n")
                os.replace(temporary, args.results)  # a benchmark killed while writing keeps the previous file
            curve = record["curve"]
            print(f"{name}, seed {seed}: best {curve[-1][1] if curve else float('nan'):.4f}; trials "
                  f"{record['trials']}; {record['search_seconds']:.0f} s", flush=True)

        pool = ThreadPoolExecutor(max_workers=args.jobs)
        try:
            for future in [pool.submit(one, name, seed) for name, seed in missing]:
                future.result()
        except BaseException:  # a failed search or Ctrl-C: start no other run (the finished ones are kept)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    print(report(results, args.figure or ROOT / "docs" / figure_name))


if __name__ == "__main__":
    main()
